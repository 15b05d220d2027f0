"""How the benchmarks measure: timing medians, peak memory, FLOPs, peak matmul throughput and the machine.

Shared by `tokenizer_speed.py`, `sampling.py`, `prior_training.py` and `run_all.py`. Every function takes a
`device` so that the same code measures on a CPU or a GPU; on a GPU every timing waits for the queued work
(`torch.cuda.synchronize`) before it reads the clock.
"""

import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

MIB = 2**20

# Nominal dense bf16 tensor-core throughput (TFLOP/s, no sparsity) from NVIDIA's data sheets, matched as a
# substring of torch.cuda.get_device_name(); the first match wins, so the more specific names come first.
NOMINAL_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),  # also GH200
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_mib(key: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # the file gives kB
    raise KeyError(key)


def _can_reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """`with PeakMemory(device) as mem: ...` then `mem.mib`: the most memory the block added on top of what was in
    use when it began, in MiB (None where it cannot be measured).

    - GPU: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (tensors only, not the allocator's
      cache or the CUDA context).
    - CPU (Linux): the process's peak resident set size (VmHWM), reset at the start by writing 5 to
      /proc/self/clear_refs, minus the resident size then; freed heap memory is first returned to the system
      (malloc_trim), so that the block cannot hide its use in pages freed by an earlier measurement.
    - elsewhere: None.
    """

    _rss_peak_resettable: bool | None = None

    def __init__(self, device: torch.device):
        self.device = device
        self.mib: float | None = None
        self._start: float | None = None

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / MIB
        elif self._cpu_supported():
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            self._start = _status_mib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self._start is None:
            return
        if self.device.type == "cuda":
            sync(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / MIB - self._start
        else:
            self.mib = _status_mib("VmHWM") - self._start

    @classmethod
    def _cpu_supported(cls) -> bool:
        if cls._rss_peak_resettable is None:
            cls._rss_peak_resettable = sys.platform.startswith("linux") and _can_reset_rss_peak()
        return cls._rss_peak_resettable


@dataclass
class Timing:
    """How many calls a measurement makes."""

    repeats: int = 20  # timed calls of each function; the median is reported
    warmup: int = 2  # untimed calls first (one more call then measures the peak memory)
    # a slow function gets fewer timed calls (at least min_repeats) to take about this long
    budget_s: float | None = None
    min_repeats: int = 3  # the fewest timed calls under a budget


@dataclass
class Measurement:
    median_s: float  # median seconds of one call
    repeats: int  # timed calls behind the median
    peak_mem_mib: float | None  # see PeakMemory: what one call adds on top of what already exists


def _seconds(run: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


def measure_runs(
    runs: dict[str, Callable[[], object]], timing: Timing, device: torch.device
) -> dict[str, Measurement]:
    """Warm every function up, measure the peak memory of one call of each, then time them interleaved.

    The memory figure is the working memory of a call (activations, gradients, temporaries, caches) beyond the
    weights, optimizer state and inputs that exist before it. With a time budget, a function whose memory call
    took long gets fewer timed calls (at least `timing.min_repeats`, or `timing.repeats` if that is less)."""
    for run in runs.values():
        for _ in range(timing.warmup):
            run()
    peaks, calls = {}, {}
    for name, run in runs.items():
        with PeakMemory(device) as mem:
            one = _seconds(run, device)
        peaks[name] = mem.mib
        fit = int(timing.budget_s / one) if timing.budget_s else timing.repeats
        calls[name] = min(timing.repeats, max(timing.min_repeats, fit))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(timing.repeats):  # interleaved: a change in the machine's load hits every function alike
        for name, run in runs.items():
            if r < calls[name]:
                times[name].append(_seconds(run, device))
    return {name: Measurement(statistics.median(ts), len(ts), peaks[name]) for name, ts in times.items()}


def median_seconds(run: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> float:
    return measure_runs({"run": run}, Timing(repeats, warmup), device)["run"].median_s


def count_flops(run: Callable[[], object]) -> int:
    """Floating-point operations of one call (matmuls and convolutions, forward and backward; 2 per
    multiply-add), counted by torch.utils.flop_counter.FlopCounterMode. Element-wise work is not counted."""
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def peak_matmul_tflops(
    device: torch.device, dtype: torch.dtype, n: int, repeats: int, max_call_s: float = 0.25
) -> dict:
    """The machine's practical matmul ceiling: median TFLOP/s of an (n x n) @ (n x n) product in `dtype`.
    Where one product takes longer than `max_call_s` (bf16 on a CPU without bf16 instructions is ~50x slower
    than fp32), n is halved, down to 256, to keep the run short; the result records the n it used. A fast
    product (a GPU's) is repeated within each timed call, so that synchronising costs little next to it."""
    gen = torch.Generator(device=device).manual_seed(0)
    while True:
        a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        one = median_seconds(partial(torch.mm, a, b), repeats=1, device=device, warmup=1)
        if one <= max_call_s or n <= 256:
            break
        n //= 2
    per_call = min(50, max(1, int(0.02 / one)))  # products per timed call: about 20 ms of work

    def products() -> None:
        for _ in range(per_call):
            torch.mm(a, b)

    seconds = median_seconds(products, repeats, device, warmup=1) / per_call
    return {"n": n, "median_s": seconds, "repeats": repeats, "tflops": 2 * n**3 / seconds / 1e12}


def nominal_bf16_tflops(device: torch.device) -> tuple[str, float] | None:
    """(matched name, dense bf16 TFLOP/s) from the data sheet of a known GPU, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in NOMINAL_BF16_TFLOPS:
        if key in name:
            return key, tflops
    return None


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU features that decide fp32 and bf16 speed (AVX2, AVX-512, AMX), where /proc/cpuinfo lists them."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(
                    f for f in line.split(":", 1)[1].split() if f.startswith(("avx2", "avx512", "amx"))
                )
    return []


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: torch.device) -> dict:
    """What the numbers depend on: processor, GPU, library versions, threads, and how busy the machine was."""
    info = {
        "cpu": _cpu_name(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "vector_quantize_pytorch": _version("vector-quantize-pytorch"),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "device": str(device),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        nominal = nominal_bf16_tflops(device)
        info.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,  # fp32 matmuls on tensor cores, if True
            tf32_cudnn=torch.backends.cudnn.allow_tf32,  # the same for convolutions (torch's default: True)
            nominal_bf16_tflops=nominal[1] if nominal else None,
        )
    return info


def state_mib(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> float:
    """MiB held by a model's parameters and buffers and by its optimizer's state (after its first step)."""
    tensors = [*model.parameters(), *model.buffers()]
    if optimizer is not None:
        tensors += [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors) / MIB


def autocast(device: torch.device, precision: str):
    """The context a step runs under: bf16 autocast (as accelerate's --mixed-precision bf16), TF32 matmuls and
    convolutions in fp32 (CUDA; the same as fp32 elsewhere), or nothing (fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "tf32":
        return tf32(True)
    if precision != "fp32":
        raise ValueError(f"precision must be fp32, tf32 or bf16, got {precision!r}")
    return tf32(False)


@contextlib.contextmanager
def tf32(enabled: bool):
    """fp32 matmuls and cuDNN convolutions on TF32 tensor cores (enabled) or in full fp32, restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --- rows and tables ------------------------------------------------------------------------------------------
def result_row(
    name: str, work: float, unit: str, m: Measurement, baseline: str | None = None, **extra
) -> dict:
    """One measured row: `work` units (images, tokens, vectors, FLOPs) per call -> throughput per second.
    `baseline` names the row of the same table that its ratio is taken against (default: itself)."""
    return {
        "name": name,
        "throughput": work / m.median_s,
        "unit": unit,
        "median_s": m.median_s,
        "repeats": m.repeats,
        "peak_mem_mib": m.peak_mem_mib,
        "baseline": baseline or name,
        **extra,
    }


def error_row(name: str, unit: str, exc: BaseException, **extra) -> dict:
    """A row for a measurement that could not run (e.g. torch.compile without a working compiler)."""
    message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return {"name": name, "throughput": None, "unit": unit, "error": message[:300], **extra}


def add_ratios(rows: list[dict]) -> list[dict]:
    """ratio_to_baseline = throughput / the throughput of the row named in `baseline` (same run, same table)."""
    by_name = {row["name"]: row for row in rows}
    for row in rows:
        base = by_name.get(row.get("baseline", ""))
        ok = row.get("throughput") and base is not None and base.get("throughput")
        row["ratio_to_baseline"] = row["throughput"] / base["throughput"] if ok else None
    return rows


def _fmt(value, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if spec:
        return format(value, spec)
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def markdown_table(title: str, rows: list[dict], extra: list[tuple[str, str, str]] = ()) -> str:
    """Rows -> a markdown table: name, throughput, ms per call, ratio to the baseline, peak memory, and any
    `extra` columns given as (header, row key, format spec)."""
    unit = next((row["unit"] for row in rows), "")
    headers = [title, unit, "ms per call", "vs baseline", "peak MiB", *(h for h, _, _ in extra)]
    lines = ["| " + " | ".join(headers) + " |", "|---" + "|---:" * (len(headers) - 1) + "|"]
    for row in rows:
        if row.get("throughput") is None:
            cells = [row["name"], f"failed: {row.get('error', '?')}", *["-"] * (len(headers) - 2)]
        else:
            ratio = row.get("ratio_to_baseline")
            cells = [
                row["name"],
                _fmt(row["throughput"]),
                _fmt(row["median_s"] * 1e3, ".2f"),
                "-" if ratio is None else f"{ratio:.2f}x",
                _fmt(row.get("peak_mem_mib"), ".1f"),
                *(_fmt(row.get(key), spec) for _, key, spec in extra),
            ]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def save_result(result: dict, path: Path) -> None:
    """Write a benchmark's result as indented JSON (creating its folder) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")
