"""Stage two: train any registered prior on the code grids that stage one wrote.

RUN/codes/                 input: datasets.DatasetDict (train, validation) + vqgen.json
RUN/prior-<name>/          output: config.json + model.safetensors + README.md (the Hub layout),
                           metrics.json (validation NLL in bits per token and per image dimension, and every
                           --eval-every steps in its history),
                           samples/ (a decoded grid per class every --sample-every steps), checkpoints/
"""

import math
import time
import typing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from vqgen.priors import Prior
from vqgen.stages.artifacts.card import note_kept_weights
from vqgen.stages.artifacts.codes import CodeSplits, load_codes
from vqgen.stages.artifacts.runs import locked_command, prepare_run_dir
from vqgen.stages.core.device import check_device_name, resolve_device
from vqgen.stages.core.errors import UserError, one_line
from vqgen.stages.core.files import save_png, write_json
from vqgen.stages.core.options import parse_options
from vqgen.stages.core.registry import PRIORS
from vqgen.stages.evaluation.priors import evaluate_prior
from vqgen.stages.sampling.config import SamplingConfig
from vqgen.stages.sampling.sampler import class_grid_labels, decode_grid
from vqgen.stages.training.config import PRIOR_TRAINING, TrainConfig
from vqgen.stages.training.trainer import Trainer


@dataclass
class PriorTrainConfig:
    codes: str = "runs/demo/codes"  # stage one's codes folder
    prior: str = "gru"  # registry name
    out: str | None = None  # default: <codes>/../prior-<prior>
    prior_options: dict[str, str] = field(default_factory=dict)  # config fields of the prior, as strings
    train: TrainConfig = field(default_factory=lambda: replace(PRIOR_TRAINING))
    eval_batch_size: int = 256
    overwrite: bool = False
    resume: bool = False


def prior_config_class(cls: type[Prior]) -> type:
    """The dataclass a prior's __init__ takes (its `config` annotation)."""
    return typing.get_type_hints(cls.__init__)["config"]


def build_prior(name: str, meta: dict, options: dict[str, str]) -> Prior:
    cls = PRIORS.get(name)
    fixed = {
        "prior_type": name,
        "vocab_size": meta["vocab_size"],
        "grid_height": meta["grid_height"],
        "grid_width": meta["grid_width"],
        "num_classes": meta["num_classes"],
        "tokenizer_fingerprint": meta["tokenizer_fingerprint"],
    }
    for key in options:
        if key in fixed:
            raise UserError(f"--prior-opt {key} comes from the codes and cannot be set")
    try:
        config = parse_options(f"prior {name!r}", prior_config_class(cls), options, **fixed)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    try:
        return cls(config)
    except Exception as exc:  # right types, but no model: a negative size, heads that do not divide, ...
        raise UserError(f"prior {name!r}: these options make no valid model ({one_line(exc)})") from None


class PriorTask:
    """What the trainer needs from stage two (stages/trainer.py: TrainTask)."""

    stage = "prior"
    progress_keys = ("bits_per_token",)
    best_metric = (
        "val_bits_per_token"  # the trainer keeps the weights that score lowest on the held-out codes
    )

    def __init__(self, model: Prior, codes: CodeSplits, tokenizer=None, eval_batch_size: int = 256):
        self.model, self.codes, self.tokenizer = model, codes, tokenizer
        self.conditional = model.config.num_classes > 0
        self.eval_batch_size = eval_batch_size

    def num_examples(self) -> int:
        return self.codes.train_codes.shape[0]

    def get_batch(self, indices: torch.Tensor, device: torch.device):
        """(codes (B, H, W), labels (B,) or None); with augmented views the codes of every view, (V, B, H, W),
        of which `augment` draws one per image."""
        labels = self.codes.train_labels[indices].to(device) if self.conditional else None
        if self.codes.train_views is not None:
            return self.codes.train_views[:, indices].to(device), labels
        return self.codes.train_codes[indices].to(device), labels

    def augment(self, batch, seed: int, micro_batch: int):
        """One view per image, drawn from a generator seeded from (seed, micro-batch): exact on resume, and the
        global random stream (dropout, label dropout) is the same as without views."""
        if self.codes.train_views is None:
            return batch
        views, labels = batch  # (V, B, H, W)
        generator = torch.Generator().manual_seed((seed * 1_000_003 + micro_batch) % (2**63))
        pick = torch.randint(0, views.shape[0], (views.shape[1],), generator=generator).to(views.device)
        return views[pick, torch.arange(views.shape[1], device=views.device)], labels  # (B, H, W)

    def compute_loss(self, model, batch):
        codes, labels = batch
        out = model(codes, labels)
        return out.loss, out, {"bits_per_token": out.loss.detach() / math.log(2)}  # read back at log steps

    def validate(self, model: Prior) -> dict[str, float]:
        """The held-out NLL of the weights as they are now (every --eval-every steps)."""
        labels = self.codes.val_labels if self.conditional else None
        scores = evaluate_prior(model, self.codes.val_codes, labels, self.eval_batch_size, image_dims=1)
        return {"val_bits_per_token": scores["val_bits_per_token"]}

    def save_samples(self, model: Prior, step: int, run_dir: Path) -> None:
        if self.tokenizer is None:
            return
        labels = class_grid_labels(model.config.num_classes, per_class=8) if self.conditional else None
        n = labels.numel() if labels is not None else 64
        defaults = SamplingConfig().for_prior(model).prior_kwargs()  # the prior's own, as `generate` uses
        grids = model.sample(
            n,
            labels=labels,
            **defaults,
            generator=torch.Generator(device=model.device).manual_seed(0),
        )
        save_png(
            decode_grid(self.tokenizer, grids, nrow=8), Path(run_dir) / "samples" / f"samples_{step:07d}.png"
        )


