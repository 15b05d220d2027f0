"""Reading and writing vqgen artifacts in the Hub layout (config.json + model.safetensors), safely.

Loading never unpickles anything: weights come only from `model.safetensors` (a folder holding only pickled
weights is refused, and for a Hub id no pickle fallback is tried), `config.json` is checked field by field against
the model's dataclass config (an unknown field or a wrong type is a one-line error naming it), and the weights must
match the model exactly. Saving writes each file to a temporary name first and renames it into place, so a full
disk or a crash never leaves a half-written `model.safetensors` under its final name.
"""

import json
import os
import re
import shutil
import socket
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from stages.errors import UserError, one_line, read_json_object

UNSAFE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHTS = "model.safetensors"
_HUB_PART = re.compile(r"^[A-Za-z0-9_.-]+$")


def looks_local(path: str | Path) -> bool:
    """A path the user meant as a local file or folder (not a Hub id): it starts with '.', '/' or '~'."""
    return str(path).startswith((".", "/", "~"))


def check_hub_id(repo_id: str, what: str) -> str:
    """`name` or `owner/name` made of letters, digits, '_', '.' and '-', with no '.' or '..' part: a Hub id that
    cannot name a path outside the Hub cache. Checked before any network access."""
    parts = repo_id.split("/")
    if len(parts) > 2 or any(not _HUB_PART.match(p) or p in (".", "..") for p in parts):
        raise UserError(
            f"{what} {repo_id!r}: no such folder, and not a valid Hugging Face Hub id (owner/name: letters, "
            "digits, '_', '.', '-'; no '..')"
        )
    return repo_id


def ensure_hub_reachable(what: str) -> None:
    """Fail fast, in one line, when the Hub endpoint cannot be reached (instead of a stack of retries).
    With HF_HUB_OFFLINE=1 nothing is checked: the libraries then answer from the local cache."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError as exc:
        raise UserError(
            f"{what}: cannot reach the Hugging Face Hub at {url.scheme}://{url.netloc} ({exc.strerror or exc}); "
            "check your network, set HF_HUB_OFFLINE=1 to use the local cache, or pass a local path"
        ) from None


def _hub_file(repo_id: str, filename: str, **hub_kwargs) -> Path:
    from huggingface_hub import hf_hub_download

    check_hub_id(repo_id, "model")
    ensure_hub_reachable(repo_id)
    try:
        return Path(hf_hub_download(repo_id, filename, **hub_kwargs))
    except Exception as exc:  # offline, unknown repo, missing file: one line (the token is never part of it)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"{repo_id}: could not fetch {filename} from the Hugging Face Hub ({first})"
        ) from None


def read_config(path: str | Path, **hub_kwargs) -> dict:
    """config.json of a local model folder or a Hub repo, as a dict; every failure is a one-line UserError."""
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UserError(f"{path} is a file; give the model folder that holds config.json")
        cfg_file = local / "config.json"
        if not cfg_file.is_file():
            raise UserError(f"{path}: no config.json here; is this a vqgen model folder?")
        if not (local / WEIGHTS).is_file():
            unsafe = [p.name for p in local.iterdir() if p.suffix in UNSAFE_WEIGHTS]
            hint = f" (found {', '.join(unsafe)}: pickled weights are never loaded)" if unsafe else ""
            raise UserError(f"{path}: no {WEIGHTS}{hint}")
    elif looks_local(path):
        raise UserError(f"{path}: no such folder")
    else:
        cfg_file = _hub_file(str(path), "config.json", **hub_kwargs)
    return read_json_object(cfg_file, f"{path}: config.json")


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of a Hub repo at `revision` (branch, tag or commit), downloaded into the Hub cache
    or found there: only JSON, safetensors, README and PNG files (never pickled weights), and no `training_state/`.
    When the Hub cannot be reached, a cached snapshot is used if there is one; otherwise one line says why."""
    from huggingface_hub import snapshot_download

    kwargs = dict(
        revision=revision, allow_patterns=["*.json", "*.safetensors", "*.md", "*.png"],
        ignore_patterns=["training_state/*"],
    )  # fmt: skip
    try:
        ensure_hub_reachable(repo_id)
    except UserError as unreachable:
        try:  # offline without HF_HUB_OFFLINE: the cache may hold it
            return Path(snapshot_download(repo_id, local_files_only=True, **kwargs))
        except Exception:
            raise unreachable from None
    try:
        return Path(snapshot_download(repo_id, **kwargs))
    except Exception as exc:  # offline, unknown repo or revision: one line (the token is never part of it)
        at = f" at revision {revision}" if revision else ""
        raise UserError(
            f"{repo_id}: could not fetch it{at} from the Hugging Face Hub ({one_line(exc)})"
        ) from None


