"""A first-order Markov prior: the next code depends on the previous code, its position and the class.

logits(t) = transition[prev] + position_bias[t] + class_bias[label], so sampling is constant work per token.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
from vqgen.priors.base import Prior, PriorConfig, PriorOutput


@dataclass
class MarkovPriorConfig(PriorConfig):
    prior_type: str = "markov"


class MarkovPrior(Prior):
    def __init__(self, config: MarkovPriorConfig):
        super().__init__(config)
        v, t = config.vocab_size, config.seq_len
        self.transition = nn.Parameter(torch.zeros(v + 1, v))  # row v: "no previous code" (position 0)
        self.position_bias = nn.Parameter(torch.zeros(t, v))
        self.class_bias = nn.Embedding(config.num_classes + 1, v)  # last row: the null label
        nn.init.zeros_(self.class_bias.weight)

    def _class_bias(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor:
        if labels is None:
            labels = torch.full((batch,), self.config.num_classes, device=self.transition.device)
        return self.class_bias(labels)  # (B, V)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> PriorOutput:
        b, h, w = codes.shape
        flat = codes.reshape(b, -1)  # (B, T)
        prev = torch.cat([torch.full_like(flat[:, :1], self.config.vocab_size), flat[:, :-1]], 1)
        logits = (
            self.transition[prev]
            + self.position_bias
            + self._class_bias(self.training_labels(labels), b)[:, None]
        )
        logits = logits.view(b, h, w, -1)
        return PriorOutput(logits, self.nll(logits, codes))

    def begin_sampling(self, labels: torch.Tensor | None, batch_size: int) -> dict:
        return {"t": 0, "class_bias": self._class_bias(labels, batch_size)}

    def next_logits(self, state: dict, prev: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        t = state["t"]
        row = self.config.vocab_size if prev is None else prev
        if prev is None:
            row = torch.full((state["class_bias"].shape[0],), row, device=self.transition.device)
        logits = self.transition[row] + self.position_bias[t] + state["class_bias"]
        return logits, {**state, "t": t + 1}
