"""VQ-VAE against VQGAN on RGB images for the same wall-clock training budget, each with and without the GAN plugin.

    python -m benchmarks.rgb_data --out data/emoji
    python -m benchmarks.rgb_compare --data data/emoji --image-size 32 --budget-s 120 \
        --archs vqvae vqgan vqvae+gan vqgan+gan [--keep runs/rgb32] [--json OUT.json]
    python -m benchmarks.rgb_compare --data data/emoji --image-size 32 --steps 221 --archs vqvae vqgan
    python -m benchmarks.rgb_compare --data data/emoji --image-size 32 --steps 1200 --archs vqvae vqvae+gan \
        --plugin-opt gan.min_adaptive_weight=0.02 --seeds 0 1 2

Each tokenizer of `--archs` (an architecture or preset name, optionally with config fields changed and plugins
added: `vqgan:base_channels=32`, `vqvae+gan`) is trained on the folder's training split by `tokenize`'s own code
(run_tokenize, 64 images a step unless `--batch-size`) for as many steps as fit `--budget-s`: a short calibration
run measures its training images/s first. A `+plugin` variant takes the steps of its plain architecture (the
same schedule, plus the plugin's cost). With `--steps`, every tokenizer trains that many steps instead (quality
per step, not per second). Then, on the held-out split (test/ of rgb_data.py's folder, never trained on): PSNR,
SSIM, edge sharpness, codebook usage and perplexity, and rFID in the features of the classifier `evaluate` trains
on the folder's classes (trained once here, named in the output); `--grid` writes the reconstructions. On a
shared machine the budget buys each model whatever the load leaves it, so compare figures from one run, and repeat
it before drawing conclusions. `--plugin-opt` sets plugin fields for every spec that has the plugin (as
`tokenize --plugin-opt`); `--seeds` trains every spec once per seed and adds a table of the means and spreads.
"""

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from vqgen.stages.artifacts.models import load_tokenizer
from vqgen.stages.commands.tokenize import TokenizeConfig, run_tokenize
from vqgen.stages.core.build import tokenizer_config
from vqgen.stages.core.files import image_grid, save_png
from vqgen.stages.core.options import parse_options
from vqgen.stages.data.images import DataConfig, to_float
from vqgen.stages.evaluation import fid
from vqgen.stages.evaluation.classifier import eval_classifier
from vqgen.stages.evaluation.settings import EvaluateConfig, load_eval_data
from vqgen.stages.evaluation.tokenizer import evaluate_tokenizer
from vqgen.stages.training.config import TOKENIZER_TRAINING

from benchmarks.measure import machine_info, save_result

ROOT = Path(__file__).resolve().parents[1]

BATCH = 64
CALIBRATION_STEPS = 10
GRID_IMAGES = 8  # held-out images in the reconstruction grid: one row each for the originals and every spec


def arch_config(spec: str):
    """'vqgan:base_channels=32,num_res_blocks=2+gan' -> (name, the preset's config with those fields, plugins)."""
    spec, *plugins = spec.split("+")
    name, _, fields = spec.partition(":")
    config = tokenizer_config(name, {}, {})
    if fields:
        options = dict(item.split("=", 1) for item in fields.split(","))
        config = parse_options(name, type(config), options, **vars(config))
    return name, config, plugins


def train(
    spec: str,
    data: Path,
    size: int,
    steps: int,
    run_dir: Path,
    batch: int = BATCH,
    seed: int = 0,
    plugin_options: tuple[str, ...] = (),
) -> dict:
    name, model, plugins = arch_config(spec)
    options = [o for o in plugin_options if o.split(".", 1)[0] in plugins]
    training = replace(
        TOKENIZER_TRAINING, steps=steps, batch_size=batch, sample_every=0, checkpoint_every=steps, seed=seed
    )
    cfg = TokenizeConfig(
        run_dir=str(run_dir),
        data=DataConfig(str(data), image_size=size, channels=3),
        arch=name,
        model=replace(model, image_size=size, channels=3),
        overwrite=True,
        plugins=plugins,
        plugin_options=options,
        train=training,
    )
    return run_tokenize(cfg)


