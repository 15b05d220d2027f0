"""What a training run is given: the loop's settings, the contract a stage fulfils, and how a run stops."""

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from vqgen.stages.core.errors import TrainingStopped  # noqa: F401 (raised by the trainer)

if TYPE_CHECKING:  # no torch at import: the CLI reads these defaults for its --help
    import torch


@dataclass
class TrainConfig:
    steps: int = 3200  # optimizer steps; 0: follow the size of the data (`epochs`, see `steps_for_epochs`)
    epochs: float = 0.0  # with steps = 0: passes over the training examples
    batch_size: int = 64  # per process and per micro-batch
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.02  # cosine decay ends at lr * min_lr_ratio
    grad_accum: int = 1  # micro-batches per optimizer step
    # "no" | "fp16" | "bf16"; None: accelerate's own setting (`accelerate config`, `accelerate launch`)
    mixed_precision: str | None = None
    # cpu | cuda | cuda:N | mps | auto (accelerate's choice: a GPU when there is one)
    device: str = "auto"
    # torch.compile the model after accelerate.prepare ($VQGEN_COMPILE_BACKEND, default inductor)
    compile: bool = False
    clip_grad: float = 1.0  # max gradient norm (0 = no clipping)
    model_ema_decay: float = 0.0  # EMA of the weights (0 = off); the saved model is the average
    seed: int = 0
    log_every: int = 25
    sample_every: int = 500  # save a sample grid every this many steps (0 = only at the end)
    # score the task's held-out split every this many steps (tasks with a `validate` method; 0 = never)
    eval_every: int = 0
    # stop after this many held-out scorings in a row without a lower score (0 = never; needs eval_every)
    patience: int = 0
    # save the last weights instead of the best held-out ones (tasks with `best_metric`)
    keep_last: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    # a checkpoint's tensors split into safetensors files of at most this size
    checkpoint_shard_gb: float = 4.0
    log_with: str | None = None  # accelerate tracker: "tensorboard", "wandb", ...
    max_nonfinite: int = 10  # stop after this many non-finite losses in a row
    max_rollback_share: float = 0.1  # ... or when more than this share of the steps so far were rolled back
    rollback_lr_factor: float = 0.5  # on a non-finite loss: restore the last good state, scale the lr by this
    snapshot_every: int = 50  # how often the in-memory "last good state" is refreshed
    record_data_order: bool = False  # debug: append every step's dataset indices to RUN/data_order.txt
    # DataLoader worker processes for tasks that read rows; None = default_workers()
    num_workers: int | None = None

    # Each field's range, declared once: the CLI's options, --config files and saved runs are all checked against
    # it (vqgen.stages.core.runconfig.check_limits). Beyond them a run is a typo (a learning rate of 1e5), cannot
    # be allocated, or trains nothing (a negative learning-rate floor).
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "steps": (0, 10**9), "epochs": (0.0, 1e6), "patience": (0, 10**6), "batch_size": (1, 2**20), "lr": (0.0, 1.0), "weight_decay": (0.0, 10.0),
        "warmup_steps": (0, 10**9), "min_lr_ratio": (0.0, 1.0), "grad_accum": (1, 2**16), "clip_grad": (0.0, 1e6),
        "model_ema_decay": (0.0, 0.99999), "seed": (0, 2**32 - 1), "log_every": (1, 10**9),
        "sample_every": (0, 10**9), "eval_every": (0, 10**9), "checkpoint_every": (1, 10**9),
        "keep_checkpoints": (0, 10**6), "max_nonfinite": (1, 10**9), "max_rollback_share": (0.0, 1.0),
        "rollback_lr_factor": (1e-3, 1.0), "snapshot_every": (1, 10**9), "num_workers": (0, 256),
        "checkpoint_shard_gb": (1e-5, 10**4),  # from 10 kB (a test of several shards) to 10 TB
    }  # fmt: skip


MIN_DATA_STEPS = 500  # steps = 0 never trains fewer steps than this (a tiny dataset still gets a schedule)


def steps_for_epochs(epochs: float, examples: int, global_batch: int) -> int:
    """The optimizer steps of `epochs` passes over `examples` at `global_batch` examples a step (at least
    MIN_DATA_STEPS): what `steps = 0` trains."""
    if not epochs > 0:
        raise ValueError(f"steps 0 follows the data: give epochs > 0 (got {epochs})")
    return max(MIN_DATA_STEPS, math.ceil(epochs * examples / global_batch))


def default_workers() -> int:
    """min(4, cores - 1), and 0 on a machine of 1 or 2 cores: there the main process's torch threads already use
    every core, and a worker only takes time from them (decoding is done once, when the data is prepared)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores <= 2 else min(4, cores - 1)


class TrainTask(Protocol):
    stage: str
    model: "torch.nn.Module"
    progress_keys: tuple[str, ...]

    def num_examples(self) -> int: ...

    def get_batch(self, indices: "torch.Tensor", device: "torch.device") -> Any: ...

    def compute_loss(
        self, model: "torch.nn.Module", batch: Any
    ) -> tuple["torch.Tensor", Any, dict[str, float]]: ...

    def save_samples(self, model: "torch.nn.Module", step: int, run_dir: Path) -> None: ...

    # optional: `validate(model) -> {name: value}` scores the held-out split (every TrainConfig.eval_every steps);
    # `best_metric: str` names the score to minimise: the trainer then keeps the best weights (stages/training/best.py)


# Each stage's training defaults, declared once: the stage configs and the CLI's --help both read them.
TOKENIZER_TRAINING = TrainConfig()
# Priors: 28 passes over the training grids (1,969 steps of 64 on the digits' 4,500, where 2,000 were chosen by
# benchmarks/prior_sweep.py; 707 on the 1,615 emoji), scored every 100 steps; the best scored weights are saved.
PRIOR_TRAINING = replace(
    TrainConfig(), steps=0, epochs=28.0, weight_decay=0.01, sample_every=1000, eval_every=100
)
