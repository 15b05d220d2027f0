"""Data at scale: does `tokenize`'s memory stay flat as the dataset grows, and what do preparation and workers cost?

For each size N it builds a folder of N synthetic 64x64 RGB PNGs (noise and shapes in 10 class folders; kept
under --work and reused), then runs `cli.py tokenize` on it as a subprocess with a tiny model, three times:
  1. `prepare`: a fresh prepared cache (decoding every image once, into the Arrow cache), workers 0;
  2. `cached`: the same command again, which reuses the cache, workers 0;
  3. `workers`: the cached data with --num-workers W.
Each run's peak resident set size is its own (os.wait4's rusage of that child); training images/s is
`train_images_per_s` of the run's metrics.json. Prints a markdown table and writes JSON under benchmarks/results/.

    python -m benchmarks.data_scale                 # N = 1,000 and 100,000 (building 100k PNGs takes minutes)
    python -m benchmarks.data_scale --tiny          # N = 20 and 200, a few steps (tests/test_data_scale_bench.py)
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import save_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TINY_MODEL = [
    "--codebook-size", "16", "--code-dim", "4", "--base-channels", "8", "--res-blocks", "1",
    "--image-size", "64", "--channels", "3", "--sample-every", "0", "--checkpoint-every", "100000",
]  # fmt: skip


def synthetic_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Noise over a coloured background with a random rectangle and disc: cheap, varied, decodable."""
    img = np.empty((size, size, 3), dtype=np.int16)
    img[:] = rng.integers(0, 256, 3)
    y0, x0 = rng.integers(0, size - 8, 2)
    h, w = rng.integers(6, size // 2, 2)
    img[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
    yy, xx = np.mgrid[:size, :size]
    cy, cx, r = rng.integers(0, size, 3) // 2 + size // 4
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < (r // 2) ** 2] = rng.integers(0, 256, 3)
    img += rng.integers(-12, 13, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_range(args: tuple[Path, int, int]) -> None:
    from PIL import Image

    folder, lo, hi = args
    for i in range(lo, hi):
        rng = np.random.default_rng(i)
        Image.fromarray(synthetic_image(rng)).save(folder / f"class_{i % 10}" / f"{i:06d}.png")


def build_folder(folder: Path, n: int, processes: int = 2) -> float:
    """A folder of n PNGs in 10 class folders (reused when complete); returns the seconds it took to build."""
    marker = folder / ".complete"
    if marker.exists() and marker.read_text() == str(n):
        return 0.0
    shutil.rmtree(folder, ignore_errors=True)
    for c in range(10):
        (folder / f"class_{c}").mkdir(parents=True)
    started = time.perf_counter()
    chunks = [(folder, lo, min(lo + 2000, n)) for lo in range(0, n, 2000)]
    if processes > 1 and n > 2000:
        from multiprocessing import Pool

        with Pool(processes) as pool:
            pool.map(_write_range, chunks)
    else:
        for chunk in chunks:
            _write_range(chunk)
    marker.write_text(str(n))
    return time.perf_counter() - started


def run_tokenize(args: list[str], env: dict) -> dict:
    """One `cli.py tokenize` subprocess: wall seconds, its own peak RSS (MiB), its stderr."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), "tokenize", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
            text=True,
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (Popen has not reaped it)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err_file.seek(0)
        err = err_file.read()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"tokenize failed ({proc.returncode}): {err[-2000:]}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "stderr": err}


def measure_size(n: int, work: Path, steps: int, workers: int, batch_size: int) -> dict:
    folder = work / f"images-{n}"
    build_s = build_folder(folder, n)
    cache = work / f"hf-datasets-{n}"
    shutil.rmtree(cache, ignore_errors=True)  # the first run prepares afresh
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    row = {"images": n, "build_s": build_s}
    for name, n_workers in (("prepare", 0), ("cached", 0), ("workers", workers)):
        run = work / f"run-{n}-{name}"
        args = [
            "--run",
            str(run),
            "--overwrite",
            "--dataset",
            str(folder),
            "--steps",
            str(steps),
            "--batch-size",
            str(batch_size),
            "--num-workers",
            str(n_workers),
            *TINY_MODEL,
        ]
        result = run_tokenize(args, env)
        metrics = json.loads((run / "metrics.json").read_text())["tokenizer"]
        prepared = re.search(r"data: prepared .* in ([0-9.]+) s", result["stderr"])
        reused = re.search(r"data: reusing the prepared cache .* in ([0-9.]+) s", result["stderr"])
        row[name] = {
            "seconds": result["seconds"],
            "peak_rss_mib": result["peak_rss_mib"],
            "train_images_per_s": metrics["train_images_per_s"],
            "workers": n_workers,
            "prepare_s": float(prepared.group(1)) if prepared else None,
            "cache_load_s": float(reused.group(1)) if reused else None,
        }
        shutil.rmtree(run, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="dataset sizes (default 1000 100000)"
    )
    parser.add_argument("--tiny", action="store_true", help="sizes 20 and 200, 3 steps: seconds")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps per run (default 200; tiny 3)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default 64; tiny 8")
    parser.add_argument("--workers", type=int, default=2, help="--num-workers of the third run")
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/vqgen-data-scale"), help="image folders, runs"
    )
    parser.add_argument("--json", type=Path, default=None, help="where the JSON goes")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([20, 200] if args.tiny else [1000, 100_000])
    steps = args.steps or (3 if args.tiny else 200)
    batch = args.batch_size or (8 if args.tiny else 64)
    rows = [measure_size(n, args.work, steps, args.workers, batch) for n in sizes]
    small, large = rows[0], rows[-1]
    ratio = {k: large[k]["peak_rss_mib"] / small[k]["peak_rss_mib"] for k in ("prepare", "cached", "workers")}
    lines = [
        f"| images | build PNGs (s) | prepare (s) | peak RSS prepare run (MiB) | cached reload (s) | "
        f"peak RSS cached run (MiB) | train images/s, 0 workers | train images/s, {args.workers} workers |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['images']:,} | {r['build_s']:.1f} | {r['prepare']['prepare_s']:.1f} | "
            f"{r['prepare']['peak_rss_mib']:.0f} | {r['cached']['cache_load_s']:.2f} | "
            f"{r['cached']['peak_rss_mib']:.0f} | {r['cached']['train_images_per_s']:.0f} | "
            f"{r['workers']['train_images_per_s']:.0f} |"
        )
    lines.append("")
    lines.append(
        f"peak RSS {large['images']:,} / {small['images']:,} images: prepare run {ratio['prepare']:.2f}x, "
        f"cached run {ratio['cached']:.2f}x, with workers {ratio['workers']:.2f}x (target <= 1.3)"
    )
    print("\n".join(lines))
    result = {
        "benchmark": "data_scale",
        "mode": "tiny" if args.tiny else "full",
        "steps": steps,
        "batch_size": batch,
        "cpus": os.cpu_count(),
        "rows": rows,
        "peak_rss_ratio": ratio,
    }
    default = RESULTS / ("data_scale-tiny.json" if args.tiny else "data_scale.json")
    save_result(result, args.json or default)
    return result


if __name__ == "__main__":
    main()
