"""Issue 26, reliability round three: `--overwrite` never destroys before it is sure, real full disks, config files
with limits, one declared range per field, a lock file that follows no link, a user's data as it really is, and
runs that can move. The commands run in this process (`call_cli`, as tests/test_bad_inputs.py) unless a real
process is the point."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY_TOKENIZER_FLAGS
from test_bad_inputs import GRU_FLAGS, assert_one_line_error, call_cli, snapshot
from vqgen.stages.artifacts import replaced
from vqgen.stages.artifacts.runs import LOCK_FILE

STEPS = ["--steps", "2", "--checkpoint-every", "1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, image_folder) -> Path:
    """A finished tiny run (tokenizer, codes, prior-gru), made with --overwrite so that its run_config.json records
    `overwrite: true`; tests copy it before they change anything."""
    root = tmp_path_factory.mktemp("finished")
    run = root / "run"
    made = call_cli(
        "tokenize", "--run", run, "--dataset", image_folder, *TINY_TOKENIZER_FLAGS, *STEPS, "--overwrite"
    )
    assert made.code == 0, made.err[-3000:]
    prior = call_cli("train-prior", "--codes", run / "codes", *GRU_FLAGS, "--batch-size", "8", *STEPS)
    assert prior.code == 0, prior.err[-3000:]
    return run


def copy_run(finished: Path, to: Path) -> Path:
    subprocess.run(["cp", "-a", str(finished), str(to)], check=True)
    return to


def no_bookkeeping_left(folder: Path) -> None:
    left = [p.name for p in Path(folder).rglob(".vqgen*")]
    assert not left, left


# --- 1. --overwrite changes nothing until the new run is safe -----------------------------------------------------


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--dataset", "{missing}"], "no such folder"),
        (["--dataset", "{digits}", "--batch-size", "1000"], "fewer than one batch of 1000"),
        (["--dataset", "{digits}", "--config", "{bad_config}"], "log-every must lie in [1,"),
    ],
    ids=["dataset-missing", "batch-larger-than-data", "config-out-of-range"],
)
def test_a_refused_overwrite_leaves_the_old_run_as_it_was(tmp_path, finished, image_folder, args, fragment):
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    (tmp_path / "bad.yaml").write_text("log_every: 0\n")
    places = {"missing": tmp_path / "nope", "digits": image_folder, "bad_config": tmp_path / "bad.yaml"}
    args = [a.format(**places) for a in args]
    flags = [*TINY_TOKENIZER_FLAGS, *STEPS]
    assert_one_line_error(call_cli("tokenize", "--run", run, *flags, *args, "--overwrite"), fragment)
    assert snapshot(run) == before  # every file back, same size, same modification time
    no_bookkeeping_left(run)


def test_an_overwrite_replaces_the_run_once_it_has_a_checkpoint(tmp_path, finished, image_folder):
    run = copy_run(finished, tmp_path / "run")
    (run / "prior-gru" / "keepsake.txt").write_text("from the old run")
    answer = call_cli(
        "tokenize", "--run", run, "--dataset", image_folder, *TINY_TOKENIZER_FLAGS, *STEPS, "--overwrite"
    )
    assert answer.code == 0, answer.err[-3000:]
    assert not (run / "prior-gru").exists()  # the old run is gone only now
    assert (run / "tokenizer" / "model.safetensors").is_file()
    no_bookkeeping_left(run)


def test_a_saved_run_config_never_overwrites_another_run(tmp_path, finished):
    """run_config.json records `overwrite: true` and its own folder; reused as --config it replaces nothing."""
    saved = json.loads((finished / "run_config.json").read_text())
    assert saved["overwrite"] is True and saved["run_dir"] == "."  # as the run recorded it
    other = copy_run(finished, tmp_path / "other")
    before = snapshot(other)
    answer = call_cli("tokenize", "--config", finished / "run_config.json", "--run", other)
    assert_one_line_error(answer, "already holds a run")
    assert "overwrite, resume, run_dir ignored" in answer.err
    assert snapshot(other) == before


def test_a_killed_overwrite_puts_the_old_run_back(tmp_path, finished, image_folder):
    """A real process killed (SIGKILL) after it set the old run aside and before its first checkpoint: the next
    command on the folder moves the old run back before it looks at it."""
    run = copy_run(finished, tmp_path / "run")
    before = snapshot(run)
    args = ["--run", str(run), "--dataset", str(image_folder), *TINY_TOKENIZER_FLAGS]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "tokenize", *args, "--steps", "100000", "--checkpoint-every",
         "100000", "--overwrite"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / replaced.ASIDE).is_dir():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.05)
        time.sleep(1.0)  # let it write into the folder
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    answer = call_cli("tokenize", *args, "--steps", "2")
    assert_one_line_error(answer, "already holds a run")
    assert "what it replaced is back in place" in answer.err
    assert {k: v for k, v in snapshot(run).items() if k != LOCK_FILE} == before
    no_bookkeeping_left(run)


# --- 3. config files read with limits -----------------------------------------------------------------------------

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


@pytest.mark.parametrize(
    "name,text,fragment",
    [
        ("bomb.yaml", ALIAS_BOMB, "anchors and aliases"),
        ("self.yaml", "steps: &s [*s]\n", "anchors and aliases"),
        ("numeric-key.yaml", "1: 2\n", "option names must be text"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested more than 16 deep"),
        ("deep.yaml", "a:\n" + "".join(" " * i + "- \n" for i in range(1, 40)), "nested more than 16 deep"),
        ("big.yaml", "# " + "x" * (1 << 20) + "\n", "larger than 1 MiB"),
        ("not-utf8.yaml", b"steps: \xff\n", "cannot read it"),
    ],
)
def test_config_files_are_read_with_limits(tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    started = time.perf_counter()
    answer = call_cli("tokenize", "--run", tmp_path / "new", "--config", path)
    assert_one_line_error(answer, fragment)
    assert time.perf_counter() - started < 10 and not (tmp_path / "new").exists()


def test_a_device_file_is_not_a_config_file(tmp_path):
    assert_one_line_error(
        call_cli("tokenize", "--run", tmp_path / "new", "--config", "/dev/zero"), "not a regular file"
    )
    assert not (tmp_path / "new").exists()


# --- 4. one declared range per field, from a flag, a file or a saved run ----------------------------------------


@pytest.mark.parametrize(
    "text,fragment",
    [
        ('{"log_every": 0}', "--log-every must lie in [1,"),
        ('{"warmup_steps": 1e400}', "warmup_steps should be int"),
        ('{"warmup_steps": 2.5}', "warmup_steps should be int"),
        ('{"min_lr_ratio": -5}', "--min-lr-ratio must lie in [0.0, 1.0], got -5"),
        ('{"clip_grad": NaN}', "--clip-grad must be a finite number, got nan"),
        ('{"max_rollback_share": NaN}', "--max-rollback-share must be a finite number"),
        ('{"rollback_lr_factor": 0}', "--rollback-lr-factor must lie in"),
        ('{"snapshot_every": -1}', "--snapshot-every must lie in [1,"),
        ('{"heldout_fraction": 2}', "--heldout-fraction must lie in"),
        ('{"eval_batch_size": 0}', "--eval-batch-size must lie in [1,"),
    ],
)
def test_every_field_has_its_range_in_a_config_file(tmp_path, text, fragment):
    (tmp_path / "c.json").write_text(text)
    answer = call_cli("tokenize", "--run", tmp_path / "new", "--config", tmp_path / "c.json")
    assert_one_line_error(answer, fragment)
    assert not (tmp_path / "new").exists()


def test_a_flag_has_the_same_range(tmp_path):
    for flag, value, fragment in (("--lr", "nan", "'--lr'"), ("--steps", "0", "greater than or equal to 1")):
        assert_one_line_error(call_cli("tokenize", "--run", tmp_path / "new", flag, value), fragment)
    assert not (tmp_path / "new").exists()


def test_a_saved_run_edited_out_of_range_is_refused_on_resume(tmp_path, finished):
    run = copy_run(finished, tmp_path / "run")
    saved = json.loads((run / "run_config.json").read_text())
    saved["train"]["log_every"] = 0
    (run / "run_config.json").write_text(json.dumps(saved))
    before = snapshot(run)
    assert_one_line_error(call_cli("tokenize", "--run", run, "--resume"), "--log-every must lie in [1,")
    assert snapshot(run) == before


# --- 6. a hand-edited run_config.json that no longer fits its checkpoint ------------------------------------------


def test_a_run_config_edited_to_another_model_is_one_line_on_resume(tmp_path, finished):
    run = copy_run(finished, tmp_path / "run")
    saved = json.loads((run / "prior-gru" / "run_config.json").read_text())
    saved["prior_options"]["hidden_size"] = "12"
    (run / "prior-gru" / "run_config.json").write_text(json.dumps(saved))
    answer = call_cli("train-prior", "--codes", run / "codes", "--resume", "--steps", "3")
    assert_one_line_error(answer, "does not fit the model that run_config.json describes")


# --- 7. runs that move --------------------------------------------------------------------------------------------


def test_a_moved_run_resumes(tmp_path, finished):
    run = copy_run(finished, tmp_path / "first")
    moved = tmp_path / "elsewhere" / "second"
    moved.parent.mkdir()
    os.replace(run, moved)
    answer = call_cli("tokenize", "--run", moved, "--resume", "--steps", "3")
    assert answer.code == 0, answer.err[-3000:]
    answer = call_cli(
        "train-prior", "--out", moved / "prior-gru", "--resume", "--steps", "3"
    )  # codes: from the run
    assert answer.code == 0, answer.err[-3000:]
    assert json.loads((moved / "prior-gru" / "run_config.json").read_text())["codes"] == "../codes"
