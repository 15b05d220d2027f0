"""Every registered prior on long code grids: training tokens/s and peak memory, and cached against naive sampling
(identical grids), at 7x7, 16x16 and 32x32 (49, 256 and 1,024 tokens).

    python -m benchmarks.long_grids [--grids 7 16 32] [--priors gru pixelcnn transformer] [--device cuda]
    python -m benchmarks.long_grids --tiny        # tiny grids and one call each (tests/test_long_grids.py)

Each prior has its default config for the grid (vocabulary 512, 10 classes, untrained: speed does not depend on
the weights; the PixelCNN's default depth grows with the grid to cover it). Training: batch 16 of random codes,
one AdamW step (`prior_training.py`). Sampling: batch 4, one label each, no guidance (`sampling.py`); ratios are
cached over naive within this run. Prints one markdown table per grid and writes JSON
(default benchmarks/results/long_grids.json).
"""

import argparse
import os
from pathlib import Path

import torch
from vqgen.stages.core.registry import PRIORS

from benchmarks.measure import Timing, machine_info, markdown_table, save_result
from benchmarks.prior_training import TRAIN_COLUMNS, prior_training_rows
from benchmarks.sampling import SAMPLING_COLUMNS, bench_prior

ROOT = Path(__file__).resolve().parents[1]

TRAIN_BATCH, SAMPLE_BATCH = 16, 4


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--grids", type=int, nargs="*", default=[7, 16, 32], help="grid sides (default 7 16 32)"
    )
    parser.add_argument("--priors", nargs="*", default=None, help="registered names (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--tiny", action="store_true", help="grids 3 and 4, one timed call each (seconds)")
    parser.add_argument(
        "--json", type=Path, default=None, help="default benchmarks/results/long_grids[-tiny].json"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    grids = [3, 4] if args.tiny else args.grids
    train_timing = Timing(repeats=1, warmup=1) if args.tiny else Timing(repeats=5, warmup=1, budget_s=20)
    sample_timing = (
        Timing(repeats=1, warmup=0) if args.tiny else Timing(3, warmup=0, budget_s=30, min_repeats=1)
    )
    names = args.priors or PRIORS.names()
    machine = machine_info(device)
    print(
        f"torch {machine['torch']}, {machine['torch_threads']} threads, {device}, load {machine['load_average'][0]:.1f}"
    )
    results = {}
    for grid in grids:
        train = prior_training_rows(names, TRAIN_BATCH, ["fp32"], train_timing, device, grid)
        sampling = [
            row for name in names for row in bench_prior(name, sample_timing, SAMPLE_BATCH, device, grid)
        ]
        results[f"{grid}x{grid}"] = {"tokens": grid * grid, "train": train, "sampling": sampling}
        print(f"\n## {grid}x{grid} grid ({grid * grid} tokens)\n")
        print(markdown_table("prior training step (batch 16)", train, TRAIN_COLUMNS))
        print()
        print(markdown_table("sampler (batch 4)", sampling, SAMPLING_COLUMNS))
    result = {"machine": machine, "load_average_after": os.getloadavg(), "results": results}
    out = args.json or ROOT / "benchmarks" / "results" / (
        "long_grids-tiny.json" if args.tiny else "long_grids.json"
    )
    save_result(result, out)
    return result


if __name__ == "__main__":
    main()
