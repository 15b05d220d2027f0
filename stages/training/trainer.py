"""One training loop for every stage, through `accelerate`.

The same code runs on the CPU, on one GPU, and on several GPUs or machines (`accelerate launch cli.py ...`).
A stage supplies a `TrainTask` (its model, how to fetch a batch, its loss, its sample grid); plugins add loss
terms and their own optimisation steps (plugins/base.py). Training is split by concern: building the run
(`build.py`: accelerator, model and optimizer, sharding, compile, data feed, plugins), the loop here (`fit`,
`_advance`, one step: `train_step`, logging, held-out scoring), checkpointing (`saving.py`: `save` / `resume`)
and the non-finite rollback (`rollback.py`).

Exact resume: the data order is a pure function of (seed, step) (`EpochSampler`), and checkpoints hold the model,
the optimizer, the step, the learning-rate scale, the RNG states and every plugin's state. The data order is
witnessed, not only assumed: checkpoints carry `data_digest`, a hash chained over the dataset indices of every
step so far (process 0's), so two runs end with the same digest only if they trained on the same batches in the
same order, none replayed or skipped; `record_data_order` also writes each step's indices to RUN/data_order.txt.
Ctrl-C (SIGINT) or SIGTERM stops the loop between two steps and saves a checkpoint there; a second one stops at
once, keeping the last checkpoint.
"""

import contextlib
import hashlib
import math
from dataclasses import asdict
from pathlib import Path

import torch
from vqgen.plugins.base import TrainingPlugin
from vqgen.stages.core.progress import progress
from vqgen.stages.reporting.run_plots import write_plots
from vqgen.stages.training import checkpoint as ckpt
from vqgen.stages.training import sharding
from vqgen.stages.training.best import BestWeights
from vqgen.stages.training.build import build_run
from vqgen.stages.training.config import TrainConfig, TrainingStopped, TrainTask
from vqgen.stages.training.data_order import BatchFeed, open_data_order, worker_died
from vqgen.stages.training.ema import WeightAverage
from vqgen.stages.training.interrupts import graceful_interrupt
from vqgen.stages.training.rollback import NonfiniteRollback
from vqgen.stages.training.saving import Checkpointing

__all__ = ["TrainConfig", "Trainer", "TrainingStopped", "TrainTask"]


