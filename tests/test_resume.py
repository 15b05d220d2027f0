"""No lost work: a training run killed with SIGKILL at a random step and resumed with --resume ends with exactly the
state (weights, optimizers, plugin state, RNG) and the data order of an uninterrupted run; Ctrl-C saves a
checkpoint and exits; damaged checkpoints and leftovers of interrupted writes are handled; non-finite losses stop a
run with its last good checkpoint intact; an interrupted `generate` resumes to the same files, byte for byte.

The killed runs are real `python cli.py` subprocesses (the point of the test); the uninterrupted reference and the
resumed part run the same CLI commands in this process, on one thread like the subprocesses, to keep the file fast.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_TOKENIZER_FLAGS, LinearTask
from safetensors.torch import load_file
from test_cli_priors import TINY_PRIOR_OPTIONS
from vqgen.cli import app
from vqgen.plugins.base import PluginLoss, TrainingPlugin  # noqa: E402
from vqgen.stages.core.errors import UserError  # noqa: E402
from vqgen.stages.core.registry import PRIORS  # noqa: E402
from vqgen.stages.training import checkpoint as ckpt  # noqa: E402
from vqgen.stages.training.trainer import TrainConfig, Trainer, TrainingStopped  # noqa: E402

STEPS = 12  # 54 training examples in batches of 8: 6 steps per epoch, so every run crosses an epoch boundary
BATCHES_PER_EPOCH = 54 // 8
GAN_FLAGS = [
    "--plugin", "gan", "--plugin-opt", "gan.start_step=3", "--plugin-opt", "gan.disc_warmup_steps=2",
    "--plugin-opt", "gan.channels=8",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def cli_in_process(*args: str) -> None:
    """`python cli.py ARGS` in this process, on one thread as in the subprocesses (same kernels, same bits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert app(list(args), standalone_mode=False) in (None, 0)
    finally:
        torch.set_num_threads(threads)


def start_cli(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, env=ENV, stdout=f, stderr=f
        )


def wait_for(proc: subprocess.Popen, ready, log: Path, what: str, timeout: float = 120) -> None:
    """Poll `ready()` every few milliseconds; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.003)


def newest_step(run_dir: Path) -> int:
    steps = [int(p.name.removeprefix("step_")) for p in ckpt.list_checkpoints(run_dir)]
    return max(steps, default=-1)


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, different


def assert_same_data_order(resumed: Path, reference: Path) -> None:
    """The resumed run consumed exactly the reference's batches, step by step; no example twice in an epoch."""
    lines = (reference / "data_order.txt").read_text().splitlines()
    assert (resumed / "data_order.txt").read_text().splitlines() == lines
    assert [int(line.split("\t")[0]) for line in lines] == list(range(STEPS))
    batches = [[int(i) for i in line.split("\t")[1].split(",")] for line in lines]
    for e in range(0, STEPS, BATCHES_PER_EPOCH):
        epoch = [i for batch in batches[e : e + BATCHES_PER_EPOCH] for i in batch]
        assert len(set(epoch)) == len(epoch) == 8 * BATCHES_PER_EPOCH and max(epoch) < 54


@pytest.fixture(scope="module")
def codes_run(tmp_path_factory, image_folder) -> Path:
    """One tiny tokenizer run whose codes every prior case trains on."""
    run = tmp_path_factory.mktemp("codes") / "run"
    cli_in_process(
        "tokenize", "--run", str(run), "--dataset", str(image_folder), *TINY_TOKENIZER_FLAGS, "--steps", "3"
    )
    return run


def training_case(case: str, root: Path, image_folder: Path, codes_run: Path) -> tuple[list[str], Path]:
    """(CLI arguments of a STEPS-step run writing into `root`, path of its final weights)."""
    common = ["--steps", str(STEPS), "--checkpoint-every", "1", "--record-data-order"]
    if case == "tokenizer+gan":
        args = [
            "tokenize",
            "--run",
            str(root),
            "--dataset",
            str(image_folder),
            *TINY_TOKENIZER_FLAGS,
            *GAN_FLAGS,
        ]
        return [*args, *common], root / "tokenizer" / "model.safetensors"
    opts = [f for o in TINY_PRIOR_OPTIONS.get(case, []) for f in ("--prior-opt", o)]
    args = ["train-prior", "--prior", case, "--codes", str(codes_run / "codes"), "--out", str(root)]
    return [*args, *opts, "--batch-size", "8", "--sample-every", "0", *common], root / "model.safetensors"


CASES = ["tokenizer+gan", *sorted(e.name for e in PRIORS.entries())]


@dataclass
class KilledRun:
    args: list[str]  # the CLI command
    folder: Path
    weights: Path  # its final weights (absent while it runs)
    kill_after: int  # killed as soon as a checkpoint at this step or later exists
    proc: subprocess.Popen
    log: Path


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory, image_folder, codes_run) -> dict[str, KilledRun]:
    """Every case's run, started at once as a `python cli.py` subprocess (they share the start-up time) and
    killed with SIGKILL as soon as it has a checkpoint at or after its own random step."""
    root = tmp_path_factory.mktemp("killed")
    runs = {}
    for case in CASES:
        args, weights = training_case(case, root / case, image_folder, codes_run)
        log = root / f"{case}.log"
        runs[case] = KilledRun(
            args, root / case, weights, random.randint(2, STEPS - 4), start_cli(*args, log=log), log
        )
    pending, deadline = dict(runs), time.monotonic() + 300
    while pending and time.monotonic() < deadline:
        for case, run in list(pending.items()):
            if newest_step(run.folder) >= run.kill_after:
                os.kill(run.proc.pid, signal.SIGKILL)  # wherever it is: mid-step, mid-write, mid-delete
                run.proc.wait()
                del pending[case]
            elif run.proc.poll() is not None:  # ended by itself: its test fails with the log
                del pending[case]
        time.sleep(0.003)
    for run in pending.values():
        run.proc.kill()
        run.proc.wait()
    return runs


