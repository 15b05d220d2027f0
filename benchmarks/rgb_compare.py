"""VQ-VAE against VQGAN on RGB images, for the same wall-clock training budget.

    python benchmarks/rgb_data.py --out data/emoji
    python benchmarks/rgb_compare.py --data data/emoji [--image-size 32] [--budget-s 300] [--json OUT.json]

Each tokenizer of `--archs` (an architecture or preset name, optionally with config fields changed:
`vqgan:base_channels=32`) is trained on DATA/train by `tokenize`'s own code (run_tokenize, 64 images a step) for
as many steps as fit `--budget-s`: a short calibration run measures its training images/s first. Then PSNR, SSIM,
codebook usage and perplexity on the never-seen DATA/heldout. On a shared machine the budget buys each model
whatever the load leaves it, so compare figures from one run, and repeat it before drawing conclusions.
"""

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT / "benchmarks"))

from measure import machine_info, save_result  # noqa: E402
from vqgen.stages.artifacts.models import load_tokenizer  # noqa: E402
from vqgen.stages.commands.tokenize import TokenizeConfig, run_tokenize, tokenizer_config  # noqa: E402
from vqgen.stages.core.options import parse_options  # noqa: E402
from vqgen.stages.data.images import DataConfig, to_array  # noqa: E402
from vqgen.stages.evaluation.tokenizer import evaluate_tokenizer  # noqa: E402
from vqgen.stages.training.config import TOKENIZER_TRAINING  # noqa: E402

BATCH = 64
CALIBRATION_STEPS = 10


def arch_config(spec: str):
    """'vqgan:base_channels=32,num_res_blocks=2' -> (name, the preset's config with those fields)."""
    name, _, fields = spec.partition(":")
    config = tokenizer_config(name, {}, {})
    if fields:
        options = dict(item.split("=", 1) for item in fields.split(","))
        config = parse_options(name, type(config), options, **vars(config))
    return name, config


def heldout_pixels(folder: Path, size: int) -> torch.Tensor:
    """(N, 3, size, size) uint8 of every PNG in `folder`, fitted as the data pipeline fits them."""
    arrays = [to_array(Image.open(p), size, 3) for p in sorted(folder.glob("*.png"))]
    return torch.from_numpy(np.stack(arrays))


def train(spec: str, data: Path, size: int, steps: int, run_dir: Path) -> dict:
    name, model = arch_config(spec)
    cfg = TokenizeConfig(
        run_dir=str(run_dir), data=DataConfig(str(data / "train"), image_size=size, channels=3), arch=name,
        model=model, overwrite=True,
        train=replace(TOKENIZER_TRAINING, steps=steps, batch_size=BATCH, sample_every=0, checkpoint_every=steps),
    )  # fmt: skip
    return run_tokenize(cfg)


def compare(spec: str, data: Path, size: int, budget_s: float, work: Path) -> dict:
    calibration = train(spec, data, size, CALIBRATION_STEPS, work / "calibration")
    steps = max(CALIBRATION_STEPS, int(budget_s * calibration["train_images_per_s"] / BATCH))
    print(f"{spec}: {calibration['train_images_per_s']:.1f} training images/s -> {steps} steps", flush=True)
    started = time.perf_counter()
    train(spec, data, size, steps, work / "run")
    train_s = time.perf_counter() - started
    tokenizer = load_tokenizer(work / "run" / "tokenizer")
    scores, _ = evaluate_tokenizer(tokenizer, heldout_pixels(data / "heldout", size), batch_size=100)
    return {
        "arch": spec, "steps": steps, "seconds_with_eval_and_encoding": train_s,
        "parameters": sum(p.numel() for p in tokenizer.parameters()), "grid": tokenizer.config.grid_size,
        "codebook_size": tokenizer.config.quantizer.codebook_size,
        **{k: scores[k] for k in ("psnr", "ssim", "codebook_usage", "perplexity", "dead_codes", "eval_images")},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/emoji"), help="the folder rgb_data.py wrote")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--budget-s", type=float, default=300.0, help="training seconds per tokenizer")
    parser.add_argument("--archs", nargs="+", default=["vqvae", "vqgan"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    for spec in args.archs:
        with tempfile.TemporaryDirectory() as work:
            rows.append(compare(spec, args.data, args.image_size, args.budget_s, Path(work)))
    print(
        f"\n| arch | params | steps | held-out PSNR | SSIM | usage | perplexity | ({args.image_size} px, {args.budget_s:.0f} s each)"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['arch']} | {r['parameters'] / 1e6:.2f}M | {r['steps']} | {r['psnr']:.2f} dB | {r['ssim']:.3f} "
            f"| {r['codebook_usage']:.1%} | {r['perplexity']:.0f} |"
        )
    result = {
        "machine": machine_info(torch.device("cpu")),
        "image_size": args.image_size,
        "budget_s": args.budget_s,
        "rows": rows,
    }
    if args.json:
        save_result(result, args.json)
    return result


if __name__ == "__main__":
    main()
