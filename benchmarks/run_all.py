"""The whole benchmark suite in one command: a markdown table per section, and all figures as JSON.

    python -m benchmarks.run_all                       # full suite on the CPU (a few minutes)
    python -m benchmarks.run_all --quick               # fewer timed calls, same sizes
    python -m benchmarks.run_all --tiny                # tiny sizes, seconds (what the tests run)
    python -m benchmarks.run_all --device cuda         # one GPU, with and without torch.compile (not yet run)

Sections, in order (each ratio is against a baseline row measured in the same run):
  peak_matmul      the machine's practical ceiling: a large square matmul in fp32 and bf16 (TFLOP/s);
  quantizer        VQ layer forward+backward (vectors/s) vs a plain straight-through layer and
                   vector-quantize-pytorch (tokenizer_speed.py);
  tokenizer_train  the default tokenizer's training step on 28x28 images (images/s) in fp32 and bf16 autocast,
                   eager and torch.compile'd, with its matmul/conv FLOPs (FlopCounterMode) as a fraction of the
                   measured peak and, on a known GPU, of the data-sheet bf16 peak (tokenizer_speed.py); on CUDA at
                   batch 32, 256 and 1024 in TF32, bf16 and bf16 + torch.compile, each against the plain
                   straight-through VQ-VAE of the same size in the same setting (channels_last, fused AdamW);
  tokenizer_codec  encode and decode (images/s) (tokenizer_speed.py);
  prior_train      training step of each registered prior (tokens/s), 7x7 grid, vocab 512 (prior_training.py);
                   on CUDA at batch 16 and 256, fp32 (TF32 off), bf16 and bf16 + torch.compile;
  sampling         each prior's cached sampler vs its naive one (and `transformers` generate) (sampling.py); on
                   CUDA at batch 16 and 256, and with the per-token step torch.compile'd (`generate --compile`).

Every figure is the median of repeated calls; the functions of a table take turns within each repeat, so that
a change in the machine's load hits them alike. "peak MiB" is the working memory one call adds on top of the
weights, optimizer state and inputs (GPU: torch.cuda.max_memory_allocated; Linux CPU: the peak resident set size,
reset before the call). The JSON also records the machine: processor, GPU, torch version, threads, load average.
"""

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.registry import PRIORS

from benchmarks.measure import (
    Measurement,
    Timing,
    add_ratios,
    autocast,
    cpu_flags,
    machine_info,
    markdown_table,
    nominal_bf16_tflops,
    peak_matmul_tflops,
    result_row,
    save_result,
)
from benchmarks.prior_training import TRAIN_COLUMNS as PRIOR_TRAIN_COLUMNS
from benchmarks.prior_training import prior_training_rows
from benchmarks.sampling import SAMPLING_COLUMNS, bench_prior
from benchmarks.tokenizer_speed import codec_rows, quantizer_rows, tokenizer_train_rows

ROOT = Path(__file__).resolve().parents[1]

PRECISIONS = ["fp32", "bf16"]


@dataclass
class SuiteSizes:
    timing: Timing  # timed calls per figure (the median is reported), warm-up calls, time budget per function
    matmul_n: int  # side of the square matmuls that measure the peak
    quantizer_batch: int  # images whose 7x7 grid of 64-d latents goes through the quantizer
    tokenizer_batches: list[int]  # 28x28 images per tokenizer step (and per encode / decode call)
    grid: int  # side of the priors' code grid (7: 28x28 images, downsampling 4)
    prior_batches: list[int]  # code grids per prior training step
    sampling_batches: list[int]  # grids sampled per call


SIZES = {
    "tiny": SuiteSizes(
        Timing(repeats=1, warmup=0), 256, 8, [8], grid=4, prior_batches=[8], sampling_batches=[2]
    ),
    "quick": SuiteSizes(
        Timing(5, 1, budget_s=3), 1024, 64, [64], grid=7, prior_batches=[64], sampling_batches=[16]
    ),
    "full": SuiteSizes(
        Timing(20, 2, budget_s=10), 2048, 64, [64], grid=7, prior_batches=[64], sampling_batches=[16]
    ),
}


