"""The sweep that chooses the priors' defaults: training variants x sampling settings, scored the way `evaluate`
scores a run (its classifier, its features, its floor), so the winner is what `evaluate` will then report.

For every prior and every training variant (extra `cli.py train-prior` flags; "" is the run's own RUN/prior-NAME,
trained with the defaults if it is missing) it reads the training time and held-out bits/token, then samples
--n-samples class-balanced images (fixed seed) under every combination of guidance scale, temperature, top-k and
guidance schedule, and reports the share the evaluation classifier recognises as the requested class, the worst
class, gFID against the evaluation split and its ratio to the real-image floor, precision and recall, and the
share of near-blank samples and of copies of a training image (`evaluate`'s checks, stages/evaluation/sample_checks.py).

    python -m benchmarks.prior_sweep --run runs/demo --cfg-scales 2 3 4 5 --temperatures 1.0 0.9
    python -m benchmarks.prior_sweep --run runs/demo --priors gru --variants "" "--steps 2400"
    python -m benchmarks.prior_sweep --run runs/demo --test-images ../shared/data/mnist-test

Variant priors are trained into RUN/sweep/prior-NAME-<variant> (kept, reused). Prints a markdown table and writes
benchmarks/results/prior_sweep.json (or --json).
"""

import argparse
import itertools
import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from vqgen.stages.artifacts.codes import load_codes
from vqgen.stages.artifacts.models import load_prior, load_tokenizer
from vqgen.stages.evaluation import fid
from vqgen.stages.evaluation.classifier import eval_classifier
from vqgen.stages.evaluation.priors import floor, nll, sample_and_measure
from vqgen.stages.evaluation.sample_checks import SampleReference, check_samples, run_reference
from vqgen.stages.evaluation.settings import EvaluateConfig, load_eval_data, run_data_config
from vqgen.stages.evaluation.tokenizer import evaluate_tokenizer
from vqgen.stages.sampling.config import SamplingConfig
from vqgen.stages.sampling.sampler import check_pair

from benchmarks.measure import save_result

ROOT = Path(__file__).resolve().parents[1]


