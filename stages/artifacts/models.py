"""Models on disk in the Hub layout (config.json + model.safetensors + README.md), loaded and saved safely.

Loading never unpickles anything: weights come only from `model.safetensors` (a folder holding only pickled
weights is refused, and for a Hub id no pickle fallback is tried), `config.json` is checked field by field against
the model's dataclass config (an unknown field or a wrong type is a one-line error naming it), and the weights must
match the model exactly. Saving writes each file to a temporary name first and renames it into place, so a full
disk or a crash never leaves a half-written `model.safetensors` under its final name.
"""

import json
import os
import shutil
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from vqgen.stages.artifacts.hub import WEIGHTS, _hub_file, model_folder, read_config
from vqgen.stages.core.errors import UserError, one_line
from vqgen.stages.core.registry import config_class as config_class_of


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
    """A trained tokenizer of any registered architecture from a folder, a published vqgen folder (its
    `tokenizer/`) or a Hub id at `revision`; dispatches on `model_type` through the tokenizer registry."""
    from vqgen.stages.core.registry import TOKENIZERS

    folder = model_folder(path, "tokenizer", revision)
    config = read_config(folder)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in TOKENIZERS.names():
        known = ", ".join(TOKENIZERS.names())
        raise UserError(f"{path}: not a vqgen tokenizer (model_type={model_type!r}; known: {known})")
    return load_model(TOKENIZERS.get(model_type), folder, "tokenizer", config)


def load_prior(path: str | Path, revision: str | None = None):
    """Any prior from a folder holding config.json + model.safetensors, a published vqgen folder (its `prior/`), or
    a Hub id at `revision`; dispatches on `prior_type` through the prior registry."""
    from vqgen.stages.core.registry import PRIORS

    folder = model_folder(path, "prior", revision)
    config = read_config(folder)
    prior_type = config.get("prior_type")
    if not isinstance(prior_type, str) or not prior_type:
        raise UserError(f"{path}: config.json has no 'prior_type'; is this a vqgen prior folder?")
    return load_model(PRIORS.get(prior_type), folder, "prior", config)


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
