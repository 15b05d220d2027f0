"""Checks a training launch makes before it allocates anything: will the model fit the configured devices, and
can the run resume from its newest checkpoint on this many processes.

Both read only what is already there: a model built on the `meta` device (shapes, no memory), the launch's
environment (`accelerate launch` sets WORLD_SIZE, LOCAL_WORLD_SIZE, LOCAL_RANK and ACCELERATE_USE_FSDP) and a
checkpoint's state.json and index.
"""

import json
import os
from pathlib import Path

import torch
from vqgen.stages.artifacts.sharded import MissingShard
from vqgen.stages.core.errors import UserError
from vqgen.stages.training import checkpoint as ckpt
from vqgen.stages.training.sharding import BYTES_PER_PARAM, FSDP_HOW, fsdp_requested

MEMORY_ENV = "VQGEN_DEVICE_MEMORY_GB"  # overrides the detected memory per device (a cluster's, a test's)


def device_memory(device: str) -> tuple[str, float]:
    """(name, bytes) of the memory one process trains in: its GPU's, or the host's share per local process."""
    if os.environ.get(MEMORY_ENV):
        return f"{MEMORY_ENV}", float(os.environ[MEMORY_ENV]) * 1e9
    if device != "cpu" and torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        return f"cuda:{index}", float(torch.cuda.get_device_properties(index).total_memory)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ("the host" if local == 1 else f"the host / {local} processes"), host / local


def check_fits(model: torch.nn.Module, processes: int, device: str, ema: bool) -> None:
    """One line when the weights, gradients and AdamW state (plus a weight average) of `model`, a model built on
    the meta device, cannot fit one device's memory: divided over the processes under FSDP, whole under DDP.
    Activations come on top of this lower bound."""
    params = sum(p.numel() for p in model.parameters())
    per_param = BYTES_PER_PARAM + (4 if ema else 0)
    shards = processes if fsdp_requested() else 1
    need = params * per_param / shards
    where, have = device_memory(device)
    if need <= have:
        return
    how = f"over {shards} processes" if shards > 1 else "on one device"
    fix = f"shard it over more devices ({FSDP_HOW} --num_processes N)" if shards == 1 else "use more devices"
    raise UserError(
        f"the model has {params / 1e6:,.0f}M parameters: its weights, gradients and AdamW state need "
        f"{need / 1e9:.1f} GB per device {how} ({per_param} bytes per parameter), more than {where} has "
        f"({have / 1e9:.1f} GB); {fix}, or choose a smaller model"
    )


def newest_checkpoint_meta(run_dir: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint with a readable state.json, and that state.json."""
    for path in reversed(ckpt.list_checkpoints(run_dir)):
        try:
            return path, json.loads((path / "state.json").read_text())
        except (OSError, ValueError):
            continue
    return None


def check_resume(run_dir: Path, processes: int, batch_size: int) -> None:
    """One line when the newest checkpoint lacks a shard its index lists, or was written by another number of
    processes. (Its full state does not depend on the count, but the global batch, --batch-size x processes,
    does, and --batch-size cannot change on --resume: the data order would not be the same.)"""
    found = newest_checkpoint_meta(Path(run_dir))
    if found is None:
        return  # Trainer.resume says so, after it has tried every checkpoint
    path, meta = found
    if "files" in meta:
        try:
            ckpt.check_shards(path, ckpt.STATE)
        except MissingShard as exc:
            raise UserError(
                f"--resume: {exc}; restore it, or delete {path.name} to resume from an older one"
            ) from None
    was = meta.get("num_processes")
    if was is not None and was != processes:
        raise UserError(
            f"--resume: {path.name} was written by {was} processes, not {processes}; the global batch (--batch-size "
            f"x processes), and so the data order, depends on it: resume with `accelerate launch --num_processes {was}`"
        )
