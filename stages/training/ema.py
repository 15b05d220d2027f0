"""An exponential moving average of the weights (Polyak averaging): `--model-ema-decay D` keeps, beside the model, the
average of its floating-point parameters and buffers over the optimizer steps, in fp32. The saved model is the
average; checkpoints carry it, so a resumed run continues it exactly. The decay warms up as min(D, (1+n)/(10+n))
after n updates, so the first steps' random weights fade out quickly."""

from contextlib import contextmanager

import torch


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {
            name: t.detach().float().clone()
            for name, t in model.state_dict().items()
            if t.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards the model's current weights (after an optimizer step that was taken)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        state = model.state_dict()
        names = list(self.shadow)
        torch._foreach_lerp_(
            [self.shadow[n] for n in names], [state[n].detach().float() for n in names], 1.0 - decay
        )

    def copy_to(self, model: torch.nn.Module) -> None:
        """Load the average into `model` (its other entries, such as integer buffers, stay as they are)."""
        state = model.state_dict()
        model.load_state_dict({**state, **{n: t.to(state[n].dtype) for n, t in self.shadow.items()}})

    @contextmanager
    def applied(self, model: torch.nn.Module):
        """The model with the averaged weights inside the block, its own weights again after it."""
        own = {n: t.detach().clone() for n, t in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self) -> tuple[dict[str, torch.Tensor], int]:
        return {n: t.clone() for n, t in self.shadow.items()}, self.updates

    def load_state_dict(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        missing = set(self.shadow) - set(tensors)
        if missing:
            raise KeyError(f"the weight average lacks {sorted(missing)[:3]}")
        for name in self.shadow:
            self.shadow[name].copy_(tensors[name])
        self.updates = updates