def model_folder(path: str | Path, kind: str, revision: str | None = None) -> Path:
    """A local folder holding `kind`'s config.json + model.safetensors: `path` itself, its `kind/` subfolder (a
    published vqgen folder), or for a Hub id a download at `revision` of its JSON, safetensors and README files only
    (never pickled weights), then the same choice inside it."""
    local = Path(path).expanduser()
    if not local.exists():
        if looks_local(path):
            raise UserError(f"{path}: no such folder")
        local = hub_snapshot(check_hub_id(str(path), f"--{kind}"), revision)
    if local.is_dir() and not (local / "config.json").is_file() and (local / kind / "config.json").is_file():
        return local / kind
    return local


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if is_dataclass(hint):
        return "an object"
    return getattr(hint, "__name__", str(hint))


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a dataclass field annotation (ints are accepted for floats, bools never for ints)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if is_dataclass(hint):
        return isinstance(value, dict)
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, list)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # an annotation we do not check (Any, a custom type): the model's own checks apply


def build_config(config_class: type, data: dict, where: str, prefix: str = "") -> Any:
    """`config_class(**data)` after checking every field: an unknown field or a value of the wrong type is a
    UserError naming it. Nested dataclass fields are built recursively."""
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(
            f"{where}: config.json has unknown field(s) {', '.join(prefix + k for k in unknown)} "
            f"(written by another program or version?); known fields: {', '.join(sorted(known))}"
        )
    hints = typing.get_type_hints(config_class)
    values = {}
    for key, value in data.items():
        hint = hints.get(key, Any)
        if not _fits(value, hint):
            raise UserError(
                f"{where}: config.json field {prefix}{key} should be {_describe(hint)}, got {json.dumps(value)}"
            )
        values[key] = build_config(hint, value, where, f"{prefix}{key}.") if is_dataclass(hint) else value
    try:
        return config_class(**values)
    except Exception as exc:  # a __post_init__ check of the config itself
        raise UserError(
            f"{where}: config.json is not a valid {config_class.__name__} ({one_line(exc)})"
        ) from None


def config_class_of(cls: type) -> type:
    """The dataclass a model's __init__ takes as `config`."""
    hint = typing.get_type_hints(cls.__init__).get("config")
    if not (isinstance(hint, type) and is_dataclass(hint)):
        raise UserError(
            f"{cls.__module__}.{cls.__qualname__} does not take a dataclass `config`; fix the model"
        )
    return hint


def load_model(cls: type, path: str | Path, kind: str, config: dict | None = None, **hub_kwargs):
    """`cls(config)` with its weights, from a folder or Hub id: config.json (or `config`, already read from it)
    checked against the config class, weights read from model.safetensors only and required to match the model's
    parameters and buffers exactly."""
    import safetensors.torch

    data = read_config(path, **hub_kwargs) if config is None else config
    config = build_config(config_class_of(cls), data, str(path))
    try:
        model = cls(config)
    except Exception as exc:  # values of the right type that still make no model (a negative size, ...)
        raise UserError(f"{path}: config.json does not describe a valid {kind} ({one_line(exc)})") from None
    local = Path(path).expanduser()
    weights = local / WEIGHTS if local.is_dir() else _hub_file(str(path), WEIGHTS, **hub_kwargs)
    try:
        safetensors.torch.load_model(model, str(weights), strict=True, device="cpu")
    except Exception as exc:  # truncated, corrupt, or weights of another model
        raise UserError(f"{path}: could not load {WEIGHTS} ({one_line(exc)})") from None
    return model.eval()


def load_tokenizer(path: str | Path, revision: str | None = None):
    """A trained VQVAE from a folder, a published vqgen folder (its `tokenizer/`) or a Hub id at `revision`."""
    from stages.tokenizer import VQVAE

    folder = model_folder(path, "tokenizer", revision)
    config = read_config(folder)
    if config.get("model_type") != "vqvae":
        raise UserError(f"{path}: not a vqgen tokenizer (model_type={config.get('model_type')!r})")
    return load_model(VQVAE, folder, "tokenizer", config)


def save_model(model, folder: str | Path) -> None:
    """`model.save_pretrained(folder)`, each file written under a temporary name and renamed into place."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp_save_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        for file in sorted(tmp.iterdir()):
            os.replace(file, folder / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
