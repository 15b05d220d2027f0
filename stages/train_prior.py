"""Stage two: train any registered prior on the code grids that stage one wrote.

RUN/codes/                 input: datasets.DatasetDict (train, validation) + vqgen.json
RUN/prior-<name>/          output: config.json + model.safetensors + README.md (the Hub layout),
                           metrics.json (validation NLL in bits per token and per image dimension),
                           samples/ (a decoded grid per class every --sample-every steps), checkpoints/
"""

import json
import math
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from priors import Prior, get_prior_class
from stages import metrics as M
from stages.errors import UserError, one_line, read_json_object
from stages.options import parse_options
from stages.runs import prepare_run_dir
from stages.trainer import TrainConfig, Trainer

CODES_META = "vqgen.json"
META_FIELDS = {
    "vocab_size": int,
    "grid_height": int,
    "grid_width": int,
    "num_classes": int,
    "tokenizer_fingerprint": str,
}


@dataclass
class PriorTrainConfig:
    codes: str = "runs/demo/codes"  # stage one's codes folder
    prior: str = "gru"  # registry name
    out: str | None = None  # default: <codes>/../prior-<prior>
    prior_options: dict[str, str] = field(default_factory=dict)  # config fields of the prior, as strings
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=1200, lr=2e-3, batch_size=64, weight_decay=0.01)
    )
    eval_batch_size: int = 256
    overwrite: bool = False
    resume: bool = False


@dataclass
class CodeSplits:
    train_codes: torch.Tensor  # (N, H, W) long
    train_labels: torch.Tensor  # (N,) long, -1 where unlabelled
    val_codes: torch.Tensor
    val_labels: torch.Tensor
    meta: dict  # vqgen.json: vocab_size, grid_height, grid_width, num_classes, tokenizer_fingerprint, ...