@pytest.mark.parametrize("case", CASES)
def test_sigkill_at_a_random_step_then_resume_is_exact(case, killed_runs, tmp_path, image_folder, codes_run):
    run = killed_runs[case]
    assert run.proc.returncode == -signal.SIGKILL, run.log.read_text()[-3000:]
    assert not run.weights.exists()  # killed mid-run, not after it
    print(
        f"{case}: killed once step {run.kill_after} was saved; newest checkpoint: {newest_step(run.folder)}"
    )

    cli_in_process(*run.args, "--resume")
    reference = tmp_path / "reference"
    ref_args, ref_weights = training_case(case, reference, image_folder, codes_run)
    cli_in_process(*ref_args)

    assert_same_tensors(run.weights, ref_weights)
    final, ref_final = (r / "checkpoints" / f"step_{STEPS:07d}" for r in (run.folder, reference))
    assert_same_tensors(
        final / "state.safetensors", ref_final / "state.safetensors"
    )  # optimizers, plugins, RNG
    assert json.loads((final / "state.json").read_text()) == json.loads(
        (ref_final / "state.json").read_text()
    )
    assert_same_data_order(run.folder, reference)
    # keep-last-K (3 by default), and nothing of an interrupted write is left
    names = sorted(p.name for p in (run.folder / "checkpoints").iterdir())
    assert names == [f"step_{s:07d}" for s in range(STEPS - 2, STEPS + 1)], names


def test_ctrl_c_saves_a_checkpoint_between_two_steps_and_exits(tmp_path, codes_run):
    steps, run = 40, tmp_path / "run"
    args = [
        "train-prior", "--prior", "gru", "--codes", str(codes_run / "codes"), "--out", str(run), "--steps", str(steps),
        "--batch-size", "8", "--sample-every", "0", "--checkpoint-every", "1000", "--record-data-order",
        *[f for o in TINY_PRIOR_OPTIONS["gru"] for f in ("--prior-opt", o)],
    ]  # fmt: skip
    log = tmp_path / "run.log"
    proc = start_cli(*args, log=log)
    order = run / "data_order.txt"
    wait_for(proc, lambda: order.exists() and order.read_text().count("\n") >= 3, log, "three training steps")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    output = log.read_text()
    assert "Traceback" not in output and "interrupted: finished work (checkpoints, images) is kept" in output
    (saved,) = ckpt.list_checkpoints(run)  # no periodic checkpoint yet: this one was saved on Ctrl-C ...
    done = order.read_text().count(
        "\n"
    )  # ... after the last step it logged, not in the middle of the next one
    assert 3 <= done < steps and saved.name == f"step_{done:07d}" and ckpt.verify_checkpoint(saved) is None
    assert not (run / "model.safetensors").exists()


