"""Priors measured: NLL on held-out codes, and samples scored against real images (gFID, precision/recall, class
accuracy), with the floor that real training images reach at the same sample size."""

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from vqgen.priors import Prior
from vqgen.stages.artifacts.codes import load_codes, meta_file
from vqgen.stages.artifacts.models import load_prior
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.files import image_grid, save_png
from vqgen.stages.core.progress import progress
from vqgen.stages.evaluation import fid
from vqgen.stages.evaluation.sample_checks import check_samples, compact, pixel_spread
from vqgen.stages.evaluation.settings import EvalData, EvaluateConfig
from vqgen.stages.sampling.config import SamplingConfig, default_cfg_scale
from vqgen.stages.sampling.sampler import check_pair, decode, sample_chunks

Log = Callable[[str], None]


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


@torch.no_grad()
def sample_and_measure(
    prior, tokenizer, cfg: EvaluateConfig, space, classifier, sampling: SamplingConfig | None = None
) -> tuple[dict, torch.Tensor]:
    """Sample cfg.n_samples images with a fixed seed (balanced classes for a conditional prior) with the sampling
    defaults at guidance cfg.cfg_scale, or with `sampling` (benchmarks/prior_sweep.py); return their features,
    class predictions and sampling speed, and the first 100 images for a preview grid."""
    k = prior.config.num_classes
    labels = torch.arange(cfg.n_samples) % k if k else None
    if sampling is None:
        sampling = SamplingConfig(cfg_scale=cfg.cfg_scale if default_cfg_scale(prior) != 1.0 else None)
    sampling = sampling.for_prior(prior)  # the prior's own defaults filled in, as recorded below
    feats, preds, preview, spread, small, seconds = [], [], [], [], [], 0.0
    bar = progress(total=cfg.n_samples, desc=f"{prior.config.prior_type}: sampling", unit="img")
    start = time.perf_counter()
    for _, grids in sample_chunks(prior, cfg.n_samples, cfg.batch_size, labels, sampling, cfg.seed):
        seconds += time.perf_counter() - start
        bar.update(grids.shape[0])
        images = decode(tokenizer, grids)
        if space is not None:
            feats.append(fid.extract_features(space, images, cfg.batch_size))
        if classifier is not None and k == classifier.config.num_classes:
            preds.append(classifier(images.to(next(classifier.parameters()).device)).argmax(1).cpu())
        preview.append(images[: max(0, 100 - sum(p.shape[0] for p in preview))].cpu())
        spread.append(pixel_spread(images))  # for evaluation/sample_checks.py
        small.append(compact(images))
        start = time.perf_counter()
    bar.close()
    out = {
        "tokens_per_s": cfg.n_samples * prior.config.seq_len / max(seconds, 1e-9),
        "sampling_seconds": seconds,
        "feats": torch.cat(feats) if feats else None,
        "labels": labels,
        "preds": torch.cat(preds) if preds else None,
        "cfg_scale": sampling.cfg_scale,
        "temperature": sampling.temperature,
        "spread": torch.cat(spread),
        "compact": torch.cat(small),
    }
    return out, torch.cat(preview)


def nll(
    prior, codes: torch.Tensor, labels: torch.Tensor, batch_size: int, image_dims: int, prefix: str
) -> dict:
    """NLL of (N, h, w) codes, labelled ones conditioned on their label and the rest on the null label."""
    k = prior.config.num_classes
    cond = labels.masked_fill((labels < 0) | (labels >= k), k) if k else None
    r = evaluate_prior(prior, codes, cond, batch_size, image_dims)
    return {
        f"{prefix}_bits_per_token": r["val_bits_per_token"],
        f"{prefix}_bits_per_dim": r["val_bits_per_dim"],
        f"{prefix}_examples": r["val_examples"],
    }


