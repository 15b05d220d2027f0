"""An L1 reconstruction-loss plugin for the tokenizer stage: adds weight * mean|recon - image|."""

from dataclasses import dataclass

from vqgen.plugins.base import PluginLoss, TrainingPlugin


@dataclass
class L1Config:
    weight: float = 1.0


class L1Plugin(TrainingPlugin):
    config_class = L1Config
    stages = ("tokenizer",)
    progress_keys = ("l1",)

    def loss(self, ctx, batch, out, step):
        l1 = (out.recon - batch).abs().mean()
        return PluginLoss(self.config.weight * l1, {"l1": float(l1.detach())})
