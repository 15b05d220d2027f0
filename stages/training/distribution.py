"""How many processes a launch started, and the Accelerator every command makes for them (the engines
themselves: stages/training/sharding.py)."""

import atexit
import os
from typing import TYPE_CHECKING

from vqgen.stages.core.device import training_accelerator_kwargs

if TYPE_CHECKING:
    from accelerate import Accelerator  # imported when a command makes one: `--help` stays quick


def launched_processes() -> int:
    """How many processes `accelerate launch` / torchrun started (1 when run directly)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def new_accelerator(device: str | None, **kwargs) -> "Accelerator":
    """The Accelerator for a command's --device in this launch (kwargs: Accelerator's own). Under several
    processes the process group is destroyed when the process exits, however it exits (see end_processes)."""
    from accelerate import Accelerator

    accelerator = Accelerator(**kwargs, **training_accelerator_kwargs(device, launched_processes()))
    if accelerator.num_processes > 1:
        atexit.unregister(end_processes)  # once, however many accelerators a process makes
        atexit.register(end_processes)
    return accelerator


def end_processes() -> None:
    """Destroy the default process group while the interpreter is still whole. Left to interpreter shutdown,
    gloo's worker threads can outlive it and abort the process ("terminate called without an active
    exception", SIGABRT) after its work is done: a finished run that reads as failed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
