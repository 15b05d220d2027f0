"""Sampling speed of every registered prior with its default config: cached `sample` against `sample_naive`
(the full forward pass per position) and, for the transformer, `transformers`' own `generate`.

    python -m benchmarks.sampling [--quick] [--device cpu|cuda] [--batch 16] [--grid 7] [--json OUT.json]
        [--priors gru ...] [--prior-opt hidden_size=192 ...] [--baseline-opt hidden_size=384 ...]

Untrained weights on a 7x7 grid (`--grid`), vocabulary 512, 10 classes, batch 16, one label per sample, no guidance.
`--prior-opt OPTION=VALUE` changes a config field of every prior benchmarked (as `train-prior --prior-opt`), to time a
variant against the default in two runs, or `--baseline-opt OPTION=VALUE` to time the prior with those fields
changed as the baseline of the same run instead of the naive sampler (which is then not run: on large grids it takes
minutes a call). Every ratio is taken within this run, against the naive sampler of the same prior (or that
baseline); each number is the median over the repeats; peak memory is what one sampling call adds on top of the
weights. Prints a markdown table and writes JSON (default benchmarks/results/sampling.json). `benchmarks/run_all.py`
runs `bench_prior` in its suite.
"""

import argparse
import os
from dataclasses import asdict
from pathlib import Path
from typing import get_type_hints

import torch
from vqgen.priors import Prior
from vqgen.stages.core.options import parse_options, split_assignments
from vqgen.stages.core.registry import PRIORS

from benchmarks.measure import (
    Timing,
    add_ratios,
    error_row,
    machine_info,
    markdown_table,
    measure_runs,
    result_row,
    save_result,
)

ROOT = Path(__file__).resolve().parents[1]

BATCH, VOCAB, NUM_CLASSES, GRID = 16, 512, 10, 7
SAMPLING_COLUMNS = [
    ("same grids as naive", "same_as_naive", ""),
    ("cached vs HF generate", "over_hf_generate", ".2f"),
    ("params", "params", ","),
]


def prior_config(name: str, grid: int = GRID, options: dict[str, str] | None = None):
    """The registered prior's default config on a grid x grid code grid of VOCAB codes and NUM_CLASSES classes,
    with `options` (fields changed, as `--prior-opt`); an unknown option or a bad value is a ValueError naming it."""
    config_cls = get_type_hints(PRIORS.get(name).__init__)["config"]
    fixed = dict(vocab_size=VOCAB, grid_height=grid, grid_width=grid, num_classes=NUM_CLASSES)
    return parse_options(name, config_cls, options or {}, **fixed)


def build(
    name: str, device: torch.device | str = "cpu", grid: int = GRID, options: dict[str, str] | None = None
) -> Prior:
    """A registered prior with its `prior_config` (7x7: 28x28 images, downsampling 4), fixed seed, untrained (speed
    does not depend on the weights)."""
    config = prior_config(name, grid, options)
    torch.manual_seed(0)
    return PRIORS.get(name)(config).to(device).eval()


def compiled(name: str, device: torch.device, grid: int, backend: str, seeded_run, options=None):
    """(the cached sampler of a second copy of the same weights with its per-token step torch.compile'd, None)
    or (None, why it fell back to eager). It compiles here, before the timed calls."""
    from vqgen.stages.sampling.sampler import compile_sampling_step

    twin, warnings = build(name, device, grid, options), []
    compile_sampling_step(twin, warn=warnings.append, backend=backend)
    compiled_run = seeded_run(twin.sample)
    compiled_run()  # compiles here, before the timed calls
    return (None, warnings[0]) if warnings else (compiled_run, None)


def baseline_sampler(
    name: str, model: Prior, device, grid: int, options, baseline_options
) -> tuple[str, object]:
    """(the baseline row's name, its sampling method): `model`'s naive sampler, or with `baseline_options` the
    cached sampler of the same prior with those fields changed (after `options`)."""
    if baseline_options is None:
        return f"{name} naive (baseline)", model.sample_naive
    changed = " ".join(f"{k}={v}" for k, v in baseline_options.items())
    variant = build(name, device, grid, {**(options or {}), **baseline_options})
    return f"{name} cached, {changed} (baseline)", variant.sample


