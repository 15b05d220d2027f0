"""Which multi-process setups the training loop supports, checked when it starts."""

import os

from accelerate import Accelerator
from vqgen.stages.core.errors import UserError


def launched_processes() -> int:
    """How many processes `accelerate launch` / torchrun started (1 when run directly)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def refuse_unsupported_distribution(accelerator: Accelerator) -> None:
    """FSDP and DeepSpeed shard the model and optimizer, which this loop's checkpoints, rollback and EMA codebook do
    not handle: refuse them at the start in one line, naming what works."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        name = "FSDP" if kind == DistributedType.FSDP else "DeepSpeed"
        raise UserError(
            f"{name} is not supported: vqgen trains in a single process or with DDP (`accelerate launch` with "
            "multi-GPU or multi-node, no FSDP/DeepSpeed); reconfigure with `accelerate config`"
        )
