"""The training-plugin contract: what a plugin may add to a stage's training loop.

A plugin is a class with a dataclass config, registered with `@register_plugin("name")` or through the
entry-point group `vqgen.plugins`. The trainer (stages/trainer.py) calls it at fixed points of every step:

    setup(ctx)                       once, before training: build modules (a discriminator) and their optimizers
    loss(ctx, batch, out, step)      -> PluginLoss: a term added to the stage's loss, already weighted, plus metrics
    after_step(ctx, batch, out, step)-> metrics: the plugin's own optimisation (the discriminator's step)
    state_dict() / load_state_dict() its full state, so that checkpoints and --resume continue it exactly

`batch` is the stage's batch (for the tokenizer: images (B, C, S, S) in [-1, 1]); `out` is the stage's model
output (for the tokenizer: a TokenizerOutput with `recon` (B, C, S, S) and `recon_loss`). Metrics are floats;
they go to the progress bar (those named in `progress_keys`), the trackers and metrics.json.

Options come from the command line as `--plugin-opt name.field=value` and are parsed into the config dataclass
with the field's type (see `parse_plugin_options`).
"""

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from stages.options import parse_options


@dataclass
class PluginContext:
    """What the trainer hands a plugin."""

    accelerator: Any  # accelerate.Accelerator
    model: (
        nn.Module
    )  # the stage's model (prepared by accelerate; use accelerator.unwrap_model for attributes)
    stage: str  # "tokenizer" or "prior"
    total_steps: int
    seed: int


@dataclass
class PluginLoss:
    loss: torch.Tensor  # scalar, already weighted: added to the stage's loss before backward
    metrics: dict[str, float] = field(default_factory=dict)


class TrainingPlugin:
    """Base class of every training plugin. Subclasses set `config_class` and `stages` and override what they use."""

    name: str = ""  # set by the registry
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

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able metadata): everything needed to continue exactly after a resume."""
        return {}, {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore what state_dict returned."""

    def on_rollback(self, lr_factor: float) -> None:
        """Called after the trainer rolled back to the last good state because of a non-finite loss."""


def parse_plugin_options(plugin: str, config_class: type, options: dict[str, str]) -> Any:
    """Build a plugin's config dataclass from `--plugin-opt` strings, converting each to its field's type."""
    return parse_options(f"plugin {plugin!r}", config_class, options)
