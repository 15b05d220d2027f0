"""Does the GAN plugin make the tokenizer's reconstructions sharper? Train the default tokenizer with and without
`--plugin gan` for the same steps and seeds, then score both on the MNIST test split (10,000 digits none of which
the embedded training set holds): PSNR, SSIM, sharpness_ratio (mean gradient magnitude of the
reconstructions over that of the originals; 1.0 = as sharp as the input, blur scores lower) and
edge_sharpness_ratio (the same ratio over the originals' edge pixels only, so that faint noise in the flat
background, which raises the first measure, does not count).

    python -m benchmarks.gan_quality                          # the CLI's default steps x seeds 0 1 2 x 2
    python -m benchmarks.gan_quality --steps 20 --seeds 0     # a quick check that it runs
    python -m benchmarks.gan_quality --gan-opt weight=0.2     # try a plugin option

Each run goes through the CLI (`python cli.py tokenize ...`) in its own process. Prints a markdown table and
writes JSON (default benchmarks/results/gan_quality.json).
"""

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from vqgen.stages.artifacts.models import load_tokenizer
from vqgen.stages.data.eval_images import read_idx
from vqgen.stages.evaluation.tokenizer import evaluate_tokenizer

ROOT = Path(__file__).resolve().parents[1]

METRICS = ("psnr", "ssim", "sharpness_ratio", "edge_sharpness_ratio")


def load_mnist_test(folder: Path) -> torch.Tensor:
    """(10000, 1, 28, 28) uint8 from the gzip IDX file (see SOURCE.md in that folder)."""
    path = Path(folder) / "t10k-images-idx3-ubyte.gz"
    if not path.is_file():
        sys.exit(f"error: {path} not found; pass --mnist-test FOLDER")
    return torch.from_numpy(read_idx(path).copy())[:, None]


def train(run_dir: Path, steps: int | None, seed: int, extra: list[str]) -> float:
    """One `cli.py tokenize` run; returns its wall time in seconds. Its output goes to run_dir.log."""
    cmd = [sys.executable, str(ROOT / "cli.py"), "tokenize", "--run", str(run_dir), "--seed", str(seed)]
    cmd += [*(["--steps", str(steps)] if steps else []), "--sample-every", "0", "--overwrite", *extra]
    log = run_dir.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-5:]
        sys.exit(f"error: {shlex.join(cmd)} failed ({proc.returncode}):\n" + "\n".join(tail))
    return time.perf_counter() - start


def evaluate(run_dir: Path, pixels: torch.Tensor) -> dict:
    """Test-split metrics of a finished run, plus what its training history says about stability."""
    model = load_tokenizer(run_dir / "tokenizer")
    scores, _ = evaluate_tokenizer(model, pixels)
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    last = history[-1] if history else {}
    run_config = json.loads((run_dir / "run_config.json").read_text())
    return {
        "steps": run_config["train"]["steps"],
        **{k: scores[k] for k in (*METRICS, "codebook_usage")},
        "nonfinite_skipped": int(max((h.get("nonfinite_skipped", 0) for h in history), default=0)),
        "gan_events": {k[4:]: int(v) for k, v in last.items() if k.startswith("gan_")},
    }


def summarise(runs: list[dict]) -> dict:
    out: dict = {}
    for variant in ("baseline", "gan"):
        rows = [r for r in runs if r["variant"] == variant]
        out[variant] = {
            k: {"mean": statistics.fmean(r[k] for r in rows), "std": statistics.pstdev(r[k] for r in rows)}
            for k in METRICS
        }
    out["delta"] = {k: out["gan"][k]["mean"] - out["baseline"][k]["mean"] for k in METRICS}
    for metric in ("sharpness_ratio", "edge_sharpness_ratio"):
        pairs = {r["seed"]: {} for r in runs}
        for r in runs:
            pairs[r["seed"]][r["variant"]] = r[metric]
        out[f"gan_higher_{metric}_every_seed"] = all(p["gan"] > p["baseline"] for p in pairs.values())
    out["any_nonfinite"] = any(r["nonfinite_skipped"] for r in runs)
    return out


def table(runs: list[dict], summary: dict) -> str:
    lines = [
        "| seed | variant | PSNR (dB) | SSIM | sharpness ratio | edge sharpness ratio | non-finite skipped | GAN events |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in runs:
        events = ", ".join(f"{k} {v}" for k, v in r["gan_events"].items() if v) or "-"
        lines.append(
            f"| {r['seed']} | {r['variant']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['sharpness_ratio']:.4f} "
            f"| {r['edge_sharpness_ratio']:.4f} | {r['nonfinite_skipped']} | {events} |"
        )
    for variant in ("baseline", "gan"):
        s = summary[variant]
        cells = " | ".join(f"{s[k]['mean']:.4g} ± {s[k]['std']:.2g}" for k in METRICS)
        lines.append(f"| mean | {variant} | {cells} | | |")
    d = summary["delta"]
    lines.append(
        f"| delta | gan - baseline | {d['psnr']:+.3f} | {d['ssim']:+.4f} | {d['sharpness_ratio']:+.4f} "
        f"| {d['edge_sharpness_ratio']:+.4f} | | |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, help="training steps per run (default: the CLI's default)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "gan_quality.json")
    parser.add_argument("--mnist-test", type=Path, default=ROOT.parent / "shared" / "data" / "mnist-test")
    parser.add_argument(
        "--gan-opt", action="append", default=[], help="a GAN option OPTION=VALUE (repeatable)"
    )
    parser.add_argument("--tokenize-args", default="", help="extra `cli.py tokenize` flags for both variants")
    parser.add_argument("--runs-dir", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()

    pixels = load_mnist_test(args.mnist_test)
    extra = shlex.split(args.tokenize_args)
    variants = {
        "baseline": extra,
        "gan": [*extra, "--plugin", "gan", *[a for o in args.gan_opt for a in ("--plugin-opt", f"gan.{o}")]],
    }
    runs = []
    with tempfile.TemporaryDirectory(prefix="gan_quality_") as tmp:
        root = args.runs_dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for variant, flags in variants.items():
                run_dir = root / f"{variant}-seed{seed}"
                seconds = train(run_dir, args.steps, seed, flags)
                runs.append(
                    {"seed": seed, "variant": variant, "train_seconds": seconds, **evaluate(run_dir, pixels)}
                )
                print(
                    f"seed {seed} {variant}: " + ", ".join(f"{k} {runs[-1][k]:.4f}" for k in METRICS),
                    flush=True,
                )
    summary = summarise(runs)
    print(table(runs, summary))
    result = {
        "steps": sorted({r["steps"] for r in runs}),
        "seeds": args.seeds,
        "gan_options": args.gan_opt,
        "tokenize_args": extra,
        "eval": f"MNIST test split, {pixels.shape[0]} images",
        "runs": runs,
        "summary": summary,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
