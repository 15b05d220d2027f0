"""The trainer's checkpoints: `save` writes the state at a step (every process takes part, process 0 writes),
`resume` puts the trainer back at the newest intact one. A mixin of `Trainer` (vqgen.stages.training.trainer); what
a checkpoint holds is `state.py`, its files `checkpoint.py`."""

import sys
from pathlib import Path

from vqgen.stages.artifacts import replaced
from vqgen.stages.core.errors import UserError
from vqgen.stages.training import checkpoint as ckpt
from vqgen.stages.training.state import checkpoint_state, restore_state


class Checkpointing:
    """`save` and `resume`, over the trainer's accelerator, run folder, settings and feed."""

    def save(self) -> Path | None:
        acc = self.accelerator
        acc.wait_for_everyone()
        path = None
        data_state = self._data_state()
        if acc.is_main_process or self.sharded:  # sharded: every process takes part in gathering the state
            tensors, meta = checkpoint_state(self, data_state)
        if acc.is_main_process:
            shard_bytes = int(self.cfg.checkpoint_shard_gb * 1e9)
            path = ckpt.write_checkpoint(
                self.run_dir, self.step, tensors, meta, self.cfg.keep_checkpoints, shard_bytes
            )
            replaced.commit(self.run_dir)  # the new run is safe: what --overwrite set aside can go
        self._saved_step = self.step
        acc.wait_for_everyone()
        return path

    def resume(self) -> int:
        """Continue from the newest intact checkpoint (a corrupt one is reported, set aside and skipped); what an
        interrupted write left behind is removed first. Returns the step."""
        acc = self.accelerator
        if acc.is_main_process:
            ckpt.clean_partial(self.run_dir)
        acc.wait_for_everyone()
        for path in reversed(ckpt.list_checkpoints(self.run_dir)):
            try:
                problem = ckpt.verify_checkpoint(path)
            except ckpt.MissingShard as exc:
                raise UserError(
                    f"--resume: {exc}; restore it, or delete {path.name} to resume from an older one"
                ) from None
            if problem:
                self._set_aside(path, problem)
                continue
            restore_state(self, *ckpt.read_checkpoint(path), path)
            self._saved_step = self.step
            return self.step
        raise UserError(f"--resume: no intact checkpoint under {self.run_dir / ckpt.CHECKPOINT_DIR}")

    def _set_aside(self, path: Path, problem: str) -> None:
        """A corrupt checkpoint renamed out of the way (by process 0, once every process has checked it)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            aside = ckpt.set_aside(path)
            print(
                f"warning: skipping corrupt checkpoint {path}: {problem} (moved to {aside.name})",
                file=sys.stderr,
            )
        acc.wait_for_everyone()

    def _data_state(self) -> list | None:
        """Every process's stream position (a stream's state_dict), gathered for the checkpoint; None otherwise."""
        if not hasattr(self.feed, "state_dict"):
            return None
        if self.accelerator.num_processes == 1:
            return [self.feed.state_dict()]
        from accelerate.utils import gather_object

        return gather_object([self.feed.state_dict()])
