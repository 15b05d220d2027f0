"""The training-plugin contract: what a plugin may add to a stage's training loop.

A plugin is a class with a dataclass config, found by the host through `BUILTIN_PLUGINS` or the entry-point group
`vqgen.plugins`. The host's trainer (vqgen.stages.training.trainer) calls it at fixed points of every step:

    setup(ctx)                       once, before training: build modules (a discriminator) and their optimizers
    loss(ctx, batch, out, step)      -> PluginLoss: a term added to the stage's loss, already weighted, plus metrics
    after_step(ctx, batch, out, step)-> metrics: the plugin's own optimisation (the discriminator's step)
    state_dict() / load_state_dict() its full state as plain torch state (nested dicts and lists of tensors,
                                     module and optimizer state_dicts, numbers, strings): the host saves it in
                                     every checkpoint, so that --resume continues the plugin exactly

`batch` is the stage's batch (for the tokenizer: images (B, C, S, S) in [-1, 1]); `out` is the stage's model
output (for the tokenizer: a TokenizerOutput with `recon` (B, C, S, S) and `recon_loss`). Metrics are floats;
they go to the progress bar (those named in `progress_keys`), the trackers and metrics.json.

Options come from the command line as `--plugin-opt name.field=value` (or a run's config file) and are parsed by
the host into the config dataclass with each field's type. A plugin knows no host: it raises plain `ValueError`
(bad options or data) or `OSError` (files it cannot read), which the host turns into one-line user errors, and
it reaches host services (weight files) only through the `PluginContext` it is handed.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


def local_weights_file(ref: str) -> Path:
    """The default `PluginContext.weights_file`: a local .safetensors file, or a folder holding model.safetensors."""
    path = Path(ref).expanduser()
    path = path / "model.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {ref}")
    return path


@dataclass
class PluginContext:
    """What the trainer hands a plugin."""

    accelerator: Any  # accelerate.Accelerator
    # the stage's model (prepared by accelerate; use accelerator.unwrap_model for attributes)
    model: nn.Module
    stage: str  # "tokenizer" or "prior"
    total_steps: int
    seed: int
    # A weights reference (a .safetensors file, a folder holding model.safetensors, or a Hub repo id) -> the local
    # .safetensors file, downloaded into the Hub cache if needed; raises OSError when it cannot be had.
    weights_file: Callable[[str], Path] = local_weights_file


@dataclass
class PluginLoss:
    loss: torch.Tensor  # scalar, already weighted: added to the stage's loss before backward
    metrics: dict[str, float] = field(default_factory=dict)


class TrainingPlugin:
    """Base class of every training plugin. Subclasses set `config_class` and `stages` and override what they use."""

    name: str = ""  # set by the host to the name the plugin was enabled under
    config_class: type = object  # a dataclass; its fields are the plugin's options
    stages: tuple[str, ...] = ("tokenizer",)  # stages the plugin can join
    progress_keys: tuple[str, ...] = ()  # metrics shown on the progress bar

    def __init__(self, config: Any):
        self.config = config

    def setup(self, ctx: PluginContext) -> None:
        """Build modules and optimizers; prepare them with ctx.accelerator."""

    def loss(self, ctx: PluginContext, batch: torch.Tensor, out: Any, step: int) -> PluginLoss | None:
        """An extra loss term for this step, or None."""
        return None

    def after_step(self, ctx: PluginContext, batch: torch.Tensor, out: Any, step: int) -> dict[str, float]:
        """Runs after the stage's optimizer step; returns metrics."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly after a resume, as plain torch state (see the module docstring)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned; an empty dict means a run that started without this plugin."""

    def on_rollback(self, lr_factor: float) -> None:
        """Called after the trainer rolled back to the last good state because of a non-finite loss."""
