"""Where an imported model's files come from, and how a released checkpoint is read without running its code.

SOURCE is a local file or folder, or a Hub id whose file `--filename` names (downloaded into the Hub cache by
huggingface_hub, so a second import works offline). A `.pt`/`.ckpt` is read with `torch.load(weights_only=True)`
and nothing else: torch's restricted unpickler builds tensors, containers and numbers, and refuses any other
class. Two harmless kinds of metadata that released checkpoints carry are let through: `argparse.Namespace`
(LlamaGen saves its training arguments) and, as inert placeholders that run no code of theirs, the PyTorch
Lightning classes that old Lightning versions use as keys of the callbacks' state (taming-transformers'
checkpoints). Anything else that needs a full unpickler is refused in one line, never executed.
"""

import argparse
import re
from pathlib import Path

from vqgen.stages.artifacts.hub import _hub_file, check_hub_id, looks_local
from vqgen.stages.core.errors import UserError, one_line

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_LIGHTNING = ("pytorch_lightning.", "lightning.", "lightning_fabric.")


def source_file(source: str, filename: str | None, revision: str | None, what: str) -> Path:
    """The local file SOURCE names: SOURCE itself, SOURCE/filename, or `filename` downloaded from the Hub repo
    SOURCE at `revision`."""
    local = Path(source).expanduser()
    if local.is_dir():
        if not filename:
            raise UserError(f"{source} is a folder; name the {what} inside it with --filename")
        local = local / filename
    if local.is_file():
        return local
    if local.exists() or looks_local(source) or Path(source).suffix in CHECKPOINT_SUFFIXES:
        raise UserError(f"{local}: no such file")
    check_hub_id(source, "SOURCE")
    if not filename:
        raise UserError(f"{source}: a Hub id needs --filename, the {what} inside the repo")
    return _hub_file(source, filename, revision=revision)


class _Inert:
    """Stands in for a Lightning class that a checkpoint names only as metadata; it holds what it is given."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


def _load(path: Path, allowed: list):
    import torch

    with torch.serialization.safe_globals([argparse.Namespace, *allowed]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format


def read_checkpoint(path: Path) -> dict:
    """A `.pt`/`.ckpt`/`.bin` file's contents, read by torch's weights-only unpickler (see the module docstring);
    a `.safetensors` file (a converted checkpoint) as its flat name -> tensor dict."""
    if path.suffix == ".safetensors":
        import safetensors.torch

        try:
            return safetensors.torch.load_file(str(path))
        except Exception as exc:
            raise UserError(f"{path}: not a readable safetensors file ({one_line(exc)})") from None
    allowed: list = []
    for _ in range(16):  # each pass lets one more Lightning metadata class through, as an inert placeholder
        try:
            data = _load(path, allowed)
            break
        except Exception as exc:  # torch raises pickle's UnpicklingError for what weights_only refuses
            if type(exc).__name__ != "UnpicklingError":
                raise UserError(f"{path}: not a readable PyTorch checkpoint ({one_line(exc)})") from None
            needed = _GLOBAL.search(str(exc))
            name = needed.group(1) if needed else None
            if name and name.startswith(_LIGHTNING) and _placeholders_supported():
                allowed.append((_Inert, name))
                continue
            if not name:
                last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
                raise UserError(f"{path}: not a readable PyTorch checkpoint ({last[:200]})") from None
            raise UserError(
                f"{path}: refused: a pickle that only a full unpickler can read (it needs {name} to load); vqgen "
                "reads .pt/.ckpt files with torch.load(weights_only=True) only and never runs code from a checkpoint"
            ) from None
    else:
        raise UserError(f"{path}: refused: it names too many classes to be a plain checkpoint")
    if not isinstance(data, dict):
        raise UserError(f"{path}: holds a {type(data).__name__}, not a checkpoint dict")
    return data


def _placeholders_supported() -> bool:
    """torch >= 2.5 lets a safe global stand under another class's name."""
    import torch

    return tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2]) >= (2, 5)


def state_dict_in(data: dict, path: Path, keys: tuple[str, ...]) -> dict:
    """The tensors of a checkpoint: the first of `keys` that it holds (e.g. "model", "state_dict"), or the
    checkpoint itself when it is already a flat name -> tensor dict."""
    import torch

    for key in keys:
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"{path}: holds no weights (looked under {', '.join(keys)} and at the top level)")
    return tensors
