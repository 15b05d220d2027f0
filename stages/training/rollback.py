"""What the trainer does when a step's loss (or a plugin's) is not finite: the step is skipped, the model, the
optimizer, the plugins and the weight average go back to the last good snapshot, the learning rate is lowered,
and training stops after `max_nonfinite` such steps in a row, or when they are more than `max_rollback_share` of
the steps so far. A mixin of `Trainer` (vqgen.stages.training.trainer), whose state it reads and restores."""

import contextlib
import copy

from vqgen.stages.training import checkpoint as ckpt
from vqgen.stages.training.config import TrainingStopped


class NonfiniteRollback:
    """The trainer's rollback: `_take_snapshot` after a good step, `_on_nonfinite` after a bad one."""

    def _on_nonfinite(self, step: int, what: str = "loss") -> None:
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self.accelerator.scaler
        # fp16: close the GradScaler's step (its unscale_ for clipping) without an update
        if scaler is not None:
            with contextlib.suppress(AssertionError):  # AssertionError: nothing was unscaled (no clipping)
                scaler.update()  # the gradients were not finite: the scale is lowered too
        self.nonfinite_in_row += 1
        self.nonfinite_total += 1
        last = ckpt.list_checkpoints(self.run_dir)
        if self.nonfinite_in_row >= self.cfg.max_nonfinite:
            where = f"last good checkpoint: {last[-1]}" if last else "no checkpoint was written yet"
            raise TrainingStopped(
                f"training stopped at step {step}: {self.nonfinite_in_row} non-finite losses in a row ({where}); "
                "lower --lr or check the data"
            )
        share = self.nonfinite_total / max(step + 1, 1)
        if self.nonfinite_total >= self.cfg.max_nonfinite and share > self.cfg.max_rollback_share:
            where = f"last good checkpoint: {last[-1]}" if last else "no checkpoint was written yet"
            raise TrainingStopped(
                f"training stopped at step {step}: {self.nonfinite_total} non-finite losses were rolled back, "
                f"{share:.0%} of the steps so far (more than {self.cfg.max_rollback_share:.0%}; {where}); "
                "lower --lr or check the data"
            )
        if self._snapshot is not None and self.cfg.rollback_lr_factor < 1:
            self._restore_snapshot()
            self.lr_scale *= self.cfg.rollback_lr_factor
            for plugin in self.plugins:
                plugin.on_rollback(self.cfg.rollback_lr_factor)
            self.accelerator.print(
                f"non-finite {what} at step {step}: rolled back to the state of step {self._snapshot['step']}, "
                f"learning rate scaled to x{self.lr_scale:.3g}"
            )
        return None

    def _take_snapshot(self, step: int) -> None:
        self._snapshot = {
            "step": step,
            "model": copy.deepcopy(self.unwrapped().state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "plugins": [copy.deepcopy(p.state_dict()) for p in self.plugins],
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def _restore_snapshot(self) -> None:
        snap = self._snapshot
        self.unwrapped().load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        for plugin, state in zip(self.plugins, snap["plugins"]):
            plugin.load_state_dict(state)
        if self.ema is not None:
            self.ema.load_state_dict(*snap["ema"])
