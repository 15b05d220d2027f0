"""Stage two: train any registered prior on the code grids that stage one wrote.

RUN/codes/                 input: datasets.DatasetDict (train, validation) + vqgen.json
RUN/prior-<name>/          output: config.json + model.safetensors + README.md (the Hub layout),
                           metrics.json (validation NLL in bits per token and per image dimension, and every
                           --eval-every steps in its history),
                           samples/ (a decoded grid per class every --sample-every steps), checkpoints/
"""

import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar

import torch
from vqgen.stages.artifacts.card import note_kept_weights
from vqgen.stages.artifacts.codes import CodeSplits, load_codes
from vqgen.stages.artifacts.runs import locked_command, prepare_run_dir
from vqgen.stages.core.build import build_prior, prior_config_class, sized_options
from vqgen.stages.core.device import check_device_name, resolve_device
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.files import write_json
from vqgen.stages.core.registry import PRIORS
from vqgen.stages.evaluation.priors import best_validation, evaluate_prior, kept_note, overfit_note
from vqgen.stages.reporting.run_plots import write_plots
from vqgen.stages.training.config import PRIOR_TRAINING, TrainConfig
from vqgen.stages.training.distribution import launched_processes
from vqgen.stages.training.preflight import check_fits, check_resume
from vqgen.stages.training.tasks import PriorTask
from vqgen.stages.training.trainer import Trainer


def prior_training(prior: str) -> TrainConfig:
    """train-prior's defaults for the registered prior `prior`: the defaults every prior shares (PRIOR_TRAINING)
    with the settings its config declares it trains best with (its `training`, e.g. the GRU's 56 epochs)."""
    own = prior_config_class(PRIORS.get(prior)).training
    unknown = sorted(set(own) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise UserError(
            f"prior {prior!r} declares training settings that train-prior does not have: {', '.join(unknown)}; "
            "fix the `training` of its config"
        )
    return replace(PRIOR_TRAINING, **own)


@dataclass
class PriorTrainConfig:
    codes: str = "runs/demo/codes"  # stage one's codes folder
    prior: str = "gru"  # registry name
    out: str | None = None  # default: <codes>/../prior-<prior>
    prior_options: dict[str, str] = field(default_factory=dict)  # config fields of the prior, as strings
    size: str | None = None  # a size preset (the prior config's sizes()); prior_options override it
    train: TrainConfig | None = None  # None: the prior's own defaults (`prior_training`)
    eval_batch_size: int = 256
    overwrite: bool = False
    resume: bool = False

    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {"eval_batch_size": (1, 65536)}

    def __post_init__(self):
        if self.train is None:
            self.train = prior_training(self.prior)


def final_results(
    cfg: PriorTrainConfig, trainer: Trainer, model, codes: CodeSplits, tokenizer, seconds
) -> dict:
    """metrics.json's `prior`: the saved model's held-out NLL, which weights were kept and why, the run's speed."""
    image_dims = tokenizer.config.channels * tokenizer.config.image_size**2 if tokenizer else 1
    labels = codes.val_labels if model.config.num_classes else None
    results = evaluate_prior(model, codes.val_codes, labels, cfg.eval_batch_size, image_dims)
    kept = trainer.kept()
    results.update(
        prior=cfg.prior,
        parameters=sum(p.numel() for p in model.parameters()),
        train_seconds=seconds,
        nonfinite_rolled_back=trainer.nonfinite_total,
        steps=trainer.step,
        stopped_early=trainer.stopped_early,
        train_tokens_per_s=trainer.step * cfg.train.batch_size * codes.train_codes[0].numel() / seconds,
        kept=kept,
        kept_step=trainer.best.step if kept == "best" else trainer.step,
    )
    results.update(best_validation(trainer.history, results["val_bits_per_token"], trainer.step))
    return results


def run_tokenizer(codes_dir: Path, codes: CodeSplits):
    """The tokenizer that wrote the codes (codes.json's `tokenizer`, inside the run folder only), or None."""
    from vqgen.stages.artifacts.models import load_tokenizer

    tokenizer_dir = (codes_dir / codes.meta.get("tokenizer", "../tokenizer")).resolve()
    if not tokenizer_dir.is_relative_to(codes_dir.resolve().parent):  # codes.json may only name the run's own
        raise UserError(f"--codes {codes_dir}: its tokenizer path points outside the run folder; refusing it")
    return load_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else None


def save_prior(
    cfg: PriorTrainConfig,
    trainer: Trainer,
    model,
    codes: CodeSplits,
    tokenizer,
    out_dir: Path,
    seconds: float,
) -> dict:
    """Process 0: the prior saved in the Hub layout with its card note, its sample grid, metrics.json, the plots
    and run_config.json; returns metrics.json's `prior`."""
    from vqgen.stages.artifacts.models import save_model

    save_model(model, out_dir)  # each file renamed into place: never half-written
    results = final_results(cfg, trainer, model, codes, tokenizer, seconds)
    note_kept_weights(out_dir / "README.md", results)
    note = (
        overfit_note(results, codes.train_codes.shape[0]) if results["kept"] == "last" else kept_note(results)
    )
    if note:
        trainer.accelerator.print(f"{cfg.prior}: {note}")
    if tokenizer is not None:
        trainer.task.save_samples(model, results["kept_step"], out_dir)  # the grid of the model saved
    write_json({"prior": results, "history": trainer.history}, out_dir / "metrics.json")
    write_plots(out_dir, trainer.history, results)
    codes_dir = os.path.relpath(Path(cfg.codes).resolve(), out_dir.resolve())
    paths = {"out": ".", "codes": codes_dir}  # movable with it
    write_json({**asdict(cfg), "train": asdict(cfg.train), **paths}, out_dir / "run_config.json")
    return results


@locked_command  # the prior folder stays locked while the command runs
def run_train_prior(cfg: PriorTrainConfig) -> dict:
    from accelerate.utils import set_seed

    options = sized_options(cfg.prior, cfg.size, cfg.prior_options)  # an unknown preset: refused first
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
    tokenizer = run_tokenizer(codes_dir, codes)
    processes = launched_processes()
    with torch.device("meta"):  # shapes only: is it too large for the devices, before anything is allocated
        shapes = build_prior(cfg.prior, codes.meta, options)
        check_fits(shapes, processes, cfg.train.device, ema=cfg.train.model_ema_decay > 0)
    if cfg.resume:
        check_resume(out_dir, processes, cfg.train.batch_size)
    set_seed(cfg.train.seed)
    model = build_prior(cfg.prior, codes.meta, options)
    out_dir = prepare_run_dir(out_dir, overwrite=cfg.overwrite, resume=cfg.resume)
    trainer = Trainer(PriorTask(model, codes, tokenizer, cfg.eval_batch_size), cfg.train, out_dir)
    if tokenizer is not None:
        tokenizer.to(trainer.accelerator.device)  # the sample grids decode where the prior samples
    if cfg.resume:
        trainer.accelerator.print(f"resuming from step {trainer.resume()}")
    started = time.perf_counter()
    trainer.fit()
    train_seconds = time.perf_counter() - started
    # the best held-out weights; with --keep-last the last (or their average); sharded: gathered, on process 0
    model = trainer.final_model()
    results: dict = {}
    if trainer.accelerator.is_main_process:
        results = save_prior(cfg, trainer, model, codes, tokenizer, out_dir, train_seconds)
    trainer.accelerator.wait_for_everyone()
    return results
