"""Shared fixtures and helpers: a tiny labelled image folder made from the embedded digits, tiny model flags, the
CLI run as a process (`run_cli`) or in this process (`call_cli`), and a toy training task (`LinearTask`)."""

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
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
        [sys.executable, str(ROOT / "cli.py"), *args],
        cwd=cwd or ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one line on stderr mentioning each fragment, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@dataclass
class Answer:
    code: int
    out: str
    err: str


def call_cli(*args: str) -> Answer:
    """`python cli.py ARGS`, in this process: exit code, stdout and stderr. An exception that main() lets through
    (a traceback for the user) propagates and fails the test."""
    import vqgen.cli as cli

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["cli.py", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    return Answer(code, out.getvalue(), err.getvalue())


class LinearTask:
    """A toy stage: a linear model fitted to random vectors."""

    stage, progress_keys = "toy", ()

    def __init__(self):
        import torch

        torch.manual_seed(0)
        self.model, self.x = torch.nn.Linear(4, 1), torch.randn(32, 4)

    def num_examples(self) -> int:
        return 32

    def get_batch(self, indices, device):
        return self.x[indices].to(device)

    def compute_loss(self, model, batch):
        out = model(batch)
        return out.pow(2).mean(), out, {}

    def save_samples(self, model, step, run_dir):
        pass
