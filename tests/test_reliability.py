"""Issue 16, reliability round two: locked run folders, models checked before they are built, secrets never
echoed, and images that are not silently changed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY_TOKENIZER_FLAGS, assert_user_error, run_cli
from vqgen.stages.artifacts.runs import LOCK_FILE, hold_lock, prepare_run_dir, release_locks, run_lock
from vqgen.stages.core.errors import UserError

# --- 1. locked run folders ---------------------------------------------------------------------------------------


def cli_process(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_two_commands_on_one_run_folder_one_proceeds(tmp_path, image_folder):
    """Two `tokenize` processes started at once on one --run: exactly one trains, the other is refused in one
    line naming the pid of the one that holds the folder. Three rounds, each on a fresh folder."""
    for round_ in range(3):
        run = tmp_path / f"run{round_}"
        args = (
            "tokenize",
            "--run",
            str(run),
            "--dataset",
            str(image_folder),
            *TINY_TOKENIZER_FLAGS,
            "--steps",
            "20",
        )
        procs = [cli_process(*args), cli_process(*args)]
        results = [(p, *p.communicate(timeout=600)) for p in procs]
        codes = sorted(p.returncode for p, _, _ in results)
        assert codes == [0, 2], [(p.returncode, err[-2000:]) for p, _, err in results]
        (winner, *_), (loser, _, err) = sorted(results, key=lambda r: r[0].returncode)
        result = subprocess.CompletedProcess(loser.args, loser.returncode, "", err)
        assert_user_error(result, "in use by another vqgen command", f"pid {winner.pid}")
        assert (run / "tokenizer" / "model.safetensors").is_file()
        assert not (run / LOCK_FILE).exists()  # released when the winner finished


def test_the_lock_of_a_killed_command_is_taken_over(tmp_path, image_folder):
    run = tmp_path / "run"
    args = ("tokenize", "--run", str(run), "--dataset", str(image_folder), *TINY_TOKENIZER_FLAGS)
    proc = cli_process(*args, "--steps", "100000")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            lock = run / LOCK_FILE
            if lock.is_file() and lock.read_text().strip() == str(proc.pid):
                break
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.1)
        else:
            pytest.fail("the command never took its lock")
        with pytest.raises(UserError, match=f"pid {proc.pid}"):  # held: refused
            prepare_run_dir(run, overwrite=True, resume=False)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert (run / LOCK_FILE).read_text().strip() == str(proc.pid)  # left behind by the killed process ...
    result = run_cli(*args, "--steps", "2", "--overwrite")  # ... and taken over
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "tokenizer" / "model.safetensors").is_file() and not (run / LOCK_FILE).exists()


def test_the_lock_file_is_not_a_run_and_resume_still_works(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text("999999\n")  # a stale lock and nothing else: no run
    with pytest.raises(UserError, match="holds no run to continue"):
        prepare_run_dir(run, overwrite=False, resume=True)
    assert prepare_run_dir(run, overwrite=False, resume=False) == run  # a fresh run may start there
    assert (run / LOCK_FILE).read_text().strip() == str(os.getpid())
    (run / "metrics.json").write_text("{}")
    assert prepare_run_dir(run, overwrite=False, resume=True) == run  # re-entrant within one process
    release_locks()
    assert not (run / LOCK_FILE).exists()
    assert prepare_run_dir(run, overwrite=False, resume=True) == run
    assert prepare_run_dir(run, overwrite=True, resume=False) == run  # cleared, all but its own lock file
    assert [p.name for p in run.iterdir()] == [LOCK_FILE]
    release_locks()


def test_a_held_lock_refuses_every_writer_and_a_refusal_leaves_nothing(tmp_path):
    """Another process holds the folders: prepare_run_dir and hold_lock are refused naming its pid, and a refused
    command does not leave the folder it would have created."""
    code = (
        "import sys, time; from vqgen.stages.artifacts.runs import hold_lock\n"
        "[hold_lock(p) for p in sys.argv[1:]]; print('locked', flush=True); time.sleep(60)"
    )
    held, fresh = tmp_path / "held", tmp_path / "new" / "deeper"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(held)], cwd=ROOT.parent, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for attempt in (
            lambda: prepare_run_dir(held, overwrite=False, resume=False),
            lambda: prepare_run_dir(held, overwrite=True, resume=False),
            lambda: hold_lock(held),
        ):
            with pytest.raises(UserError, match=f"in use by another vqgen command \\(pid {holder.pid}\\)"):
                attempt()
        with run_lock(fresh):
            assert (fresh / LOCK_FILE).is_file()
        assert not (tmp_path / "new").exists()  # created for the lock only, so removed with it
    finally:
        holder.kill()
        holder.wait()
    with run_lock(held):  # taken over from the killed holder
        assert (held / LOCK_FILE).read_text().strip() == str(os.getpid())


# --- 2. models checked before they are built ---------------------------------------------------------------------


@pytest.fixture
def tiny_prior(tmp_path) -> Path:
    """A tiny saved GRU prior folder (config.json + model.safetensors)."""
    from vqgen.priors.gru import GRUPrior, GRUPriorConfig
    from vqgen.stages.artifacts.models import save_model

    config = GRUPriorConfig(vocab_size=16, grid_height=4, grid_width=4, num_classes=3, embed_dim=8, hidden_size=8,
                            num_layers=1, dropout=0.0)  # fmt: skip
    folder = tmp_path / "prior"
    save_model(GRUPrior(config), folder)
    return folder


def edit_weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def first_float(tensors) -> str:
    return sorted(k for k, v in tensors.items() if v.is_floating_point())[0]


def test_a_sane_prior_still_loads(tiny_prior):
    from vqgen.stages.artifacts.models import load_prior

    assert load_prior(tiny_prior).config.num_layers == 1


def test_a_config_edited_to_a_million_layers_is_refused_at_once(tiny_prior):
    """Refused in well under a second, and without the memory a million layers would take: in a fresh process,
    so that its peak RSS is this load's alone."""
    import shutil

    shutil.copytree(tiny_prior, tiny_prior.parent / "intact")
    config = json.loads((tiny_prior / "config.json").read_text())
    (tiny_prior / "config.json").write_text(json.dumps({**config, "num_layers": 1_000_000}))
    code = (
        "import json, resource, sys, time\n"
        "from vqgen.stages.artifacts.models import load_prior\n"
        "from vqgen.stages.core.errors import UserError\n"
        "load_prior(sys.argv[2])  # imports and first-call costs are not what is measured\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        "try:\n    load_prior(sys.argv[1]); message = None\n"
        "except UserError as exc:\n    message = str(exc)\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'message': message,\n"
        "    'rss_mb': (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tiny_prior), str(tiny_prior.parent / "intact")], cwd=ROOT.parent, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["message"] and "far larger than model.safetensors" in result["message"], result
    assert "\n" not in result["message"]
    assert result["seconds"] < 1.0, result  # measured: about 0.01 s
    assert result["rss_mb"] < 200, result


@pytest.mark.parametrize(
    "edit,fragments",
    [
        pytest.param(lambda t: t.update({k: v.bfloat16() for k, v in t.items() if v.is_floating_point()}),
                     ("is BF16", "float32"), id="bf16"),
        pytest.param(lambda t: t.update({k: v.half() for k, v in t.items() if v.is_floating_point()}),
                     ("is F16", "float32"), id="fp16"),
        pytest.param(lambda t: t.update({first_float(t): (t[first_float(t)] * 100).to(__import__("torch").int8)}),
                     ("is I8",), id="int8"),
        pytest.param(lambda t: t.update({first_float(t): t[first_float(t)] > 0}), ("is BOOL",), id="bool"),
        pytest.param(lambda t: t.update({k: v * float("nan") for k, v in t.items() if v.is_floating_point()}),
                     ("NaN or infinite",), id="all-nan"),
        pytest.param(lambda t: t[first_float(t)].view(-1).__setitem__(0, float("inf")), ("1 NaN or infinite",),
                     id="one-inf"),
        pytest.param(lambda t: t.update({first_float(t): t[first_float(t)].reshape(-1)[:-1].clone()}),
                     ("size mismatch for",), id="wrong-shape"),
        pytest.param(lambda t: t.pop(first_float(t)), ("missing tensor(s)",), id="missing-tensor"),
        pytest.param(lambda t: t.update(extra=t[first_float(t)].clone()), ("unexpected tensor(s) extra",),
                     id="extra-tensor"),
    ],
)  # fmt: skip
def test_bad_weights_are_refused_in_one_line(tiny_prior, edit, fragments):
    from safetensors.torch import load_file
    from vqgen.stages.artifacts.models import load_prior

    name = first_float(load_file(str(tiny_prior / "model.safetensors")))
    edit_weights(tiny_prior, edit)
    with pytest.raises(UserError) as info:
        load_prior(tiny_prior)
    message = str(info.value)
    assert "\n" not in message and "model.safetensors" in message
    for fragment in fragments:
        assert fragment in message, message
    if "missing" not in fragments[0] and "unexpected" not in fragments[0] and "NaN" not in fragments[0]:
        assert name in message or "BF16" in message or "F16" in message, message


def test_integer_and_bool_buffers_of_a_tokenizer_still_load(tmp_path):
    """The quantizer stores `steps` (int64) and `initialised` (bool) itself: those dtypes are the model's own."""
    from vqgen.stages.artifacts.models import load_tokenizer, save_model
    from vqgen.stages.tokenizer.model import VQVAE, TokenizerConfig
    from vqgen.stages.tokenizer.quantizer import QuantizerConfig

    model = VQVAE(TokenizerConfig(base_channels=8, num_res_blocks=1, quantizer=QuantizerConfig(codebook_size=8,
                                                                                                code_dim=4)))  # fmt: skip
    save_model(model, tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.quantizer.steps.dtype == model.quantizer.steps.dtype
    assert loaded.fingerprint() == model.fingerprint()