def suite_sizes(mode: str, device: torch.device) -> SuiteSizes:
    """The sizes of a mode; a GPU gets the batches the issue asks for (32 to 1024 images per tokenizer step, 16
    and 256 grids for the priors), since batch 64 leaves most of it idle."""
    sizes = SIZES[mode]
    if device.type == "cuda" and mode != "tiny":
        sizes = replace(
            sizes,
            matmul_n=8192,
            tokenizer_batches=[32, 256, 1024],
            prior_batches=[16, 256],
            sampling_batches=[16, 256],
        )
    return sizes


@dataclass
class Suite:
    device: torch.device
    sizes: SuiteSizes
    compile_precisions: list[str]  # precisions whose training steps are also timed under torch.compile
    compile_backend: str  # torch.compile's backend: "inductor" (real kernels); "eager" only checks tracing
    priors: list[str]
    peaks: dict[str, float] = field(default_factory=dict)  # precision -> measured TFLOP/s (from peak_matmul)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def train_precisions(self) -> list[str]:
        """The tokenizer step's eager precisions: on CUDA fp32 runs its matmuls and convolutions in TF32."""
        return ["tf32", "bf16"] if self.cuda else PRECISIONS


def make_suite(
    mode: str, device: torch.device, compile_on: bool | None, backend: str, priors: list[str]
) -> Suite:
    """What a run measures: sizes by mode and device; torch.compile by default on CUDA (bf16), off on a CPU
    (--compile compiles the fp32 step there, since bf16 is usually emulated on a CPU)."""
    compile_on = compile_on if compile_on is not None else device.type == "cuda"
    return Suite(
        device=device,
        sizes=suite_sizes(mode, device),
        compile_precisions=(["bf16"] if device.type == "cuda" else ["fp32"]) if compile_on else [],
        compile_backend=backend,
        priors=priors,
    )


def section(title: str, rows: list[dict], notes: list[str] = (), columns: list[tuple] = ()) -> dict:
    """A table of the report: its rows, notes under it, and any extra columns (header, row key, format)."""
    return {"title": title, "rows": rows, "notes": list(notes), "columns": [list(c) for c in columns]}


def peak_matmul(s: Suite) -> dict:
    rows = []
    kinds = [("fp32", torch.float32), ("bf16", torch.bfloat16)] + (
        [("tf32", torch.float32)] if s.cuda else []
    )
    for precision, dtype in kinds:
        with autocast(s.device, precision) if precision != "bf16" else contextlib.nullcontext():
            peak = peak_matmul_tflops(s.device, dtype, s.sizes.matmul_n, s.sizes.timing.repeats)
        s.peaks[precision] = peak["tflops"]
        n = peak["n"]
        m = Measurement(peak["median_s"], peak["repeats"], None)
        name = f"{precision} matmul {n}x{n} @ {n}x{n}"
        rows.append(
            result_row(name, 2 * n**3 / 1e12, "TFLOP/s", m, baseline=rows[0]["name"] if rows else None, n=n)
        )
    notes = []
    nominal = nominal_bf16_tflops(s.device)
    if nominal:
        notes.append(f"data-sheet dense bf16 peak of this GPU ({nominal[0]}): {nominal[1]:.0f} TFLOP/s")
    flags = cpu_flags()  # empty where /proc/cpuinfo lists no x86 flags: then we cannot tell
    if s.device.type == "cpu" and flags and not any("bf16" in flag for flag in flags):
        notes.append(
            "this CPU has no bf16 instructions (avx512_bf16, amx_bf16): bf16 runs emulated, slower than fp32"
        )
    return section("peak matmul", add_ratios(rows), notes)


