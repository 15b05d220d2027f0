"""All network access of vqgen: Hub ids, downloads into the Hub cache, and where a model folder is.

Only JSON, safetensors, README and PNG files are downloaded for vqgen's own models (never pickled weights); `vqgen
import` also fetches the checkpoint file a user names with --filename, which it reads with
torch.load(weights_only=True) only (stages/interop/sources.py). Every failure is one line that never contains the
token.
"""

import os
import re
from pathlib import Path
from urllib.parse import urlparse

from vqgen.stages.core.errors import UserError, first_line, one_line, read_json_object

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


# Short Hub timeouts unless the user set their own (applied by cli.main before huggingface_hub is imported): a
# Hub that cannot be reached is then one line within seconds, not a minute of waiting.
HUB_TIMEOUT_DEFAULTS = {"HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "10"}
ETAG_TIMEOUT = 5.0
_TRANSPORT_ERRORS = {
    "ConnectError",
    "ConnectTimeout",
    "ProxyError",
    "ReadTimeout",
    "TimeoutException",
    "PoolTimeout",
}


def use_short_hub_timeouts() -> None:
    for name, value in HUB_TIMEOUT_DEFAULTS.items():
        os.environ.setdefault(name, value)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def unreachable_cause(exc: BaseException) -> BaseException | None:
    """The network failure behind a huggingface_hub or datasets error (a refused or timed-out connection, an
    unreachable proxy), or None when the Hub answered (an unknown repo, a missing file)."""
    found, seen = None, 0
    while exc is not None and seen < 12:
        name = type(exc).__name__
        if isinstance(exc, (ConnectionError, TimeoutError)) or name in _TRANSPORT_ERRORS:
            found = exc  # keep walking: the innermost names the cause best
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return found


def unreachable_error(what: str, cause: BaseException) -> UserError:
    proxy = next(
        (
            os.environ[k]
            for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
            if k in os.environ
        ),
        None,
    )
    via = f" through the proxy {urlparse(proxy).hostname}:{urlparse(proxy).port}" if proxy else ""
    return UserError(
        f"{what}: cannot reach the Hugging Face Hub at {_endpoint()}{via} ({one_line(cause)}); check your network "
        "or proxy, set HF_HUB_OFFLINE=1 to use the local cache, or pass a local path"
    )


def ensure_hub_reachable(what: str) -> None:
    """Fail fast, in one line, when the Hub endpoint cannot be reached, before a library that retries for a minute
    (datasets, uploads) is asked. The probe is one request through huggingface_hub's own HTTP session (its proxy
    settings, HTTPS_PROXY included, its headers and HF_HUB_OFFLINE handling) with a short timeout; any HTTP answer
    counts as reachable. With HF_HUB_OFFLINE=1 nothing is checked: the libraries then answer from the cache."""
    if _hub_offline():
        return
    from huggingface_hub import get_session

    try:
        get_session().head(_endpoint(), timeout=ETAG_TIMEOUT)
    except Exception as exc:
        raise unreachable_error(what, unreachable_cause(exc) or exc) from None


def _hub_file(repo_id: str, filename: str, **hub_kwargs) -> Path:
    from huggingface_hub import hf_hub_download

    check_hub_id(repo_id, "model")
    try:  # huggingface_hub answers from its cache by itself when the Hub cannot be reached
        return Path(hf_hub_download(repo_id, filename, etag_timeout=ETAG_TIMEOUT, **hub_kwargs))
    except Exception as exc:  # offline, unknown repo, missing file: one line (the token is never part of it)
        cause = unreachable_cause(exc)
        if cause is not None:
            raise unreachable_error(repo_id, cause) from None
        first = first_line(exc, 300)
        raise UserError(
            f"{repo_id}: could not fetch {filename} from the Hugging Face Hub ({first})"
        ) from None


def weights_file(ref: str) -> Path:
    """A local .safetensors file, a folder holding model.safetensors, or a Hub repo's model.safetensors (downloaded
    into the Hub cache). The service plugins receive in their context: failures are one-line OSErrors."""
    local = Path(ref).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        return local / WEIGHTS
    if looks_local(ref) or ref.endswith(".safetensors"):
        raise FileNotFoundError(f"no file or folder {ref}")
    try:
        return _hub_file(ref, WEIGHTS)
    except UserError as exc:
        raise OSError(str(exc)) from None


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
        revision=revision,
        allow_patterns=["*.json", "*.safetensors", "*.md", "*.png"],
        ignore_patterns=["training_state/*"],
    )
    try:  # when the Hub cannot be reached, snapshot_download uses a cached snapshot of the revision by itself
        return Path(snapshot_download(repo_id, etag_timeout=ETAG_TIMEOUT, **kwargs))
    except Exception as exc:  # offline, unknown repo or revision: one line (the token is never part of it)
        cause = unreachable_cause(exc)
        if cause is not None:
            raise unreachable_error(repo_id, cause) from None
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