def compare(
    spec: str, steps: int, args, work: Path, space, real_feats, heldout, seed: int = 0
) -> tuple[dict, torch.Tensor]:
    """The scores of one spec and its reconstructions of the first GRID_IMAGES held-out images, (n, C, S, S)."""
    started = time.perf_counter()
    train(spec, args.data, args.image_size, steps, work, args.batch_size, seed, tuple(args.plugin_opt))
    train_s = time.perf_counter() - started
    tokenizer = load_tokenizer(work / "tokenizer").eval()
    scores, _ = evaluate_tokenizer(tokenizer, heldout.batches(100), 100, space, real_feats)
    with torch.no_grad():
        recon = tokenizer.decode(tokenizer.encode(first_heldout(heldout)))
    row = {
        "arch": spec,
        "seed": seed,
        "steps": steps,
        "seconds_with_eval_and_encoding": train_s,
        "parameters": sum(p.numel() for p in tokenizer.parameters()),
        "grid": tokenizer.config.grid_size,
        "codebook_size": tokenizer.config.quantizer.codebook_size,
        **{k: scores[k] for k in SCORES},
    }
    return row, recon


SCORES = (
    "psnr",
    "ssim",
    "edge_sharpness_ratio",
    "codebook_usage",
    "perplexity",
    "dead_codes",
    "eval_images",
    "rfid",
)


def first_heldout(heldout) -> torch.Tensor:
    """The first GRID_IMAGES held-out images as floats in [-1, 1], (n, C, S, S)."""
    return to_float(next(iter(heldout.batches(GRID_IMAGES)))[:GRID_IMAGES])


def calibrated_steps(spec: str, args, work: Path) -> int:
    calibration = train(
        spec, args.data, args.image_size, CALIBRATION_STEPS, work / "calibration", args.batch_size
    )
    steps = max(CALIBRATION_STEPS, int(args.budget_s * calibration["train_images_per_s"] / args.batch_size))
    print(f"{spec}: {calibration['train_images_per_s']:.1f} training images/s -> {steps} steps", flush=True)
    return steps


def print_rows(rows: list[dict]) -> None:
    print(
        "| arch | seed | params | grid | codes | steps | PSNR | SSIM | edge sharpness | usage | perplexity | rFID |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['seed']} | {r['parameters'] / 1e6:.2f}M | {r['grid']}x{r['grid']} | "
            f"{r['codebook_size']} | {r['steps']} | {r['psnr']:.2f} dB | {r['ssim']:.3f} | "
            f"{r['edge_sharpness_ratio']:.3f} | {r['codebook_usage']:.1%} | {r['perplexity']:.0f} | {r['rfid']:.3f} |"
        )


def seed_means(rows: list[dict]) -> list[dict]:
    """Per spec: the mean and sample standard deviation over its seeds of PSNR, SSIM, edge sharpness and rFID."""
    out = []
    for spec in dict.fromkeys(r["arch"] for r in rows):
        mine = [r for r in rows if r["arch"] == spec]
        entry = {"arch": spec, "steps": mine[0]["steps"], "seeds": [r["seed"] for r in mine]}
        for key in ("psnr", "ssim", "edge_sharpness_ratio", "rfid"):
            values = torch.tensor([r[key] for r in mine], dtype=torch.float64)
            entry[key] = float(values.mean())
            entry[f"{key}_std"] = float(values.std()) if len(mine) > 1 else 0.0
        out.append(entry)
    return out