def quantizer(s: Suite) -> dict:
    batch = s.sizes.quantizer_batch
    rows, notes = quantizer_rows(batch, 7, 64, 512, 16, s.sizes.timing, s.device)
    return section(f"quantizer forward+backward ({batch} x 7 x 7 vectors, K=512)", rows, notes)


def tokenizer_train(s: Suite) -> dict:
    variants = [(p, False) for p in s.train_precisions] + [(p, True) for p in s.compile_precisions]
    z = s.sizes
    rows = tokenizer_train_rows(
        z.tokenizer_batches, variants, z.timing, s.device, s.compile_backend, plain_baseline=s.cuda
    )
    nominal = nominal_bf16_tflops(s.device)
    columns = [
        ("TFLOP/s", "achieved_tflops", ".4g"),
        ("of measured peak", "fraction_of_measured_peak", ".2%"),
    ]
    if nominal:
        columns.append(("of data-sheet bf16 peak", "fraction_of_nominal_bf16_peak", ".2%"))
    columns.append(("weights+optimizer MiB", "state_mib", ".1f"))
    for row in rows:
        achieved, peak = row.get("achieved_tflops"), s.peaks.get(row["precision"])
        row["fraction_of_measured_peak"] = achieved / peak if achieved and peak else None
        if nominal and achieved and row["precision"] == "bf16":
            row["fraction_of_nominal_bf16_peak"] = achieved / (nominal[1])
    flops = next((r["flops_per_step"] for r in rows if r.get("flops_per_step")), None)
    notes = []
    if flops:
        notes.append(
            f"{flops / 1e9 / s.sizes.tokenizer_batches[0]:.3f} GFLOP per image and step (matmuls and convolutions, "
            "forward and backward, counted by torch.utils.flop_counter.FlopCounterMode; element-wise work and the "
            "optimizer are not counted); fractions are against the measured peak of the same precision"
        )
    if any((r.get("fraction_of_measured_peak") or 0) > 1 for r in rows):
        notes.append(
            "a fraction above 100% means the step's kernels outran the square matmul that measured the peak "
            "(a small matmul in --tiny; convolutions in TF32 on a GPU; emulated bf16 matmuls on a CPU)"
        )
    if s.compile_precisions:
        notes.append("torch.compile rows exclude the compilation (it runs before the timed calls)")
    if s.cuda:
        notes.append(
            "each vqgen row's ratio is against the plain straight-through VQ-VAE of the same size at the same batch, "
            "precision and compilation (same encoder and decoder; channels_last, fused AdamW); tf32 = fp32 with "
            "TF32 matmuls and convolutions"
        )
    return section("tokenizer training step (28x28, default config)", rows, notes, columns)


def tokenizer_codec(s: Suite) -> dict:
    rows = [
        row for b in s.sizes.tokenizer_batches for row in codec_rows(b, PRECISIONS, s.sizes.timing, s.device)
    ]
    return section("tokenizer encode / decode", rows)


def prior_train(s: Suite) -> dict:
    z = s.sizes
    rows = [
        row
        for batch in z.prior_batches
        for row in prior_training_rows(
            s.priors, batch, PRECISIONS, z.timing, s.device, z.grid, s.compile_precisions, s.compile_backend
        )
    ]
    batches = ", ".join(map(str, z.prior_batches))
    title = f"prior training step (batch {batches}, {z.grid}x{z.grid} grid, vocab 512, 10 classes)"
    notes = ["ratios are against the same prior in fp32, eager, at the same batch"]
    return section(title, rows, notes, columns=PRIOR_TRAIN_COLUMNS)


def sampling(s: Suite) -> dict:
    z = s.sizes
    backend = s.compile_backend if s.compile_precisions else None
    rows = [
        row
        for batch in z.sampling_batches
        for name in s.priors
        for row in bench_prior(name, z.timing, batch, s.device, z.grid, backend)
    ]
    notes = ["the naive sampler runs the full forward pass once per position; ratios are against it"]
    if backend:
        notes.append("`cached, torch.compile`: the prior's per-token step compiled, as `generate --compile`")
    if s.cuda:
        notes.append(
            "on a GPU, cached and naive samplers may differ in the last bits and so draw other grids"
        )
    batches = ", ".join(map(str, z.sampling_batches))
    return section(
        f"sampling (batch {batches}, {z.grid}x{z.grid} grid, untrained weights)",
        rows,
        notes,
        SAMPLING_COLUMNS,
    )