def prior_folder(run: Path, name: str, variant: str) -> Path:
    """RUN/prior-NAME for the default variant, RUN/sweep/prior-NAME-<slug of the flags> otherwise; trained here
    through the CLI when it holds no weights yet."""
    if not variant:
        folder = run / f"prior-{name}"
    else:
        slug = re.sub(r"[^A-Za-z0-9.=]+", "_", variant.replace("--", "")).strip("_")
        folder = run / "sweep" / f"prior-{name}-{slug}"
    if not (folder / "model.safetensors").is_file():
        cmd = [
            sys.executable,
            str(ROOT / "cli.py"),
            "train-prior",
            "--prior",
            name,
            "--codes",
            str(run / "codes"),
        ]
        cmd += ["--out", str(folder), "--overwrite", *shlex.split(variant)]
        print(f"training: {' '.join(cmd[2:])}", flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return folder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--priors", nargs="+", default=["gru", "pixelcnn", "transformer"])
    parser.add_argument(
        "--variants", nargs="+", default=[""], help='extra train-prior flags; "" = the defaults'
    )
    parser.add_argument("--cfg-scales", nargs="+", type=float, default=[3.0])
    parser.add_argument("--temperatures", nargs="+", type=float, default=[1.0])
    parser.add_argument("--top-k", nargs="+", type=int, default=[0], help="0 = no top-k")
    parser.add_argument("--schedules", nargs="+", default=["constant"])
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--test-images", default=None)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


@dataclass
class Judge:
    """What `evaluate` scores samples with: its settings, data, classifier, feature space and real-image floor."""

    cfg: EvaluateConfig
    data: Any
    classifier: torch.nn.Module
    clf_info: dict
    space: Any
    real_feats: torch.Tensor
    ground: dict
    reference: SampleReference  # what near-blank and copy mean here


def judge(run: Path, args: argparse.Namespace, tokenizer) -> Judge:
    cfg = EvaluateConfig(run_dir=str(run), test_images=args.test_images, n_samples=args.n_samples)
    data = load_eval_data(cfg, run_data_config(run))
    torch.manual_seed(cfg.seed)
    classifier, clf_info = eval_classifier(run, data, cfg, print)
    space = fid.choose_space("classifier", torch.device("cpu"), classifier, f"classifier-{data.dataset_tag}")
    real_feats = fid.extract_features(space, data.eval, cfg.batch_size)
    ground = floor(data, space, real_feats, cfg)
    print(f"floor (real training images vs {data.eval_name}): FD {ground['fid']:.3f}", flush=True)
    _, eval_codes = evaluate_tokenizer(tokenizer, data.eval.batches(cfg.batch_size), cfg.batch_size)
    reference = run_reference(tokenizer, data.train, eval_codes, cfg.batch_size, cfg.seed)
    return Judge(cfg, data, classifier, clf_info, space, real_feats, ground, reference)


def score_setting(j: Judge, prior, tokenizer, sampling: SamplingConfig) -> dict:
    """Class accuracy (overall and of the worst class), gFID (and over the floor), precision and recall, near-blank
    and copy shares of --n-samples images sampled with `sampling`."""
    started = time.perf_counter()
    s, _ = sample_and_measure(prior, tokenizer, j.cfg, j.space, j.classifier, sampling)
    hit = (s["preds"] == s["labels"]).double()
    gfid = fid.frechet_distance(j.real_feats, s["feats"])
    precision, recall = fid.precision_recall(j.real_feats, s["feats"], j.cfg.pr_k)
    checks = check_samples(s["spread"], s["compact"], j.reference)
    return {
        "class_accuracy": float(hit.mean()),
        "worst_class_accuracy": min(float(hit[s["labels"] == c].mean()) for c in s["labels"].unique()),
        "gfid": gfid,
        "gfid_over_floor": gfid / j.ground["fid"],
        "precision": precision,
        "recall": recall,
        "near_blank_share": checks["near_blank_share"],
        "copy_share": checks["copy_share"],
        "nearest_train_rms_min": checks["nearest_train_rms_min"],
        "nearest_train_rms_median": checks["nearest_train_rms_median"],
        "seconds": time.perf_counter() - started,
    }


def sweep_prior(
    j: Judge, run: Path, name: str, variant: str, args: argparse.Namespace, tokenizer, codes
) -> list:
    """One row per sampling setting of the prior NAME trained with `variant`'s flags."""
    folder = prior_folder(run, name, variant)
    prior = load_prior(folder).eval()
    check_pair(prior, tokenizer)
    trained = json.loads((folder / "metrics.json").read_text())["prior"]
    image_dims = tokenizer.config.channels * tokenizer.config.image_size**2
    bits = nll(prior, codes.val_codes, codes.val_labels, j.cfg.batch_size, image_dims, "val")[
        "val_bits_per_token"
    ]
    rows = []
    for scale, temperature, top_k, schedule in itertools.product(
        args.cfg_scales, args.temperatures, args.top_k, args.schedules
    ):
        sampling = SamplingConfig(
            cfg_scale=scale, temperature=temperature, top_k=top_k or None, cfg_schedule=schedule
        )
        row = {
            "prior": name,
            "variant": variant or "defaults",
            "train_seconds": trained["train_seconds"],
            "steps": trained.get("steps"),
            "val_bits_per_token": bits,
            "cfg_scale": scale,
            "temperature": temperature,
            "top_k": top_k or None,
            "schedule": schedule,
        }
        row.update(score_setting(j, prior, tokenizer, sampling))
        rows.append(row)
        print(
            f"{name:12s} {row['variant']:16s} scale {scale:4.1f} T {temperature:4.2f} top-k {top_k or '-':>4} "
            f"{schedule:8s}  acc {row['class_accuracy']:.1%} worst {row['worst_class_accuracy']:.1%} "
            f"gFID {row['gfid']:.3f} ({row['gfid_over_floor']:.1f}x floor) P {row['precision']:.2f} "
            f"R {row['recall']:.2f} blank {row['near_blank_share']:.1%} copies {row['copy_share']:.1%}",
            flush=True,
        )
    return rows


def print_table(j: Judge, rows: list[dict]) -> None:
    ref = j.reference.summary
    print(
        f"\nfeatures classifier-{j.data.dataset_tag}; evaluation split: {j.data.eval_name}; "
        f"floor FD {j.ground['fid']:.3f} ({j.ground['n_train_images']} real training images); near-blank: pixel "
        f"spread under {ref['blank_threshold']:.4f}; copy: nearer a training image than {ref['copy_threshold']:.4f} "
        f"RMS (the held-out reconstructions: nearest at {ref['eval_nearest_train_rms_min']:.4f} at least, "
        f"{ref['eval_nearest_train_rms_median']:.4f} in the median)\n"
    )
    print(
        "| prior | variant | train s | bits/token | scale | T | top-k | schedule | class acc | worst | gFID "
        "| / floor | P | R | near-blank | copies | nearest training image (min) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['prior']} | {r['variant']} | {r['train_seconds']:.0f} | {r['val_bits_per_token']:.3f} | "
            f"{r['cfg_scale']:g} | {r['temperature']:g} | {r['top_k'] or '-'} | {r['schedule']} | "
            f"{r['class_accuracy']:.1%} | {r['worst_class_accuracy']:.1%} | {r['gfid']:.3f} | "
            f"{r['gfid_over_floor']:.1f}x | {r['precision']:.2f} | {r['recall']:.2f} | {r['near_blank_share']:.1%} | "
            f"{r['copy_share']:.1%} | {r['nearest_train_rms_min']:.4f} |"
        )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    run = args.run
    tokenizer = load_tokenizer(run / "tokenizer").eval()
    j = judge(run, args, tokenizer)
    codes = load_codes(run / "codes")
    rows = []
    for name, variant in itertools.product(args.priors, args.variants):
        rows += sweep_prior(j, run, name, variant, args, tokenizer, codes)
    print_table(j, rows)
    result = {
        "run": str(run),
        "evaluation": asdict(j.cfg),
        "eval_split": j.data.eval_name,
        "floor": j.ground,
        "sample_checks": j.reference.summary,
        "classifier": j.clf_info,
        "torch": torch.__version__,
        "rows": rows,
    }
    save_result(result, args.json or ROOT / "benchmarks" / "results" / "prior_sweep.json")
    return result


if __name__ == "__main__":
    main()