def bench_prior(
    name: str,
    timing: Timing,
    batch: int = BATCH,
    device: torch.device | str = "cpu",
    grid: int = GRID,
    compile_backend: str | None = None,
    options: dict[str, str] | None = None,
    baseline_options: dict[str, str] | None = None,
) -> list[dict]:
    """Tokens/s (median) of each sampler of one prior: one row per sampler, ratios against the naive sampler, or
    with `baseline_options` against the cached sampler of the prior with those fields changed (no naive sampler).
    With `compile_backend`, also the cached sampler with its per-token step torch.compile'd (`generate
    --compile`: vqgen.stages.sampling.sampler.compile_sampling_step) on a second copy of the same weights.
    The samplers take turns within each repeat, so that a change in the machine's load hits all of them alike;
    with a time budget, the naive sampler, the slow one, gets fewer timed calls."""
    device = torch.device(device)
    model = build(name, device, grid, options)
    labels = torch.arange(batch, device=device) % NUM_CLASSES

    last: dict = {}  # the grids of each sampler's latest call: every call draws the same ones

    def seeded_run(method, gen_device: torch.device = device):  # every call starts from the same seed
        def run():
            last[method] = method(batch, labels, generator=torch.Generator(device=gen_device).manual_seed(0))
            return last[method]

        return run

    baseline, reference = baseline_sampler(name, model, device, grid, options, baseline_options)
    runs = {f"{name} cached": seeded_run(model.sample), baseline: seeded_run(reference)}
    # `generate` knows no 2-D positions; it seeds the global RNG from a CPU generator
    if hasattr(model, "sample_hf_generate") and not getattr(model.config, "pos_2d", False):
        runs[f"{name} transformers generate"] = seeded_run(model.sample_hf_generate, torch.device("cpu"))
    compile_failed = None
    if compile_backend:
        compiled_run, compile_failed = compiled(name, device, grid, compile_backend, seeded_run, options)
        if compiled_run is not None:
            runs[f"{name} cached, torch.compile"] = compiled_run
    measured = measure_runs(runs, timing, device)
    # the cached sampler draws exactly the naive sampler's grids (no extra, slow, naive call)
    same = bool(torch.equal(last[model.sample], last[reference])) if baseline_options is None else None
    sizes = {key: model for key in measured} | {baseline: reference.__self__}
    rows = []
    for key, m in measured.items():
        row = result_row(key, batch * grid * grid, "tokens/s", m, baseline=baseline)
        params = sum(p.numel() for p in sizes[key].parameters())
        row.update(prior=name, sampler=key.removeprefix(name + " "), batch=batch, grid=grid, params=params)
        row.update(options=dict(options or {}))
        if key == f"{name} cached" and same is not None:
            row["same_as_naive"] = same
        rows.append(row)
    if compile_failed:
        error = error_row(f"{name} cached, torch.compile", "tokens/s", RuntimeError(compile_failed))
        rows.append({**error, "prior": name, "batch": batch, "grid": grid})
    hf = measured.get(f"{name} transformers generate")
    if hf is not None:  # cached sampler / transformers' generate, both timed in this run
        rows[0]["over_hf_generate"] = hf.median_s / measured[f"{name} cached"].median_s
    return add_ratios(rows)


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, str], dict[str, str] | None]:
    """(the arguments, the --prior-opt fields, the --baseline-opt fields or None), every option checked against
    every prior before anything is timed (a bad one: one argparse line, exit 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one timed run of each sampler (for tests)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "sampling.json")
    parser.add_argument("--priors", nargs="*", default=None, help="registered names (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"samples per call (default {BATCH})")
    parser.add_argument("--grid", type=int, default=GRID, help=f"code grid side (default {GRID})")
    parser.add_argument(
        "--prior-opt",
        nargs="*",
        default=[],
        metavar="OPTION=VALUE",
        help="config fields changed in every prior",
    )
    parser.add_argument(
        "--baseline-opt",
        nargs="+",
        default=None,
        metavar="OPTION=VALUE",
        help="the baseline is each prior with these fields changed (after --prior-opt), not the naive sampler",
    )
    args = parser.parse_args(argv)
    try:
        options = split_assignments(args.prior_opt, "--prior-opt")
        against = split_assignments(args.baseline_opt, "--baseline-opt") if args.baseline_opt else None
        for name in args.priors or PRIORS.names():  # check every option before timing anything
            prior_config(name, args.grid, options)
            prior_config(name, args.grid, {**options, **(against or {})})
    except ValueError as error:
        parser.error(str(error))
    return args, options, against


def main(argv: list[str] | None = None) -> dict:
    args, options, against = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    timing = Timing(repeats=1, warmup=1) if args.quick else Timing(repeats=10, warmup=1, budget_s=5)

    machine = machine_info(torch.device(args.device))  # includes the load average before the run
    rows = [
        row
        for name in (args.priors or PRIORS.names())
        for row in bench_prior(
            name, timing, args.batch, args.device, args.grid, options=options, baseline_options=against
        )
    ]
    result = {
        "machine": machine,
        "load_average_after": os.getloadavg(),
        "batch": args.batch,
        "grid": [args.grid, args.grid],
        "prior_options": options,
        "baseline_options": against,
        "vocab_size": VOCAB,
        "num_classes": NUM_CLASSES,
        "timing": asdict(timing),
        "results": rows,
    }
    load_before = machine["load_average"][0]
    print(
        f"torch {machine['torch']}, transformers {machine['transformers']}, {machine['torch_threads']} threads, "
        f"{args.device}, batch {args.batch}, {args.grid}x{args.grid} grid, vocab {VOCAB}, {NUM_CLASSES} classes, "
        f"medians of up to {timing.repeats} runs, load average {load_before:.1f}\n"
    )
    print(markdown_table("sampler", rows, SAMPLING_COLUMNS))
    if load_before > 0.5 * (os.cpu_count() or 1):  # the run itself raises the load average after
        print(
            "\nthe machine was busy: these numbers are lower bounds, and torch threads that share cores with other"
            " processes slow down badly (compare --threads 1)"
        )
    save_result(result, args.json)
    return result


if __name__ == "__main__":
    main()