class Trainer(NonfiniteRollback, Checkpointing):
    def __init__(
        self, task: TrainTask, config: TrainConfig, run_dir: Path, plugins: list[TrainingPlugin] = ()
    ):
        self.task, self.cfg, self.run_dir, self.plugins = task, config, Path(run_dir), list(plugins)
        run = build_run(task, config, self.run_dir, self.plugins)
        self.accelerator, self.engine, self.model = run.accelerator, run.engine, run.model
        self.optimizer, self.sharded, self.ctx = run.optimizer, run.sharded, run.ctx
        self.sampler, self.feed = run.sampler, run.feed
        self.step, self.lr_scale = 0, 1.0
        self.nonfinite_in_row, self.nonfinite_total = 0, 0
        # fp16: steps whose gradients overflowed, skipped by the GradScaler (not a divergence: no rollback)
        self.skipped_steps = 0
        self._snapshot: dict | None = None
        self.history: list[dict[str, float]] = []
        self._consumed: list[torch.Tensor] = []  # the dataset indices of the current step's micro-batches
        # sha256 chained over the indices of every completed step (see the module docstring)
        self.data_digest = ""
        self._saved_step: int | None = None  # the step of the newest checkpoint on disk
        self.ema = (
            WeightAverage(self.unwrapped(), config.model_ema_decay) if config.model_ema_decay > 0 else None
        )
        self._stop_requested = False
        if self.accelerator.is_main_process:  # a disk too small for one checkpoint: said before any step
            ckpt.check_space(self.run_dir, self.unwrapped(), self.ema is not None)
        metric = getattr(task, "best_metric", None) if hasattr(task, "validate") else None
        keep_best = metric and config.eval_every and not self.sharded
        self.best = BestWeights(metric, config.patience) if keep_best else None
        # the held-out score did not improve for `patience` scorings: the run is over
        self.stopped_early = False
        self._held_out: dict[str, float] = {}  # the latest held-out scores, shown in the progress line
        self._postfix: dict[str, str] = {}  # the latest training metrics shown there

    # --- schedule -----------------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            factor = (step + 1) / c.warmup_steps
        else:
            progress = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
            factor = c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (
                1 + math.cos(math.pi * min(progress, 1.0))
            )
        return c.lr * factor * self.lr_scale

    # --- one step ---------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict | None:
        """One optimizer step over grad_accum micro-batches; None if it was skipped for a non-finite loss.

        The metrics stay tensors on the device (read back at log steps only, `_log`). The step reads the device once:
        the skip-or-step decision (a non-finite loss anywhere, or without a GradScaler a non-finite gradient norm).
        Under fp16 a non-finite gradient is no divergence: it goes to `optimizer.step()`, whose GradScaler skips the
        update and lowers its scale (counted as `skipped_steps`)."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        metrics: dict = {}
        batch = out = None
        self._consumed = []
        bad = torch.zeros(2, device=self.accelerator.device)  # [non-finite losses, non-finite gradient norm]
        for micro in range(self.cfg.grad_accum):
            indices, batch = self._micro_batch(step * self.cfg.grad_accum + micro)
            self._consumed.append(indices)
            sync = micro == self.cfg.grad_accum - 1
            with (
                self.accelerator.no_sync(self.model) if not sync else contextlib.nullcontext(),
                self.accelerator.autocast(),
            ):
                loss, out, m = self.task.compute_loss(self.model, batch)
                for plugin in self.plugins:
                    extra = plugin.loss(self.ctx, batch, out, step)
                    if extra is not None:
                        loss = loss + extra.loss
                        m.update(extra.metrics)
                loss_d = loss.detach()
                bad[0] += (~torch.isfinite(loss_d.float())).any()
                self.accelerator.backward(loss / self.cfg.grad_accum)
            metrics.update(m)
            metrics["loss"] = loss_d
        scaled = self.accelerator.scaler is not None  # fp16: the GradScaler judges the gradients
        if self.cfg.clip_grad > 0:
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
            norm = torch.as_tensor(sharding.gather(norm), device=self.accelerator.device).detach()
            if not scaled:
                bad[1] += (~torch.isfinite(norm.float())).any()
            metrics["grad_norm"] = norm
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, "sum")
        nonfinite_loss, nonfinite_grad = bad.tolist()  # the one host sync of the step
        if nonfinite_loss or nonfinite_grad:
            return self._on_nonfinite(step, "loss" if nonfinite_loss else "gradient norm")
        self.optimizer.step()
        if scaled and self.optimizer.step_was_skipped:
            self.skipped_steps += 1
        elif self.ema is not None:
            self.ema.update(self.unwrapped())
        self.optimizer.zero_grad(set_to_none=True)
        for plugin in self.plugins:
            metrics.update(plugin.after_step(self.ctx, batch, out, step))
        metrics["lr"] = self.lr_at(step)
        self.nonfinite_in_row = 0
        return metrics

    # --- data -------------------------------------------------------------------------------------------------
    def _micro_batch(self, micro: int):
        """(dataset indices, batch on the device) of global micro-batch `micro`: a function of (seed, micro)."""
        device = self.accelerator.device
        if self.feed is not None:
            indices, rows = self.feed.get(micro)
            batch = self.task.prepare(rows, device)
        else:
            indices = self.sampler.indices(micro)
            batch = self.task.get_batch(indices, device)
        if hasattr(self.task, "augment"):
            batch = self.task.augment(batch, self.cfg.seed, micro)
        return indices, batch

    # --- the loop ---------------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, float]]:
        """Train from self.step to cfg.steps; saves samples and checkpoints on the way. Ctrl-C saves and stops."""
        cfg, acc = self.cfg, self.accelerator
        if cfg.log_with:
            acc.init_trackers("vqgen", config=_flat(asdict(cfg)))
        self.bar = bar = progress(
            total=cfg.steps, initial=self.step, disable=not acc.is_local_main_process, desc=self.task.stage
        )
        order_log = (
            open_data_order(self.run_dir, acc.process_index, self.step) if cfg.record_data_order else None
        )
        try:
            with self._graceful_interrupt():
                while self.step < cfg.steps and not self.stopped_early:
                    self._advance(order_log)
                    if self.stopped_early:
                        self._stop_early()
                    if self.step < cfg.steps and self._stop_agreed():
                        if self._saved_step != self.step:
                            self.save()
                        raise KeyboardInterrupt
        except (RuntimeError, ConnectionResetError, BrokenPipeError, EOFError) as exc:
            raise (worker_died(exc, isinstance(self.feed, BatchFeed)) or exc) from None
        finally:
            bar.close()
            if self.feed is not None:
                self.feed.close()
            if order_log:
                order_log.close()
        if cfg.log_with:
            acc.end_training()
        return self.history

    def _advance(self, order_log) -> None:
        """Try step self.step; when it succeeds, log it and save samples and checkpoints that are due. A skipped
        step (non-finite loss; maybe rolled back) leaves self.step as it is, so the same step index is tried again."""
        cfg, acc, step = self.cfg, self.accelerator, self.step
        if cfg.snapshot_every and step % cfg.snapshot_every == 0 and self.nonfinite_in_row == 0:
            self._take_snapshot(step)
        metrics = self.train_step(step)
        if metrics is None:
            return
        self.step = step + 1
        self.bar.update(1)
        consumed = torch.cat(self._consumed)
        self.data_digest = hashlib.sha256(self.data_digest.encode() + consumed.numpy().tobytes()).hexdigest()
        if order_log:
            order_log.write(f"{step}\t{','.join(map(str, consumed.tolist()))}\n")
            order_log.flush()
        self._log(metrics)
        if cfg.sample_every and self.step % cfg.sample_every == 0:
            model = self.whole_model()  # sharded: gathered by every process, a copy on process 0
            if acc.is_main_process:
                self.task.save_samples(model, self.step, self.run_dir)
                write_plots(self.run_dir, self.history)  # RUN/plots: the curves so far and the newest samples
        if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
            self._validate()  # every process: sharded, each runs the forward passes, gathering its blocks
        if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
            self.save()

    def _graceful_interrupt(self):
        """Ctrl-C or SIGTERM: finish the step, save, stop (vqgen.stages.training.interrupts)."""
        return graceful_interrupt(self)

    def _stop_agreed(self) -> bool:
        """Whether any process was asked to stop (all processes stop at the same step)."""
        if self.accelerator.num_processes == 1:
            return self._stop_requested
        flag = torch.tensor([float(self._stop_requested)], device=self.accelerator.device)
        return float(self.accelerator.reduce(flag, "sum")) > 0

    def _log(self, metrics: dict) -> None:
        """Every log_every steps (and the last): read the step's metrics back from the device in one transfer,
        keep them in the history and show them. Other steps read nothing back."""
        if self.step % self.cfg.log_every and self.step != self.cfg.steps:
            return
        metrics = host_values(metrics)
        metrics.update(nonfinite_skipped=float(self.nonfinite_total), skipped_steps=float(self.skipped_steps))
        self.history.append({"step": self.step, **metrics})
        if self.cfg.log_with:
            self.accelerator.log(metrics, step=self.step)
        keys = ("loss", *self.task.progress_keys, *[k for p in self.plugins for k in p.progress_keys])
        self._postfix = {k: f"{metrics[k]:.4g}" for k in keys if k in metrics}
        # the latest held-out too
        self.bar.set_postfix({**self._postfix, **_shown(self._held_out)}, refresh=False)

    def _validate(self) -> None:
        """The task's held-out scores of the weights as they are now (the weight average with --model-ema-decay),
        added to this step's history entry; with a `best_metric`, the best weights kept and the patience counted.
        Uses no random numbers, so a run with it draws the same batches and weights as one without."""
        validate = getattr(self.task, "validate", None)
        if validate is None:
            return
        if self.accelerator.is_main_process or self.sharded:  # sharded: every process runs the forward passes
            model = self.unwrapped()
            average = self.ema is not None  # sharded: each process swaps the average of its own shards in
            with self.ema.applied(model) if average else contextlib.nullcontext(model) as scored:
                scores = validate(scored)  # in eval mode; the next train_step sets training mode again
                if self.best is not None:
                    self.best.update(self.step, scores, scored)
            if not self.history or self.history[-1]["step"] != self.step:
                self.history.append({"step": self.step})
            self.history[-1].update(scores)
            self._held_out = scores
            self.bar.set_postfix({**self._postfix, **_shown(scores)}, refresh=False)
        self.stopped_early = self._agreed(self.best is not None and self.best.exhausted)

    def _stop_early(self) -> None:
        """One line saying why the run ends here; a checkpoint at this step, so that --resume ends at once too."""
        if self._saved_step != self.step:
            self.save()
        b = self.best
        self.accelerator.print(
            f"{self.task.stage}: early stop at step {self.step} of {self.cfg.steps}: no lower {b.metric} in "
            f"{b.patience} scorings (--patience {b.patience}, every {self.cfg.eval_every} steps); the best was "
            f"at {b.summary()}"
        )

    def _agreed(self, flag: bool) -> bool:
        """Process 0's decision, taken by every process (they all stop at the same step)."""
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor(
            [float(flag) if self.accelerator.is_main_process else 0.0], device=self.accelerator.device
        )
        return float(self.accelerator.reduce(value, "sum")) > 0

    def final_model(self) -> torch.nn.Module | None:
        """The model to save once training has ended, loaded into the model (so call it after the last checkpoint):
        the weights with the best held-out score when the task names one (`best_metric`) and they were scored, unless
        --keep-last; else with --model-ema-decay the average of the weights; else the model as trained. Every process
        calls it: sharded, process 0 gets a single-device copy with the full weights and the others None (a sharded
        run keeps no best weights: it saves the last)."""
        model = self.unwrapped()
        if self.kept() == "best":
            self.best.copy_to(model)
        elif self.ema is not None:
            self.ema.copy_to(model)
        return self.whole_model()

    def whole_model(self) -> torch.nn.Module | None:
        """The model on one device: the model itself, or (sharded; every process calls it) a copy with the full
        weights on process 0 and None on the others."""
        if not self.sharded:
            return self.unwrapped()
        return sharding.plain_copy(self.unwrapped(), sharding.full_model_state(self.unwrapped()))

    def kept(self) -> str:
        """Which weights `final_model` returns: "best" (held-out) or "last"."""
        has_best = self.best is not None and self.best.weights is not None
        return "best" if has_best and not self.cfg.keep_last else "last"

    def unwrapped(self) -> torch.nn.Module:
        """The trained model itself: without accelerate's wrappers (DDP, mixed precision) nor torch.compile's, so
        that saved weights and checkpoints never carry `module.` or `_orig_mod.` prefixes."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)


def _shown(scores: dict[str, float]) -> dict[str, str]:
    """Held-out scores as the progress line shows them, next to the training loss."""
    return {k: f"{v:.4g}" for k, v in scores.items()}


def host_values(metrics: dict) -> dict[str, float]:
    """Metrics as Python floats: every tensor among them read back from the device in one transfer."""
    names = [k for k, v in metrics.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in metrics.items() if k not in names}
    if names:
        stacked = torch.stack([metrics[k].detach().float().reshape(()).cpu() for k in names])
        out.update(zip(names, stacked.tolist()))
    return {k: out[k] for k in metrics}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
