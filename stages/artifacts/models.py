"""Models on disk in the Hub layout (config.json + model.safetensors + README.md), loaded and saved safely.

Loading never unpickles anything: weights come only from `model.safetensors` (a folder holding only pickled
weights is refused, and for a Hub id no pickle fallback is tried), `config.json` is checked field by field against
the model's dataclass config (an unknown field or a wrong type is a one-line error naming it), and the weights must
match the model exactly. Saving writes each file to a temporary name first and renames it into place, so a full
disk or a crash never leaves a half-written `model.safetensors` under its final name.
"""

import json
import math
import os
import shutil
import tempfile
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from vqgen.stages.artifacts.hub import WEIGHTS, _hub_file, model_folder, read_config
from vqgen.stages.core.errors import UserError, one_line
from vqgen.stages.core.files import disk_writes
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
    UserError naming it. Nested dataclass fields are built recursively. A field that `data` lacks takes the value in
    the config class's `saved_defaults` if it names one (a field added since: what a config saved before meant),
    else its dataclass default."""
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
    for key, value in getattr(config_class, "saved_defaults", {}).items():
        values.setdefault(key, value)
    try:
        return config_class(**values)
    except Exception as exc:  # a __post_init__ check of the config itself
        raise UserError(
            f"{where}: config.json is not a valid {config_class.__name__} ({one_line(exc)})"
        ) from None


class _TooLarge(Exception):
    """Raised from inside a model's __init__ as soon as it has registered more than its weights file holds."""


def _read_header(path: str | Path, weights: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor name: (shape, dtype)} from the safetensors header alone: no tensor is read."""
    import safetensors

    try:
        with safetensors.safe_open(str(weights), "pt") as f:
            header = {}
            for key in f.keys():  # noqa: SIM118 (a safe_open handle is no dict)
                sl = f.get_slice(key)
                header[key] = (tuple(sl.get_shape()), str(sl.get_dtype()))
            return header
    except Exception as exc:  # truncated, corrupt, not a safetensors file
        raise UserError(f"{path}: could not load {WEIGHTS} ({one_line(exc)})") from None


_DTYPES = {  # torch dtype -> the safetensors header's name for it
    "float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}  # fmt: skip


def _header_dtype(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    return _DTYPES.get(name, name.upper())


def _guarded_build(cls: type, config, limit_tensors: int, limit_numel: int, meta: bool):
    """`cls(config)` (on the meta device when `meta`: no memory), aborted with _TooLarge as soon as it registers
    more tensors or numbers than `limit_*`: a config.json edited to a million layers is refused after a few of
    them instead of being built."""
    import torch
    from torch.nn.modules import module as nn_module

    seen = [0, 0]

    def count(module, name, tensor):
        if tensor is None:
            return
        seen[0] += 1
        seen[1] += tensor.numel()
        if seen[0] > limit_tensors or seen[1] > limit_numel:
            raise _TooLarge(f"{seen[0]} tensors holding {seen[1]} numbers so far")

    hooks = (
        nn_module.register_module_parameter_registration_hook(count),
        nn_module.register_module_buffer_registration_hook(count),
    )
    try:
        if meta:
            with torch.device("meta"):
                return cls(config)
        return cls(config)
    finally:
        for hook in hooks:
            hook.remove()


def _tied_groups(model) -> list[list[str]]:
    """State-dict names grouped by the tensor they share (tied weights are stored once in a safetensors file)."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return list(groups.values())