def test_damaged_checkpoint_and_write_leftovers(tmp_path, codes_run, capsys):
    run = tmp_path / "run"
    args = [
        "train-prior", "--prior", "gru", "--codes", str(codes_run / "codes"), "--out", str(run), "--steps", "6",
        "--batch-size", "8", "--sample-every", "0", "--checkpoint-every", "2",
        *[f for o in TINY_PRIOR_OPTIONS["gru"] for f in ("--prior-opt", o)],
    ]  # fmt: skip
    cli_in_process(*args)
    uninterrupted = load_file(str(run / "model.safetensors"))
    newest = run / "checkpoints" / "step_0000006" / "state.safetensors"
    newest.write_bytes(newest.read_bytes()[:-10])  # truncated after the write
    leftover = run / "checkpoints" / ".tmp_step_0000008_4242"  # a write that was killed
    leftover.mkdir()
    (leftover / "state.safetensors").write_bytes(b"\0" * 10)
    capsys.readouterr()

    cli_in_process(*args, "--resume")
    err = capsys.readouterr().err
    assert "warning: skipping corrupt checkpoint" in err and "step_0000006" in err
    resumed = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["corrupt_step_0000006", "step_0000002", "step_0000004", "step_0000006"]


def test_a_failed_write_leaves_no_checkpoint_and_the_older_ones_intact(tmp_path, monkeypatch):
    ckpt.write_checkpoint(tmp_path, 1, {"w": torch.ones(3)}, {}, keep=3)

    def disk_full(tensors, path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    from vqgen.stages.artifacts import sharded  # writes a checkpoint's tensor files

    monkeypatch.setattr(sharded, "save_file", disk_full)
    with pytest.raises(UserError, match="no space left on the device of"):  # one line for the user
        ckpt.write_checkpoint(tmp_path, 2, {"w": torch.zeros(3)}, {}, keep=3)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_0000001"]
    assert ckpt.verify_checkpoint(tmp_path / "checkpoints" / "step_0000001") is None


class NaNFrom(TrainingPlugin):
    """Makes every loss from step `start` on non-finite."""

    name, stages = "nan-from", ("toy",)

    def __init__(self, start: int):
        super().__init__(None)
        self.start = start

    def loss(self, ctx, batch, out, step):
        return PluginLoss(torch.tensor(float("nan") if step >= self.start else 0.0))


def test_non_finite_losses_stop_the_run_with_the_last_good_checkpoint_intact(tmp_path):
    cfg = TrainConfig(
        steps=20, batch_size=8, checkpoint_every=2, max_nonfinite=3, sample_every=0, log_every=1
    )
    trainer = Trainer(LinearTask(), cfg, tmp_path, [NaNFrom(start=5)])
    with pytest.raises(
        TrainingStopped, match=r"3 non-finite losses in a row \(last good checkpoint: .*step_0000004"
    ):
        trainer.fit()
    assert trainer.step == 5 and trainer.nonfinite_total == 3  # steps 0-4 done; step 5 skipped three times
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_0000002", "step_0000004"]
    good = tmp_path / "checkpoints" / "step_0000004"
    assert ckpt.verify_checkpoint(good) is None
    tensors, meta = ckpt.read_checkpoint(good)
    assert meta["step"] == 4 and all(
        torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model.")
    )


# --- generate: streaming to disk, interrupted and resumed ---------------------------------------------------
@pytest.fixture(scope="module")
def gru_prior(codes_run) -> Path:
    out = codes_run / "prior-gru"
    opts = [f for o in TINY_PRIOR_OPTIONS["gru"] for f in ("--prior-opt", o)]
    cli_in_process(
        "train-prior",
        "--prior",
        "gru",
        "--codes",
        str(codes_run / "codes"),
        "--out",
        str(out),
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--sample-every",
        "0",
        *opts,
    )
    return out


def files(out: Path) -> dict[str, bytes]:
    """Every file a generation wrote: the grid, the manifest and the images, by name."""
    folder = out.with_suffix("")
    found = {p.name: p.read_bytes() for p in (out, out.with_suffix(".json"))}
    return {**found, **{f"{folder.name}/{p.name}": p.read_bytes() for p in sorted(folder.iterdir())}}


def test_generate_killed_after_the_first_chunk_resumes_to_the_same_files(tmp_path, gru_prior):
    n, chunk = 240, 16
    args = ["generate", "--prior", str(gru_prior), "--n", str(n), "--batch-size", str(chunk)]
    out, reference = tmp_path / "killed" / "gen.png", tmp_path / "reference" / "gen.png"
    log = tmp_path / "killed.log"
    proc = start_cli(*args, "--out", str(out), log=log)
    first_chunk = [out.with_suffix("") / f"{i:05d}_label{i // (n // 10)}.png" for i in range(chunk)]
    wait_for(proc, lambda: all(p.exists() for p in first_chunk), log, "the first chunk")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    written = len(list(out.with_suffix("").glob("*.png")))
    assert chunk <= written < n and not out.exists(), written

    cli_in_process(*args, "--out", str(out), "--resume")
    cli_in_process(*args, "--out", str(reference))
    assert files(out) == files(reference) and len(files(out)) == n + 2 + n // chunk  # + one record per chunk


def test_generate_crash_mid_chunk_then_resume(tmp_path, gru_prior, monkeypatch):
    from vqgen.stages.commands import generate as M  # where generate looks up save_png

    args = ["generate", "--prior", str(gru_prior), "--n", "60", "--batch-size", "16", "--label", "3"]
    out, reference = tmp_path / "crashed.png", tmp_path / "crashed-ref" / "crashed.png"
    save_png, written = M.save_png, []

    def crash_at_image_20(image, path):
        if len(written) == 20:  # in the middle of the second chunk, with a half-written temporary file
            Path(path).with_name(f".{Path(path).name}.k1ll3d.tmp").write_bytes(b"\x89PNG partial")
            raise RuntimeError("killed")
        written.append(path)
        save_png(image, path)

    monkeypatch.setattr(M, "save_png", crash_at_image_20)
    with pytest.raises(RuntimeError, match="killed"):
        cli_in_process(*args, "--out", str(out))
    monkeypatch.setattr(M, "save_png", save_png)
    with pytest.raises(UserError, match="--resume: seed was 0 and is now 1"):
        cli_in_process(*args, "--out", str(out), "--resume", "--seed", "1")
    with pytest.raises(UserError, match="--overwrite to replace it, --resume to continue it"):
        cli_in_process(*args, "--out", str(out))

    cli_in_process(*args, "--out", str(out), "--resume")
    cli_in_process(*args, "--out", str(reference))
    assert (
        files(out) == files(reference) and len(files(out)) == 62 + 4
    )  # 60 images, grid, manifest, 4 records
    assert json.loads(out.with_suffix(".json").read_text())["complete"] is True
    with pytest.raises(UserError, match="already complete"):
        cli_in_process(*args, "--out", str(out), "--resume")
    shutil.rmtree(reference.parent)


def test_generate_resume_redoes_a_chunk_whose_image_was_damaged(tmp_path, gru_prior, monkeypatch):
    """--resume keeps only images it can verify (size and sha256 in each chunk's record)."""
    from vqgen.stages.commands import generate as G

    args = ["generate", "--prior", str(gru_prior), "--n", "48", "--batch-size", "16", "--label", "2"]
    out, reference = tmp_path / "damaged.png", tmp_path / "reference" / "damaged.png"
    save_png, written = G.save_png, []

    def crash_in_the_third_chunk(image, path):
        if len(written) == 40:
            raise RuntimeError("killed")
        written.append(path)
        save_png(image, path)

    monkeypatch.setattr(G, "save_png", crash_in_the_third_chunk)
    with pytest.raises(RuntimeError, match="killed"):
        cli_in_process(*args, "--out", str(out))
    monkeypatch.setattr(G, "save_png", save_png)
    folder = out.with_suffix("")
    victim = folder / "00003_label2.png"  # chunk 0, complete and recorded
    victim.write_bytes(victim.read_bytes()[:-7] + b"garbage")  # same size, other bytes
    (folder / "00020_label2.png").unlink()  # chunk 1, recorded, one image gone
    cli_in_process(*args, "--out", str(out), "--resume")
    cli_in_process(*args, "--out", str(reference))
    assert files(out) == files(reference)
