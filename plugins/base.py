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

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn


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


def _convert(value: str, annotation: Any, where: str) -> Any:
    kind = annotation if isinstance(annotation, type) else type(None)
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind in (int, float, str):
            return kind(value)
    except ValueError:
        raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}") from None
    # Optional[...] and other annotations: try int, float, then keep the string
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return None if value.lower() == "none" else value


def parse_plugin_options(plugin: str, config_class: type, options: dict[str, str]) -> Any:
    """Build `config_class` from string options, converting each to its field's type."""
    known = {f.name: f for f in fields(config_class)}
    values = {}
    for key, raw in options.items():
        if key not in known:
            raise ValueError(f"plugin {plugin!r} has no option {key!r}; options: {', '.join(sorted(known))}")
        values[key] = _convert(raw, known[key].type, f"{plugin}.{key}")
    return config_class(**values)
