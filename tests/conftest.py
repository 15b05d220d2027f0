"""Shared fixtures: a tiny labelled image folder made from the embedded digits, tiny model flags, a CLI runner."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MNIST_TEST = ROOT.parent / "shared" / "data" / "mnist-test"

# A tokenizer small enough to train a few steps in a second or two.
TINY_TOKENIZER_FLAGS = [
    "--codebook-size", "16", "--code-dim", "4", "--base-channels", "8", "--res-blocks", "1",
    "--batch-size", "8", "--sample-every", "0",
]  # fmt: skip


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """60 embedded digits (6 per class) as (N, 28, 28) uint8 and labels."""
    from datasets import Dataset

    ds = Dataset.from_parquet(str(ROOT / "stages" / "data" / "assets" / "mnist5k-heldout.parquet"))
    labels = np.array(ds["label"])
    keep = np.concatenate([np.flatnonzero(labels == d)[:6] for d in range(10)])
    images = np.stack([np.array(ds[int(i)]["image"]) for i in keep])
    return images, labels[keep]


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory, digits) -> Path:
    """class subfolders 0..9 with 6 PNG digits each."""
    root = tmp_path_factory.mktemp("folder")
    images, labels = digits
    for i, (img, lab) in enumerate(zip(images, labels)):
        (root / str(lab)).mkdir(exist_ok=True)
        Image.fromarray(img, mode="L").save(root / str(lab) / f"{i}.png")
    return root


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python cli.py ARGS` in a subprocess, as a user runs it."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd or ROOT, env=full_env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one line on stderr mentioning each fragment, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
