"""A trained tokenizer on the real MNIST test split (10,000 digits the embedded training data does not contain).

    python -m benchmarks.tokenizer_quality --tokenizer runs/demo/tokenizer [--json OUT]

Prints PSNR, SSIM, MSE, codebook usage, perplexity, dead codes and encode+decode images/s; writes JSON
(default: beside the tokenizer, as mnist_test_metrics.json).
"""

import argparse
import json
from pathlib import Path

from vqgen.stages.artifacts.models import load_tokenizer
from vqgen.stages.data.images import to_uint8
from vqgen.stages.evaluation.tokenizer import evaluate_tokenizer

from benchmarks.prior_quality import mnist_test

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "runs" / "demo" / "tokenizer")
    parser.add_argument("--mnist-test", type=Path, default=ROOT.parent / "shared" / "data" / "mnist-test")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    images, _ = mnist_test(args.mnist_test)
    metrics, _ = evaluate_tokenizer(load_tokenizer(args.tokenizer), to_uint8(images))
    print("| PSNR (dB) | SSIM | MSE | codebook usage | perplexity | dead codes | images/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    m = metrics
    print(
        f"| {m['psnr']:.2f} | {m['ssim']:.3f} | {m['mse']:.5f} | {m['codebook_usage']:.1%} | {m['perplexity']:.0f} "
        f"| {m['dead_codes']} | {m['images_per_s']:.0f} |"
    )
    out = args.json or args.tokenizer.parent / "mnist_test_metrics.json"
    out.write_text(json.dumps(metrics, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