def load_codes(path: Path) -> CodeSplits:
    from datasets import load_from_disk

    path = Path(path)
    meta_file = path / CODES_META
    if not meta_file.is_file():
        raise UserError(
            f"--codes {path}: no {CODES_META} here; give the codes folder written by `cli.py tokenize`"
        )
    meta = read_codes_meta(meta_file)
    try:
        dd = load_from_disk(str(path))
        if not {"train", "validation"} <= set(dd):
            raise ValueError(f"splits {sorted(dd)}, expected train and validation")
    except Exception as exc:
        raise UserError(f"--codes {path}: cannot read the codes dataset ({one_line(exc)})") from None

    def arrays(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows = dd[split].with_format("numpy")[:]
        return torch.as_tensor(np.asarray(rows["codes"]), dtype=torch.long), torch.as_tensor(
            np.asarray(rows["label"]), dtype=torch.long
        )

    return CodeSplits(*arrays("train"), *arrays("validation"), meta)


def read_codes_meta(meta_file: Path) -> dict:
    """vqgen.json, checked: valid JSON holding every field a prior is built from, each of the right type."""
    meta = read_json_object(meta_file, f"--codes: {meta_file}")
    for key, kind in META_FIELDS.items():
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise UserError(
                f"--codes: {meta_file} field {key} should be a {'non-negative int' if kind is int else kind.__name__}, "
                f"got {json.dumps(value)}; rewrite the codes with `cli.py tokenize`"
            )
    if not isinstance(meta.get("tokenizer", ""), str):
        raise UserError(f"--codes: {meta_file} field tokenizer should be a relative path (str)")
    return meta


def prior_config_class(cls: type[Prior]) -> type:
    """The dataclass a prior's __init__ takes (its `config` annotation)."""
    return typing.get_type_hints(cls.__init__)["config"]


def build_prior(name: str, meta: dict, options: dict[str, str]) -> Prior:
    cls = get_prior_class(name)
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

    def __init__(self, model: Prior, codes: CodeSplits, tokenizer=None):
        self.model, self.codes, self.tokenizer = model, codes, tokenizer
        self.conditional = model.config.num_classes > 0

    def num_examples(self) -> int:
        return self.codes.train_codes.shape[0]

    def get_batch(self, indices: torch.Tensor, device: torch.device):
        labels = self.codes.train_labels[indices].to(device) if self.conditional else None
        return self.codes.train_codes[indices].to(device), labels

    def compute_loss(self, model, batch):
        codes, labels = batch
        out = model(codes, labels)
        return out.loss, out, {"bits_per_token": float(out.loss.detach()) / math.log(2)}

    def save_samples(self, model: Prior, step: int, run_dir: Path) -> None:
        if self.tokenizer is None:
            return
        from stages.generate import class_grid_labels, decode_grid

        labels = class_grid_labels(model.config.num_classes, per_class=8) if self.conditional else None
        n = labels.numel() if labels is not None else 64
        grids = model.sample(
            n,
            labels=labels,
            cfg_scale=3.0 if self.conditional else 1.0,
            generator=torch.Generator(device=model.device).manual_seed(0),
        )
        M.save_png(
            decode_grid(self.tokenizer, grids, nrow=8), Path(run_dir) / "samples" / f"samples_{step:07d}.png"
        )


@torch.no_grad()
def evaluate_prior(
    model: Prior, codes: torch.Tensor, labels: torch.Tensor | None, batch_size: int, image_dims: int
) -> dict:
    """Validation NLL (no label dropout) in nats and bits per token, and bits per image dimension."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, codes.shape[0], batch_size):
        c = codes[i : i + batch_size].to(model.device)
        lab = labels[i : i + batch_size].to(model.device) if labels is not None else None
        total += float(model(c, lab).loss) * c.numel()
        count += c.numel()
    nats = total / max(count, 1)
    tokens = codes.shape[1] * codes.shape[2]
    return {
        "val_nll_nats_per_token": nats,
        "val_bits_per_token": nats / math.log(2),
        "val_bits_per_dim": nats / math.log(2) * tokens / image_dims,
        "val_examples": int(codes.shape[0]),
    }


def run_train_prior(cfg: PriorTrainConfig) -> dict:
    from accelerate.utils import set_seed

    from stages.hub import load_tokenizer, save_model

    codes_dir = Path(cfg.codes)
    codes = load_codes(codes_dir)
    # beside the codes folder, resolved first: `--codes .` or `--codes ..` must not put the prior inside it
    out_dir = Path(cfg.out) if cfg.out else codes_dir.resolve().parent / f"prior-{cfg.prior}"
    tokenizer_dir = (codes_dir / codes.meta.get("tokenizer", "../tokenizer")).resolve()
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else None
    set_seed(cfg.train.seed)
    model = build_prior(cfg.prior, codes.meta, cfg.prior_options)
    out_dir = prepare_run_dir(out_dir, overwrite=cfg.overwrite, resume=cfg.resume)
    trainer = Trainer(PriorTask(model, codes, tokenizer), cfg.train, out_dir)
    if cfg.resume:
        trainer.accelerator.print(f"resuming from step {trainer.resume()}")
    started = time.perf_counter()
    trainer.fit()
    train_seconds = time.perf_counter() - started
    results: dict = {}
    if trainer.accelerator.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model)
        save_model(model, out_dir)  # each file renamed into place: never half-written
        image_dims = tokenizer.config.channels * tokenizer.config.image_size**2 if tokenizer else 1
        labels = codes.val_labels if model.config.num_classes else None
        results = evaluate_prior(model, codes.val_codes, labels, cfg.eval_batch_size, image_dims)
        results.update(
            prior=cfg.prior, parameters=sum(p.numel() for p in model.parameters()), train_seconds=train_seconds,
            train_tokens_per_s=cfg.train.steps * cfg.train.batch_size * codes.train_codes[0].numel() / train_seconds,
        )  # fmt: skip
        if tokenizer is not None:
            trainer.task.save_samples(model, cfg.train.steps, out_dir)
        M.write_json({"prior": results, "history": trainer.history}, out_dir / "metrics.json")
        M.write_json({**asdict(cfg), "train": asdict(cfg.train)}, out_dir / "run_config.json")
    trainer.accelerator.wait_for_everyone()
    return results
