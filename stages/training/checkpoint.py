"""Training checkpoints without pickle: every tensor goes to safetensors, everything else to JSON.

A checkpoint is a folder `checkpoints/step_000500/` holding `state.safetensors` (model, optimizer, plugin tensors,
RNG states) and `state.json` (step, scheduler, optimizer hyper-parameters, python/numpy RNG, sampler position,
plugin metadata, and the byte size + sha256 of the safetensors file).

Crash safety (a SIGKILL or a power cut can land anywhere):
- a checkpoint is written into a hidden temporary folder, fsynced, and renamed into place, so a half-written one
  never carries a final name; leftover temporary folders are removed by `clean_partial` when a run resumes;
- old checkpoints (beyond the newest `keep`) and a checkpoint being replaced are first renamed to a hidden name
  and only then deleted, so a half-deleted folder never looks like a checkpoint either;
- `verify_checkpoint` checks the recorded size and sha256, for damage after the write (a truncated copy, a bad
  disk); the trainer then falls back to the previous checkpoint and sets the damaged one aside (`set_aside`).
"""

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from vqgen.stages.core.files import file_sha256

CHECKPOINT_DIR = "checkpoints"
TENSOR, INT_KEYS = "__tensor__", "__int_keys__"  # markers in a flattened state's JSON skeleton


def flatten_state(state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Plain torch state (nested dicts and lists of tensors and JSON values: a module's or an optimizer's
    state_dict, a plugin's state) -> (its tensors by dotted path, a JSON skeleton that names them).
    Dicts with integer keys (an optimizer's per-parameter state) keep them through `unflatten_state`."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if torch.is_tensor(value):
            tensors[path] = value.detach().cpu().contiguous()
            return {TENSOR: path}
        if isinstance(value, dict):
            node = {str(k): walk(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
            int_keys = bool(value) and all(isinstance(k, int) for k in value)
            return {INT_KEYS: node} if int_keys else node
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value)]
        return value

    return tensors, walk(state, "")


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """The inverse of `flatten_state`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {TENSOR}:
            return tensors[skeleton[TENSOR]]
        if set(skeleton) == {INT_KEYS}:
            return {int(k): unflatten_state(tensors, v) for k, v in skeleton[INT_KEYS].items()}
        return {k: unflatten_state(tensors, v) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(tensors, v) for v in skeleton]
    return skeleton


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if states:
            torch.cuda.set_rng_state_all(states)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = meta["numpy"]
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), *npy[2:]))


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename) durable; best effort: not every system can open a folder for it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a checkpoint folder: rename it to a hidden name first, so a half-deleted one is never listed."""
    trash = path.with_name(f".trash_{path.name}_{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def write_checkpoint(
    run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict, keep: int
) -> Path:
    """Atomically write checkpoint `step` under run_dir/checkpoints and keep only the newest `keep`."""
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weights = tmp / "state.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(weights))
        _fsync_file(weights)
        meta = {**meta, "step": step, "bytes": weights.stat().st_size, "sha256": file_sha256(weights)}
        with open(tmp / "state.json", "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():
            _remove(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        _remove(old)
    return final


def clean_partial(run_dir: Path) -> list[Path]:
    """Remove what an interrupted write or deletion left behind (hidden temporary folders); returns them."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    leftovers = [p for p in root.iterdir() if p.name.startswith((".tmp_step_", ".trash_step_"))]
    for p in leftovers:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return leftovers


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to `corrupt_step_N` (kept for inspection, no longer listed or counted)."""
    target = path.with_name(f"corrupt_{path.name}")
    if target.exists():
        shutil.rmtree(target)
    os.replace(path, target)
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def verify_checkpoint(path: Path) -> str | None:
    """None if the checkpoint is complete and intact, else what is wrong with it."""
    try:
        meta = json.loads((path / "state.json").read_text())
        weights = path / "state.safetensors"
        if weights.stat().st_size != meta["bytes"]:
            return f"size {weights.stat().st_size} != recorded {meta['bytes']}"
        if file_sha256(weights) != meta["sha256"]:
            return "checksum mismatch"
    except (OSError, ValueError, KeyError) as exc:
        return f"unreadable ({exc})"
    return None


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    meta = json.loads((Path(path) / "state.json").read_text())
    return load_file(str(Path(path) / "state.safetensors")), meta


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix.` with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def add_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}
