"""Training checkpoints without pickle: every tensor goes to safetensors, everything else to JSON.

A checkpoint is a folder `checkpoints/step_000500/` holding `state.safetensors` (model, optimizer, plugin tensors,
RNG states) and `state.json` (step, scheduler, optimizer hyper-parameters, python/numpy RNG, sampler position,
plugin metadata, and the byte size + sha256 of every tensor file). A state larger than `shard_bytes` (a large
prior with its AdamW moments) is split into `state-00001-of-0000N.safetensors`, ... with an index
`state.safetensors.index.json`, the Hub's sharded layout (stages/artifacts/sharded.py).

Crash safety (a SIGKILL or a power cut can land anywhere):
- a checkpoint is written into a hidden temporary folder, fsynced, and renamed into place, so a half-written one
  never carries a final name; leftover temporary folders are removed by `clean_partial` when a run resumes;
- old checkpoints (beyond the newest `keep`) and a checkpoint being replaced are first renamed to a hidden name
  and only then deleted, so a half-deleted folder never looks like a checkpoint either;
- `verify_checkpoint` checks the recorded size and sha256, for damage after the write (a truncated copy, a bad
  disk); the trainer then falls back to the previous checkpoint and sets the damaged one aside (`set_aside`).
"""

import errno
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vqgen.stages.artifacts.sharded import (
    DEFAULT_SHARD_BYTES,
    MissingShard,
    check_shards,
    load_sharded,
    save_sharded,
)
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.files import disk_message, disk_writes, file_sha256, free_bytes

CHECKPOINT_DIR = "checkpoints"
STATE = "state"  # state.safetensors, or state-0000i-of-0000N.safetensors + INDEX
INDEX = "state.safetensors.index.json"
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
    run_dir: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    meta: dict,
    keep: int,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Atomically write checkpoint `step` under run_dir/checkpoints and keep only the newest `keep`; its tensors
    go to one file, or to shards of at most `shard_bytes` with an index. A full disk is one line naming the folder
    and the bytes needed; the checkpoints already there are kept."""
    root = Path(run_dir) / CHECKPOINT_DIR
    needed = sum(t.numel() * t.element_size() for t in tensors.values())
    with disk_writes(root, needed, f"checkpoint step {step}"):
        return _write_checkpoint(root, run_dir, step, tensors, meta, keep, shard_bytes)


def _write_checkpoint(
    root: Path,
    run_dir: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    meta: dict,
    keep: int,
    shard_bytes: int,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        files = save_sharded(tensors, tmp, STATE, shard_bytes)
        for path in files:
            _fsync_file(path)
        weights = files[0]
        meta = {**meta, "step": step, "bytes": weights.stat().st_size, "sha256": file_sha256(weights)}
        if len(files) > 1:  # every shard and the index: name -> [bytes, sha256]
            meta["files"] = {p.name: [p.stat().st_size, file_sha256(p)] for p in files}
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


def check_space(run_dir: Path, model: torch.nn.Module, ema: bool) -> None:
    """Refuse a run whose first checkpoint cannot fit on its disk, before the first step: the model and AdamW's two
    moments (and the weight average), as float32, with a 10% margin for the rest of its state."""
    weights = sum(t.numel() * 4 for t in model.state_dict().values())
    needed = int(weights * (3 + ema) * 1.1)
    free = free_bytes(run_dir)
    if free is not None and free < needed:
        raise UserError(disk_message(errno.ENOSPC, run_dir, needed, "a checkpoint"))


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
    """None if the checkpoint is complete and intact, else what is wrong with it. A shard that its index lists and
    the folder lacks is no damage we fall back from: it raises MissingShard (the caller says so in one line)."""
    try:
        meta = json.loads((path / "state.json").read_text())
        recorded = meta.get("files") or {"state.safetensors": [meta["bytes"], meta["sha256"]]}
        if "files" in meta:
            check_shards(path, STATE)  # raises MissingShard
        for name, (size, digest) in recorded.items():
            if (path / name).stat().st_size != size:
                return f"{name}: size {(path / name).stat().st_size} != recorded {size}"
            if file_sha256(path / name) != digest:
                return f"{name}: checksum mismatch"
    except MissingShard:
        raise
    except (OSError, ValueError, KeyError) as exc:
        return f"unreadable ({exc})"
    return None


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    meta = json.loads((Path(path) / "state.json").read_text())
    return load_sharded(Path(path), STATE), meta


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix.` with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def add_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}