def _compare(path, model, header: dict) -> None:
    """The model's state dict against the file's header: names, shapes and dtypes, each mismatch one line."""
    state = model.state_dict(keep_vars=True)
    missing, expected = [], set()
    for group in _tied_groups(model):
        present = [n for n in group if n in header]
        expected.update(group)
        if not present:
            missing.append(group[0])
    unexpected = sorted(set(header) - expected)

    def names(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")

    if missing or unexpected:
        parts = ([f"missing tensor(s) {names(missing)}"] if missing else []) + (
            [f"unexpected tensor(s) {names(unexpected)}"] if unexpected else []
        )
        raise UserError(
            f"{path}: could not load {WEIGHTS} (it does not match config.json: {'; '.join(parts)})"
        )
    for name, (shape, dtype) in header.items():
        want = state[name]
        if tuple(want.shape) != shape:
            raise UserError(
                f"{path}: could not load {WEIGHTS} (size mismatch for {name}: the file holds shape {list(shape)}, "
                f"config.json makes {list(want.shape)})"
            )
        if _header_dtype(want.dtype) != dtype:
            raise UserError(
                f"{path}: {WEIGHTS} tensor {name} is {dtype}, the model stores it as {_header_dtype(want.dtype)}; "
                "vqgen loads float32 weights only (convert the file, or re-save the model with vqgen)"
            )


def _check_finite(path, weights: Path, header: dict) -> None:
    """Every floating tensor of the file holds finite numbers only; read one tensor at a time."""
    import safetensors
    import torch

    with safetensors.safe_open(str(weights), "pt") as f:
        for name in header:
            tensor = f.get_tensor(name)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise UserError(
                    f"{path}: {WEIGHTS} tensor {name} holds {bad} NaN or infinite value(s) of {tensor.numel()}; "
                    "the weights are broken (a diverged training or a damaged file)"
                )


def load_model(cls: type, path: str | Path, kind: str, config: dict | None = None, **hub_kwargs):
    """`cls(config)` with its weights, from a folder or Hub id, checked before anything is built:

    1. config.json (or `config`, already read from it) is checked field by field against the config class;
    2. the safetensors header is read (names, shapes, dtypes; no tensor data);
    3. the model is built on the meta device (no memory), aborted as soon as it registers more tensors or numbers
       than twice what the file holds (a config.json edited to a million layers is refused at once);
    4. its state dict is compared with the header: every name, shape and dtype must match (floating weights are
       float32; integer and bool buffers keep the dtype the model gives them);
    5. every floating tensor must be finite; only then is the model built for real and the weights loaded."""
    import safetensors.torch

    data = read_config(path, **hub_kwargs) if config is None else config
    config = build_config(config_class_of(cls), data, str(path))
    local = Path(path).expanduser()
    weights = local / WEIGHTS if local.is_dir() else _hub_file(str(path), WEIGHTS, **hub_kwargs)
    header = _read_header(path, weights)
    numel = sum(math.prod(shape) for shape, _ in header.values())
    limits = dict(limit_tensors=2 * len(header) + 64, limit_numel=2 * numel + (1 << 22))
    try:
        try:
            skeleton = _guarded_build(cls, config, meta=True, **limits)
        except _TooLarge:
            raise
        except Exception:  # a model whose __init__ needs real tensors: build it for real, still guarded
            skeleton = None
        _compare(path, skeleton or _guarded_build(cls, config, meta=False, **limits), header)
        _check_finite(path, weights, header)
        model = _guarded_build(cls, config, meta=False, **limits)
    except _TooLarge as exc:
        raise UserError(
            f"{path}: config.json describes a {kind} far larger than {WEIGHTS} ({len(header)} tensors, {numel} "
            f"numbers; building stopped at {exc}); was config.json edited, or the weights replaced?"
        ) from None
    except UserError:
        raise
    except Exception as exc:  # values of the right type that still make no model (a negative size, ...)
        raise UserError(f"{path}: config.json does not describe a valid {kind} ({one_line(exc)})") from None
    try:
        safetensors.torch.load_model(model, str(weights), strict=True, device="cpu")
    except Exception as exc:  # corrupt data past the header, or weights of another model
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
    needed = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with disk_writes(folder, needed, "the model"):
        _save_model(model, folder)


def _save_model(model, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # a fresh, unpredictable name: no link followed
    tmp = Path(tempfile.mkdtemp(prefix=".tmp_save_", dir=folder))
    try:
        model.save_pretrained(str(tmp))
        for file in sorted(tmp.iterdir()):
            os.replace(file, folder / file.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
