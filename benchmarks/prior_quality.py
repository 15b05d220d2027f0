"""Do the priors produce the digit they are asked for? One table for every prior trained on the same codes.

    python -m benchmarks.prior_quality --run runs/demo [--priors gru pixelcnn transformer] [--per-class 50]

For each prior: trains it with the default settings on RUN/codes if RUN/prior-NAME does not exist yet (timed),
samples `--per-class` images for each class, and asks a small CNN classifier (trained on the embedded digits,
cached in RUN/classifier, its accuracy on the real MNIST test split reported) which digit each image shows.
Reports validation NLL (bits per token), training time, class accuracy of the samples and sampling tokens/s.
Prints a markdown table and writes JSON (default RUN/prior_quality.json).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from vqgen.priors import SamplingOptions
from vqgen.stages.artifacts.models import load_prior, load_tokenizer
from vqgen.stages.commands.train_prior import PriorTrainConfig, run_train_prior
from vqgen.stages.data.eval_images import read_idx
from vqgen.stages.data.images import DataConfig, to_float
from vqgen.stages.data.pixels import pixel_tensor
from vqgen.stages.data.sources import load_image_splits
from vqgen.stages.evaluation.classifier import ClassifierConfig, accuracy, load_or_train
from vqgen.stages.sampling.sampler import check_pair

ROOT = Path(__file__).resolve().parents[1]


def mnist_test(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(folder / "t10k-images-idx3-ubyte.gz")[:, None]
    y = read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    return to_float(torch.from_numpy(x.copy())), torch.from_numpy(y.astype(np.int64))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--priors", nargs="+", default=["gru", "pixelcnn", "transformer"])
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--cfg-scale", type=float, default=3.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--mnist-test", type=Path, default=ROOT.parent / "shared" / "data" / "mnist-test")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def digit_classifier(run: Path, mnist_test_folder: Path) -> tuple[torch.nn.Module, float]:
    """The classifier trained on the embedded digits (cached in RUN/classifier) and its MNIST test accuracy."""
    splits = load_image_splits(DataConfig())
    train_x = to_float(torch.cat([pixel_tensor(splits.train), pixel_tensor(splits.heldout)]))
    train_y = torch.cat(
        [
            torch.as_tensor(np.asarray(s.with_format("numpy")[:]["label"]))
            for s in (splits.train, splits.heldout)
        ]
    )
    start = time.perf_counter()
    classifier = load_or_train(run / "classifier", train_x, train_y, ClassifierConfig())
    test_x, test_y = mnist_test(mnist_test_folder)
    clf_acc = accuracy(classifier, test_x, test_y)
    print(f"classifier: {clf_acc:.2%} on the MNIST test split ({time.perf_counter() - start:.0f} s)")
    return classifier, clf_acc


def score_prior(name: str, args: argparse.Namespace, tokenizer, classifier) -> dict:
    """RUN/prior-NAME (trained with the defaults if missing): its NLL and training time, and how many of its
    samples the classifier reads as the class asked for."""
    folder = args.run / f"prior-{name}"
    if not (folder / "model.safetensors").is_file():
        run_train_prior(PriorTrainConfig(codes=str(args.run / "codes"), prior=name))
    metrics = json.loads((folder / "metrics.json").read_text())["prior"]
    prior = load_prior(folder).eval()
    check_pair(prior, tokenizer)
    k = prior.config.num_classes
    labels = torch.arange(k).repeat_interleave(args.per_class)
    gen = torch.Generator().manual_seed(0)
    options = SamplingOptions(temperature=args.temperature, cfg_scale=args.cfg_scale)
    t0 = time.perf_counter()
    grids = torch.cat(
        [prior.sample(chunk.numel(), chunk, options, generator=gen) for chunk in labels.split(100)]
    )
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        images = tokenizer.decode(grids)
    per_class = [accuracy(classifier, images[labels == c], labels[labels == c]) for c in range(k)]
    return {
        "prior": name,
        "val_bits_per_token": metrics["val_bits_per_token"],
        "train_seconds": metrics["train_seconds"],
        "parameters": metrics["parameters"],
        "class_accuracy": accuracy(classifier, images, labels),
        "worst_class_accuracy": min(per_class),
        "sampling_tokens_per_s": labels.numel() * prior.config.seq_len / seconds,
    }


def print_table(rows: list[dict]) -> None:
    print(
        "\n| prior | val NLL (bits/token) | train time (s) | parameters | samples classified as asked | worst class "
        "| sampling tokens/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['prior']} | {r['val_bits_per_token']:.3f} | {r['train_seconds']:.0f} | {r['parameters']:,} | "
            f"{r['class_accuracy']:.1%} | {r['worst_class_accuracy']:.1%} | {r['sampling_tokens_per_s']:,.0f} |"
        )


def main() -> None:
    args = parse_args()
    classifier, clf_acc = digit_classifier(args.run, args.mnist_test)
    tokenizer = load_tokenizer(args.run / "tokenizer").eval()
    rows = [score_prior(name, args, tokenizer, classifier) for name in args.priors]
    print_table(rows)
    out = args.json or args.run / "prior_quality.json"
    result = {
        "classifier_mnist_test_accuracy": clf_acc,
        "per_class": args.per_class,
        "cfg_scale": args.cfg_scale,
        "temperature": args.temperature,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "priors": rows,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
