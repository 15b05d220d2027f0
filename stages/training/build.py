"""Building a training run, before its first step: the accelerator, the model on its device (sharded or not) and
its optimizer, the number of steps, the data feed, torch.compile and the plugins' set-up. `Trainer.__init__`
(vqgen.stages.training.trainer) calls `build_run`; every user's mistake found here is one line (`UserError`)."""

from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from vqgen.plugins.base import PluginContext, TrainingPlugin
from vqgen.stages.artifacts.hub import weights_file
from vqgen.stages.core.device import checked_compile_backend
from vqgen.stages.core.errors import UserError
from vqgen.stages.training import sharding
from vqgen.stages.training.config import TrainConfig, TrainTask, default_workers, steps_for_epochs
from vqgen.stages.training.data_order import BatchFeed, EpochSampler
from vqgen.stages.training.distribution import new_accelerator


@dataclass
class BuiltRun:
    """What a trainer trains with."""

    accelerator: Accelerator
    engine: str  # "plain" (one process, DDP), "fsdp" or "fsdp-cpu" (sharding.training_engine)
    model: torch.nn.Module  # prepared by accelerate (maybe wrapped, sharded, compiled)
    optimizer: torch.optim.Optimizer
    sharded: bool
    sampler: EpochSampler | None  # None: a stream, which keeps its own position
    feed: object | None  # a BatchFeed (DataLoader workers), a stream's feed, or None: rows read in-line
    ctx: PluginContext


def build_run(task: TrainTask, config: TrainConfig, run_dir: Path, plugins: list[TrainingPlugin]) -> BuiltRun:
    """Everything a run needs before its first step, in this order (the seed is set before the model moves, the
    optimizer is made over the final parameters, the steps are known before the plugins see them). Sets
    `config.mixed_precision` to the value used and `config.steps` when it follows the data (`--steps 0`)."""
    accelerator = make_accelerator(config, run_dir)
    engine = checked_engine(accelerator, task)
    record_settings(accelerator, config)
    set_seed(config.seed + accelerator.process_index)
    model, optimizer = prepare_model(accelerator, engine, task, config)
    rank, world = accelerator.process_index, accelerator.num_processes
    resolve_steps(task, config, world)
    if hasattr(task, "stream_feed"):  # a stream: its own resumable position, saved in every checkpoint
        sampler, feed = None, task.stream_feed(rank, world, config.batch_size, config.seed)
    else:
        sampler = EpochSampler(task.num_examples(), config.batch_size, config.seed, rank, world)
        feed = data_feed(task, config, sampler, accelerator.device)
    sharded = sharding.is_sharded(model)
    if config.compile:
        model = torch.compile(model, backend=checked_compile_backend())
    ctx = PluginContext(accelerator, model, task.stage, config.steps, config.seed, weights_file=weights_file)
    set_up_plugins(plugins, ctx)
    return BuiltRun(accelerator, engine, model, optimizer, sharded, sampler, feed, ctx)


def make_accelerator(config: TrainConfig, run_dir: Path) -> Accelerator:
    """The run's Accelerator, or one line saying why there is none."""
    try:
        accelerator = new_accelerator(
            config.device,
            mixed_precision=config.mixed_precision,  # None: accelerate's own setting (config file, launch)
            log_with=config.log_with,
            project_dir=str(run_dir),
        )
    except (ValueError, ImportError) as exc:
        raise UserError(f"cannot set up training: {exc}") from exc
    return accelerator


def checked_engine(accelerator: Accelerator, task: TrainTask) -> str:
    """The training engine (plain or FSDP2); sharding is refused for a task that does not shard."""
    engine = sharding.training_engine(accelerator)  # plain (one process, DDP) or FSDP2
    if engine != "plain" and not getattr(task, "shardable", False):
        raise UserError(
            f"FSDP: the {task.stage} trains with DDP (it fits one device); launch it without --use_fsdp"
        )
    return engine


def record_settings(accelerator: Accelerator, config: TrainConfig) -> None:
    """`config.mixed_precision` becomes the value used (the flag, or accelerate's own setting: what
    run_config.json and checkpoints record); a tracker (--log-with) that is not installed is refused."""
    config.mixed_precision = str(accelerator.mixed_precision)
    if config.log_with and not accelerator.log_with:
        raise UserError(
            f"--log-with {config.log_with}: that tracker is not installed (pip install {config.log_with})"
        )


def prepare_model(accelerator: Accelerator, engine: str, task: TrainTask, config: TrainConfig):
    """(model, optimizer): the task's model on the device (channels-last for convolutions on CUDA), prepared by
    accelerate as the engine says, with AdamW over its final parameters (weight decay on matrices only)."""
    model = task.model
    on_cuda = accelerator.device.type == "cuda"
    model.to(accelerator.device)  # before the optimizer: fused AdamW wants its parameters on the GPU
    if on_cuda and getattr(task, "channels_last", False):
        model.to(memory_format=torch.channels_last)  # convolutions: NHWC kernels on CUDA (tensor cores)

    def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99), fused=True if on_cuda else None)

    return sharding.prepare(accelerator, engine, model, make_optimizer)


def resolve_steps(task: TrainTask, config: TrainConfig, world: int) -> None:
    """`--steps 0` follows the data: `config.steps` becomes `epochs` passes over it (a stream has no size)."""
    if config.steps != 0:
        return
    if not hasattr(task, "num_examples") or hasattr(task, "stream_feed"):
        raise UserError("--steps 0 follows the size of the data; a stream has none: give --steps N")
    try:
        config.steps = steps_for_epochs(
            config.epochs, task.num_examples(), config.batch_size * config.grad_accum * world
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None


def data_feed(
    task: TrainTask, config: TrainConfig, sampler: EpochSampler, device: torch.device
) -> BatchFeed | None:
    """DataLoader workers (--num-workers) for a task that reads rows (`rows`, `prepare`); None: read in-line."""
    workers = default_workers() if config.num_workers is None else config.num_workers
    if workers < 0:
        raise UserError(f"--num-workers must be 0 or more, got {workers}")
    if workers == 0 or not hasattr(task, "rows"):
        return None
    return BatchFeed(sampler, task.rows, workers, device.type == "cuda")


def set_up_plugins(plugins: list[TrainingPlugin], ctx: PluginContext) -> None:
    """Each plugin's `setup`; its plain errors (ValueError, OSError) are one line for the user."""
    for plugin in plugins:
        try:
            plugin.setup(ctx)
        except (ValueError, OSError) as exc:
            raise UserError(f"plugin {plugin.name!r}: {' '.join(str(exc).split())}") from None