def best_validation(history: list[dict], final_bits: float, final_step: int) -> dict:
    """The step with the lowest held-out NLL among the --eval-every scores in `history` and the final one."""
    curve = [(h["step"], h["val_bits_per_token"]) for h in history if "val_bits_per_token" in h]
    step, bits = min([*curve, (final_step, final_bits)], key=lambda point: point[1])
    return {"best_val_step": step, "best_val_bits_per_token": bits}


OVERFIT_MARGIN = 0.05  # the final held-out NLL this much (relative) above the best one: the prior overfits


def overfit_note(results: dict, train_examples: int) -> str | None:
    """One line when the held-out NLL rose well above its best during training, else None."""
    best, final = results["best_val_bits_per_token"], results["val_bits_per_token"]
    if final <= best * (1 + OVERFIT_MARGIN):
        return None
    return (
        f"warning: the held-out NLL was lowest at step {results['best_val_step']} ({best:.3f} bits/token) and ends "
        f"at {final:.3f}: the prior overfits its {train_examples:,} training grids; train fewer steps "
        f"(--steps {results['best_val_step']}) or on more data"
    )


def final_results(
    cfg: PriorTrainConfig, trainer: Trainer, model: Prior, codes: CodeSplits, tokenizer, seconds
):
    """metrics.json's `prior`: the saved model's held-out NLL, which weights were kept and why, the run's speed."""
    image_dims = tokenizer.config.channels * tokenizer.config.image_size**2 if tokenizer else 1
    labels = codes.val_labels if model.config.num_classes else None
    results = evaluate_prior(model, codes.val_codes, labels, cfg.eval_batch_size, image_dims)
    kept = trainer.kept()
    results.update(
        prior=cfg.prior, parameters=sum(p.numel() for p in model.parameters()), train_seconds=seconds,
        nonfinite_rolled_back=trainer.nonfinite_total, steps=trainer.step, stopped_early=trainer.stopped_early,
        train_tokens_per_s=trainer.step * cfg.train.batch_size * codes.train_codes[0].numel() / seconds,
        kept=kept, kept_step=trainer.best.step if kept == "best" else trainer.step,
    )  # fmt: skip
    results.update(best_validation(trainer.history, results["val_bits_per_token"], trainer.step))
    return results


def kept_note(results: dict) -> str | None:
    """One line when the saved weights are the best held-out ones from before the last step, else None."""
    if results["kept_step"] == results["steps"]:
        return None
    return (
        f"saved the weights of step {results['kept_step']}, the lowest held-out NLL "
        f"({results['val_bits_per_token']:.3f} bits/token) of the run's {results['steps']} steps "
        "(--keep-last saves the last ones)"
    )


@locked_command  # the prior folder stays locked while the command runs
def run_train_prior(cfg: PriorTrainConfig) -> dict:
    from accelerate.utils import set_seed
    from vqgen.stages.artifacts.models import load_tokenizer, save_model

    check_device_name(cfg.train.device)
    if cfg.train.patience and not cfg.train.eval_every:
        raise UserError(
            f"--patience {cfg.train.patience} counts held-out scorings: give --eval-every N (N > 0)"
        )
    if cfg.train.device != "auto":
        resolve_device(cfg.train.device)  # a device that is not here: refused before anything is read
    codes_dir = Path(cfg.codes)
    codes = load_codes(codes_dir)
    if cfg.train.patience and codes.val_codes.shape[0] == 0:
        raise UserError(f"--patience: {codes_dir} holds no held-out codes (its validation split is empty)")
    # beside the codes folder, resolved first: `--codes .` or `--codes ..` must not put the prior inside it
    out_dir = Path(cfg.out) if cfg.out else codes_dir.resolve().parent / f"prior-{cfg.prior}"
    tokenizer_dir = (codes_dir / codes.meta.get("tokenizer", "../tokenizer")).resolve()
    if not tokenizer_dir.is_relative_to(codes_dir.resolve().parent):  # codes.json may only name the run's own
        raise UserError(f"--codes {codes_dir}: its tokenizer path points outside the run folder; refusing it")
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else None
    set_seed(cfg.train.seed)
    model = build_prior(cfg.prior, codes.meta, cfg.prior_options)
    out_dir = prepare_run_dir(out_dir, overwrite=cfg.overwrite, resume=cfg.resume)
    trainer = Trainer(PriorTask(model, codes, tokenizer, cfg.eval_batch_size), cfg.train, out_dir)
    if tokenizer is not None:
        tokenizer.to(trainer.accelerator.device)  # the sample grids decode where the prior samples
    if cfg.resume:
        trainer.accelerator.print(f"resuming from step {trainer.resume()}")
    started = time.perf_counter()
    trainer.fit()
    train_seconds = time.perf_counter() - started
    results: dict = {}
    if trainer.accelerator.is_main_process:
        model = (
            trainer.final_model()
        )  # the best held-out weights; with --keep-last the last (or their average)
        save_model(model, out_dir)  # each file renamed into place: never half-written
        results = final_results(cfg, trainer, model, codes, tokenizer, train_seconds)
        note_kept_weights(out_dir / "README.md", results)
        note = (
            overfit_note(results, codes.train_codes.shape[0])
            if results["kept"] == "last"
            else kept_note(results)
        )
        if note:
            trainer.accelerator.print(f"{cfg.prior}: {note}")
        if tokenizer is not None:
            trainer.task.save_samples(model, results["kept_step"], out_dir)  # the grid of the model saved
        write_json({"prior": results, "history": trainer.history}, out_dir / "metrics.json")
        write_json({**asdict(cfg), "train": asdict(cfg.train)}, out_dir / "run_config.json")
    trainer.accelerator.wait_for_everyone()
    return results