SECTIONS: dict[str, Callable[[Suite], dict]] = {
    "peak_matmul": peak_matmul,
    "quantizer": quantizer,
    "tokenizer_train": tokenizer_train,
    "tokenizer_codec": tokenizer_codec,
    "prior_train": prior_train,
    "sampling": sampling,
}


def report(result: dict) -> str:
    """The markdown a reader sees: the machine in one line, then one table per section with its notes."""
    m, suite = result["machine"], result["suite"]
    where = m.get("gpu") or m["cpu"]
    before, after = (
        load[0] if load else float("nan") for load in (m["load_average"], suite["load_average_after"])
    )
    lines = [
        f"vqgen benchmark suite ({suite['mode']}, {suite['device']}): {where}, {m['cpu_count']} CPU cores, "
        f"torch {m['torch']}, {m['torch_threads']} threads, load average {before:.2f} before and {after:.2f} "
        f"after, {suite['seconds']:.0f} s",
    ]
    for sec in result["sections"].values():
        lines += [
            "",
            f"### {sec['title']}",
            "",
            markdown_table(sec["title"].split(" (")[0], sec["rows"], sec["columns"]),
        ]
        lines += [f"\n{note}" for note in sec["notes"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--tiny", action="store_true", help="tiny sizes, one timed call each: seconds on a CPU (for tests)"
    )
    size.add_argument("--quick", action="store_true", help="the real sizes with at most 5 timed calls each")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the training steps and the sampling step under torch.compile (default: on for cuda, in bf16; off for cpu; "
        "on a CPU --compile compiles the fp32 step, since bf16 is usually emulated there)",
    )
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (default inductor; eager or aot_eager only check that the model compiles)",
    )
    parser.add_argument("--sections", nargs="*", choices=list(SECTIONS), default=None, help="default: all")
    parser.add_argument("--priors", nargs="*", default=None, help="registered priors (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the JSON (default benchmarks/results/suite[-tiny|-quick][-cuda].json)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UserError(f"--device {args.device}: {exc}; use cpu or cuda") from exc
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {args.device}: the suite measures on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    if args.threads:
        torch.set_num_threads(args.threads)
    suite = make_suite(mode, device, args.compile, args.compile_backend, args.priors or PRIORS.names())
    json_path = args.json or ROOT / "benchmarks" / "results" / (
        "suite"
        + ("" if mode == "full" else f"-{mode}")
        + ("-cuda" if device.type == "cuda" else "")
        + ".json"
    )
    machine = machine_info(device)  # before the run: its load average is the other processes'
    start = time.perf_counter()
    sections = {}
    for name in args.sections or SECTIONS:
        section_start = time.perf_counter()
        sections[name] = SECTIONS[name](suite)
        sections[name]["seconds"] = time.perf_counter() - section_start
    result = {
        "suite": {
            "mode": mode,
            "device": str(device),
            "compile_precisions": suite.compile_precisions,
            "compile_backend": suite.compile_backend,
            "sizes": asdict(suite.sizes),
            "command": "python -m benchmarks.run_all " + " ".join(sys.argv[1:] if argv is None else argv),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": time.perf_counter() - start,
            "load_average_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "machine": machine,
        "sections": sections,
    }
    print(report(result))
    if machine["load_average"] and machine["load_average"][0] > 0.5 * (os.cpu_count() or 1):
        print(
            "\nthe machine was busy before the run: these numbers are lower bounds; rerun on a quiet machine"
        )
    save_result(result, json_path)
    return result


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # a wrong option or prior name: one line, exit code 2, as the CLI does
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
