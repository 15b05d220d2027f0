"""Sharded training: FSDP2 (`torch.distributed.fsdp.fully_shard`) through accelerate, with our own checkpoints.

Configured the usual way, `accelerate config` or `accelerate launch --use_fsdp --fsdp_version 2 ...`:

- the wrapping unit is the model's blocks, the classes it names in `_no_split_modules` (a transformer prior: its
  decoder layers; priors/base.py), unless the config names others (`--fsdp_transformer_layer_cls_to_wrap`);
  with accelerate's default NO_WRAP policy we still wrap the blocks, since one unit would gather the whole model;
- mixed precision (`--mixed_precision bf16`) and activation checkpointing (`--fsdp_activation_checkpointing
  true`) as configured;
- on GPUs accelerate shards the model. On the CPU accelerate 1.x ignores `--use_fsdp` (its FSDP is for
  accelerators) and would silently train DDP: here we apply the same FSDP2 wrapping ourselves over gloo, so a
  CPU cluster shards as asked and the two-process tests exercise the sharded path.

Checkpoints stay ours (no `torch.distributed.checkpoint` pickles): the model, AdamW state and weight average are
gathered to full tensors on process 0 (`torch.distributed.checkpoint.state_dict`'s full state dicts, offloaded to
the CPU) and written as size-limited safetensors shards with an index (stages/artifacts/sharded.py). A full state
does not depend on how many processes held it, so a run may resume on another process count when its global batch
(--batch-size x processes) is the same; otherwise `check_resume` refuses in one line. Process 0 needs host memory
for the full state: 16 bytes per parameter (fp32 weights + two AdamW moments), 20 with --model-ema-decay.

FSDP version 1 and DeepSpeed are refused in one line: FSDP1's flat parameters and DeepSpeed's engine would need
another state path, and DeepSpeed does not install on this project's CI machines.
"""

import os
from collections.abc import Callable

import torch
from accelerate import Accelerator
from vqgen.stages.core.errors import UserError

FSDP_HOW = "`accelerate launch --use_fsdp --fsdp_version 2` (or `accelerate config`: FSDP, version 2)"
BYTES_PER_PARAM = 16  # fp32 weights 4 + gradients 4 + AdamW exp_avg 4 + exp_avg_sq 4


def fsdp_requested() -> bool:
    """Whether the launch asked for FSDP (`accelerate launch --use_fsdp`, or a config file that does)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def training_engine(accelerator: Accelerator) -> str:
    """'fsdp' (accelerate shards), 'fsdp-cpu' (we shard, on the CPU), or 'plain' (one process or DDP)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise UserError(f"DeepSpeed is not supported: vqgen shards priors with FSDP2, {FSDP_HOW}")
    if kind == DistributedType.FSDP:
        if not accelerator.is_fsdp2:
            raise UserError(f"FSDP version 1 is not supported (its flat parameters): use FSDP2, {FSDP_HOW}")
        return "fsdp"
    if kind == DistributedType.MULTI_CPU and fsdp_requested():
        if os.environ.get("FSDP_VERSION", "1") != "2":
            raise UserError(f"FSDP version 1 is not supported (its flat parameters): use FSDP2, {FSDP_HOW}")
        return "fsdp-cpu"
    return "plain"


def prepare(accelerator: Accelerator, engine: str, model: torch.nn.Module, make_optimizer: Callable):
    """(model, optimizer) ready to train: sharded as the engine says, the optimizer made over the final params."""
    if engine == "plain":
        return accelerator.prepare(model, make_optimizer(model))
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    if engine == "fsdp":
        plugin = accelerator.state.fsdp_plugin
        if plugin.auto_wrap_policy is None:  # NO_WRAP, accelerate's default: the blocks are our unit
            plugin.auto_wrap_policy = transformer_auto_wrap_policy
        return accelerator.prepare(model, make_optimizer(model))
    plugin = FullyShardedDataParallelPlugin()  # the launch's FSDP_* settings
    shard_blocks(model, plugin.transformer_cls_names_to_wrap, plugin.activation_checkpointing)
    return model, accelerator.prepare_optimizer(make_optimizer(model))


def block_classes(model: torch.nn.Module, names: list[str] | None) -> tuple[type, ...]:
    names = names or list(getattr(model, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    return tuple(found)


def shard_blocks(model: torch.nn.Module, names: list[str] | None, checkpointing: bool) -> None:
    """fully_shard each block, then the root (what accelerate's fsdp2_prepare_model does on accelerators)."""
    from torch.distributed.fsdp import fully_shard

    classes = block_classes(model, names)
    blocks = [(n, m) for n, m in model.named_modules() if classes and isinstance(m, classes)]
    if checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for name, block in blocks:
            model.set_submodule(name, checkpoint_wrapper(block, preserve_rng_state=False))
        blocks = [(n, model.get_submodule(n)) for n, _ in blocks]
    for _, block in blocks:
        fully_shard(block)
    fully_shard(model)


# --- state: full tensors in and out of a sharded model ----------------------------------------------------------
def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every process calls it; process 0 gets the full state on the CPU, the others {}."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    """Every process calls it; process 0 gets the optimizer's full state keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, _raw(optimizer), options=_options(cpu_offload=True))


def load_full_state(model: torch.nn.Module, optimizer, model_state: dict, optimizer_state: dict) -> None:
    """Every process calls it with the full states (read from a checkpoint); each keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, model_state, options=_options())
    set_optimizer_state_dict(model, _raw(optimizer), optimizer_state, options=_options())


def _raw(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def gather(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (every process calls it), a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def shard_like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `ref` is: this process's shard when `ref` is a DTensor, else `full` itself."""
    if not hasattr(ref, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(ref.device, ref.dtype), ref.device_mesh, ref.placements)


def plain_copy(model: torch.nn.Module, full: dict[str, torch.Tensor]):
    """A single-device copy of a sharded model on process 0, None on the others: a new model of the same class
    and config holding `full`, the full weights that process 0 gathered ({} on the others)."""
    if not full:
        return None
    device = next(model.parameters()).device
    plain = type(model)(model.config)
    plain.load_state_dict(full)
    return plain.to(device).train(model.training)
