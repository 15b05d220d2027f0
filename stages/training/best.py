"""The best weights seen on the held-out split, and early stopping.

A task that scores a held-out split (`validate`) names the score to minimise (`best_metric`, e.g. the prior's
`val_bits_per_token`). Every --eval-every steps the trainer hands the scores and the weights that were scored to
`BestWeights.update`: a lower score than any before keeps a copy of those weights (on the CPU) with its step; a
score that is no lower counts one evaluation without improvement, and `--patience N` such evaluations in a row stop
the run (`exhausted`). Checkpoints carry the kept weights, their step and score and the count (`state_dict`), so a
resumed run keeps, and stops at, exactly what the uninterrupted run would have.
"""

import math

import torch


class BestWeights:
    def __init__(self, metric: str, patience: int = 0):
        self.metric, self.patience = metric, patience
        self.step: int | None = None  # the step of the kept weights; None: nothing scored yet
        self.value = math.inf  # their score
        self.since = 0  # evaluations since the last improvement
        self.weights: dict[str, torch.Tensor] | None = None

    def update(self, step: int, scores: dict[str, float], model: torch.nn.Module) -> bool:
        """Count one evaluation at `step`; keep `model`'s weights when `scores[metric]` is the lowest so far.
        Returns whether it was. A non-finite score is never kept."""
        value = float(scores[self.metric])
        if math.isfinite(value) and value < self.value:
            self.step, self.value, self.since = step, value, 0
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return True
        self.since += 1
        return False

    @property
    def exhausted(self) -> bool:
        """Whether `patience` evaluations in a row brought no improvement (never, with patience 0)."""
        return self.patience > 0 and self.since >= self.patience

    def copy_to(self, model: torch.nn.Module) -> None:
        """Load the kept weights into `model` (on its device)."""
        if self.weights is None:
            raise ValueError("no held-out score was recorded: there are no best weights to load")
        model.load_state_dict(self.weights)

    def summary(self) -> str:
        return f"step {self.step} ({self.value:.4g} {self.metric})"

    # --- checkpoints --------------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        value = self.value if self.step is not None else None  # JSON has no infinity
        meta = {"metric": self.metric, "step": self.step, "value": value, "since": self.since}
        return dict(self.weights or {}), meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.step, self.since = meta["step"], meta["since"]
        self.value = math.inf if meta["value"] is None else float(meta["value"])
        self.weights = {k: v.clone() for k, v in tensors.items()} if meta["step"] is not None else None
