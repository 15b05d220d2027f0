"""Sampling speed of every registered prior with its default config: cached `sample` against `sample_naive`
(the full forward pass per position) and, for the transformer, `transformers`' own `generate`.

    python benchmarks/sampling.py [--quick] [--json OUT.json]

Untrained weights on a 7x7 grid, vocabulary 512, 10 classes, batch 16, one label per sample, no guidance.
Every ratio is taken within this run; each number is the median over the repeats. Prints a markdown table and
writes JSON (default benchmarks/results/sampling.json).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import get_type_hints

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402

from priors import PRIORS, Prior  # noqa: E402

BATCH, VOCAB, NUM_CLASSES, GRID = 16, 512, 10, 7
TOKENS = BATCH * GRID * GRID


def build(name: str) -> Prior:
    cls = PRIORS.get(name)
    config_cls = get_type_hints(cls.__init__)["config"]
    config = config_cls(vocab_size=VOCAB, grid_height=GRID, grid_width=GRID, num_classes=NUM_CLASSES)
    torch.manual_seed(0)
    return cls(config).eval()


def seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_prior(name: str, repeats: int, naive_repeats: int) -> dict:
    """Tokens/s (median) of each sampler of one prior. The samplers take turns within each repeat, so that a
    change in the machine's load hits all of them alike."""
    model = build(name)
    labels = torch.arange(BATCH) % NUM_CLASSES

    def seeded_run(method):  # every call starts from the same seed
        return lambda: method(BATCH, labels, generator=torch.Generator().manual_seed(0))

    runs = {"cached": seeded_run(model.sample), "naive": seeded_run(model.sample_naive)}
    if hasattr(model, "sample_hf_generate"):
        runs["hf_generate"] = seeded_run(model.sample_hf_generate)
    times: dict[str, list[float]] = {key: [] for key in runs}
    for run in runs.values():
        run()  # warm-up
    for r in range(repeats):
        for key, run in runs.items():
            if key != "naive" or r < naive_repeats:
                times[key].append(seconds(run))
    row = {"prior": name, "params": sum(p.numel() for p in model.parameters())}
    row.update({f"{key}_tok_s": TOKENS / statistics.median(t) for key, t in times.items()})
    row["cached_over_naive"] = row["cached_tok_s"] / row["naive_tok_s"]
    if "hf_generate" in runs:
        row["cached_over_hf_generate"] = row["cached_tok_s"] / row["hf_generate_tok_s"]
    row["cached_equals_naive"] = bool(torch.equal(runs["cached"](), runs["naive"]()))
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| prior | params | cached tok/s | naive tok/s | cached / naive | HF generate tok/s | cached / HF | "
        "cached == naive |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in rows:
        hf = f"{r['hf_generate_tok_s']:,.0f}" if "hf_generate_tok_s" in r else "-"
        over_hf = f"{r['cached_over_hf_generate']:.2f}x" if "hf_generate_tok_s" in r else "-"
        same = "yes" if r["cached_equals_naive"] else "NO"
        lines.append(
            f"| {r['prior']} | {r['params'] / 1e6:.2f}M | {r['cached_tok_s']:,.0f} | {r['naive_tok_s']:,.0f} | "
            f"{r['cached_over_naive']:.1f}x | {hf} | {over_hf} | {same} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one timed run of each sampler (for tests)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "sampling.json")
    parser.add_argument("--priors", nargs="*", default=None, help="registered names (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats, naive_repeats = (1, 1) if args.quick else (5, 3)

    load_before = os.getloadavg()
    rows = [bench_prior(name, repeats, naive_repeats) for name in (args.priors or PRIORS.names())]
    result = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": load_before,  # other processes on the machine slow every number down
        "load_average_after": os.getloadavg(),
        "batch": BATCH,
        "grid": [GRID, GRID],
        "vocab_size": VOCAB,
        "num_classes": NUM_CLASSES,
        "repeats": {"cached": repeats, "naive": naive_repeats},
        "results": rows,
    }
    print(
        f"torch {result['torch']}, transformers {result['transformers']}, {result['torch_threads']} threads, "
        f"batch {BATCH}, {GRID}x{GRID} grid, vocab {VOCAB}, {NUM_CLASSES} classes, medians of "
        f"{repeats} (naive {naive_repeats}) runs, load average {load_before[0]:.1f}\n"
    )
    print(markdown(rows))
    if load_before[0] > 0.5 * (os.cpu_count() or 1):  # the run itself raises the load average after
        print(
            "\nthe machine was busy: these numbers are lower bounds, and torch threads that share cores with other"
            " processes slow down badly (compare --threads 1)"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