def print_means(means: list[dict], seeds: list[int]) -> None:
    if not means:
        return
    print(f"\nMeans over seeds {', '.join(map(str, seeds))} (+- the sample standard deviation):\n")
    print("| arch | steps | PSNR | SSIM | edge sharpness | rFID |")
    print("|---|---:|---:|---:|---:|---:|")
    for m in means:
        cells = [
            f"{m[k]:.3f} +- {m[k + '_std']:.3f}" for k in ("psnr", "ssim", "edge_sharpness_ratio", "rfid")
        ]
        print(f"| {m['arch']} | {m['steps']} | " + " | ".join(cells) + " |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/emoji"), help="the folder rgb_data.py wrote")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--budget-s", type=float, default=300.0, help="training seconds per tokenizer")
    parser.add_argument(
        "--steps", type=int, default=None, help="train every tokenizer this many steps instead (no budget)"
    )
    parser.add_argument("--archs", nargs="+", default=["vqvae", "vqgan", "vqvae+gan", "vqgan+gan"])
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep each run in KEEP/<arch> (default: deleted)"
    )
    parser.add_argument("--batch-size", type=int, default=BATCH, help=f"images a step (default {BATCH})")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--grid",
        type=Path,
        default=None,
        help="PNG: held-out originals (top row), then each spec's reconstructions",
    )
    parser.add_argument(
        "--plugin-opt", action="append", default=[], help="PLUGIN.FIELD=VALUE for every spec with that plugin"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train every spec once per seed")
    return parser.parse_args(argv)


def compare_all(args, root: Path, scratch: Path, space, real_feats, heldout) -> tuple[list[dict], list]:
    """Every spec once per seed (a plain architecture's steps calibrated once, its `+plugin` variants taking
    them): the rows, and the held-out originals followed by the first seed's reconstructions of each spec."""
    steps, rows, recons = {}, [], [first_heldout(heldout)]
    for seed in args.seeds:
        for spec in args.archs:
            base = spec.split("+")[0]
            if base not in steps:
                steps[base] = args.steps or calibrated_steps(base, args, scratch)
            name = spec.replace(":", "_").replace("=", "-").replace(",", "_")
            work = root / (name if len(args.seeds) == 1 else f"{name}-seed{seed}")
            row, recon = compare(spec, steps[base], args, work, space, real_feats, heldout, seed)
            rows.append(row)
            if seed == args.seeds[0]:
                recons.append(recon)
            if args.keep is None:
                shutil.rmtree(work, ignore_errors=True)
    return rows, recons


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        data = load_eval_data(
            EvaluateConfig(), DataConfig(str(args.data), image_size=args.image_size, channels=3)
        )
        classifier, info = eval_classifier(root / "features", data, EvaluateConfig(), print)
        space = fid.choose_space(
            "classifier", torch.device("cpu"), classifier, f"classifier-{data.dataset_tag}"
        )
        real_feats = fid.extract_features(space, data.eval, 100)
        rows, recons = compare_all(args, root, Path(tmp), space, real_feats, data.eval)
    print(
        f"\n{args.image_size} px, "
        + (f"{args.steps} steps" if args.steps else f"{args.budget_s:.0f} s of training")
        + f" per architecture; held-out: {data.eval_name} "
        f"({data.eval.shape[0]} images); rFID in {space.name} features (its accuracy there: "
        f"{info.get('eval_accuracy', float('nan')):.1%})\n"
    )
    print_rows(rows)
    means = seed_means(rows) if len(args.seeds) > 1 else []
    print_means(means, args.seeds)
    result = {
        "machine": machine_info(torch.device("cpu")),
        "image_size": args.image_size,
        "budget_s": None if args.steps else args.budget_s,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "features": space.name,
        "classifier": info,
        "rows": rows,
        "plugin_options": args.plugin_opt,
        "means": means,
    }
    if args.json:
        save_result(result, args.json)
    if args.grid:
        grid = torch.cat(recons)
        print(
            f"wrote {save_png(image_grid(grid, nrow=GRID_IMAGES), args.grid)}: originals, then {', '.join(args.archs)}"
        )
    return result


if __name__ == "__main__":
    main()