def evaluate_priors(run: Path, tokenizer, ctx: dict, cfg: EvaluateConfig, log: Log) -> tuple[dict, dict]:
    """Every RUN/prior-* folder with weights: {name: metrics}, and {folder: reason} for the ones skipped."""
    codes = load_codes(run / "codes") if meta_file(run / "codes") is not None else None
    tc = tokenizer.config
    image_dims = tc.channels * tc.image_size**2
    results, skipped = {}, {}
    for folder in sorted(p for p in run.glob("prior-*") if p.is_dir()):
        if not (folder / "model.safetensors").is_file():
            skipped[folder.name] = "no model.safetensors (not trained yet?)"
            continue
        try:
            prior = load_prior(folder).to(ctx["device"]).eval()
            check_pair(prior, tokenizer)
        except UserError as exc:
            skipped[folder.name] = str(exc)
            continue
        name = folder.name.removeprefix("prior-")
        log(f"{name}: NLL and {cfg.n_samples} samples...")
        r = {
            "prior_type": prior.config.prior_type,
            "parameters": sum(p.numel() for p in prior.parameters()),
            "conditional": prior.config.num_classes > 0,
        }
        r.update({"val_bits_per_token": None, "val_bits_per_dim": None, "val_examples": 0})
        if codes is not None:
            r.update(nll(prior, codes.val_codes, codes.val_labels, cfg.batch_size, image_dims, "val"))
        r.update({"test_bits_per_token": None, "test_bits_per_dim": None, "test_examples": 0})
        if cfg.test_images:
            r.update(nll(prior, ctx["eval_codes"], ctx["eval_labels"], cfg.batch_size, image_dims, "test"))
        s, preview = sample_and_measure(prior, tokenizer, cfg, ctx["space"], ctx["classifier"])
        save_png(image_grid(preview, nrow=10), run / "eval" / f"samples-{name}.png")
        r.update(
            n_samples=cfg.n_samples,
            cfg_scale=s["cfg_scale"] if r["conditional"] else None,
            temperature=s["temperature"],
            tokens_per_s=s["tokens_per_s"],
            sampling_seconds=s["sampling_seconds"],
        )
        r.update(gfid=None, precision=None, recall=None, class_accuracy=None, worst_class_accuracy=None)
        if s["feats"] is not None:
            r["gfid"] = fid.frechet_distance(ctx["real_feats"], s["feats"])
            r["precision"], r["recall"] = fid.precision_recall(ctx["real_feats"], s["feats"], cfg.pr_k)
        if ctx.get("sample_reference") is not None:
            r.update(check_samples(s["spread"], s["compact"], ctx["sample_reference"]))
        if s["preds"] is not None:
            hit = (s["preds"] == s["labels"]).double()
            r["class_accuracy"] = float(hit.mean())
            r["worst_class_accuracy"] = min(float(hit[s["labels"] == c].mean()) for c in s["labels"].unique())
        results[name] = r
    return results, skipped


def floor(data: EvalData, space, real_feats, cfg: EvaluateConfig) -> dict:
    """What real training images score against the evaluation split: with as many images as each prior samples
    (the floor of gFID, precision and recall) and with as many as the split holds (the floor of rFID), since a
    Fréchet distance estimated from fewer images is biased upwards."""
    if space is None:
        return {
            "fid": None,
            "precision": None,
            "recall": None,
            "n_train_images": 0,
            "rfid": None,
            "n_train_images_rfid": 0,
        }
    n, n_rfid = min(cfg.n_samples, data.train.shape[0]), min(data.eval.shape[0], data.train.shape[0])
    pick = torch.randperm(data.train.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
    feats = fid.extract_features(space, data.train[pick[: max(n, n_rfid)]], cfg.batch_size)
    precision, recall = fid.precision_recall(real_feats, feats[:n], cfg.pr_k)
    return {
        "fid": fid.frechet_distance(real_feats, feats[:n]),
        "precision": precision,
        "recall": recall,
        "n_train_images": n,
        "rfid": fid.frechet_distance(real_feats, feats[:n_rfid]),
        "n_train_images_rfid": n_rfid,
    }


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


def kept_note(results: dict) -> str | None:
    """One line when the saved weights are the best held-out ones from before the last step, else None."""
    if results["kept_step"] == results["steps"]:
        return None
    return (
        f"saved the weights of step {results['kept_step']}, the lowest held-out NLL "
        f"({results['val_bits_per_token']:.3f} bits/token) of the run's {results['steps']} steps "
        "(--keep-last saves the last ones)"
    )
