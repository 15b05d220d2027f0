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
from conftest import ROOT, TINY_TOKENIZER_FLAGS, LinearTask, assert_user_error, run_cli
from vqgen.stages.artifacts import replaced
from vqgen.stages.artifacts.runs import LOCK_FILE, hold_lock, prepare_run_dir, release_locks, run_lock
from vqgen.stages.core.errors import UserError

# --- 1. locked run folders ---------------------------------------------------------------------------------------


def cli_process(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


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
    assert prepare_run_dir(run, overwrite=True, resume=False) == run  # set aside until the new run is safe
    assert sorted(p.name for p in run.iterdir()) == [replaced.ASIDE, LOCK_FILE]
    replaced.commit(run)  # (the trainer does it after the first checkpoint): then cleared, all but the lock
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

    config = GRUPriorConfig(
        vocab_size=16,
        grid_height=4,
        grid_width=4,
        num_classes=3,
        embed_dim=8,
        hidden_size=8,
        num_layers=1,
        dropout=0.0,
    )
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
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_prior), str(tiny_prior.parent / "intact")],
        cwd=ROOT.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["message"] and "far larger than model.safetensors" in result["message"], result
    assert "\n" not in result["message"]
    assert result["seconds"] < 1.0, result  # measured: about 0.01 s
    assert result["rss_mb"] < 200, result


@pytest.mark.parametrize(
    "edit,fragments",
    [
        pytest.param(
            lambda t: t.update({k: v.bfloat16() for k, v in t.items() if v.is_floating_point()}),
            ("is BF16", "float32"),
            id="bf16",
        ),
        pytest.param(
            lambda t: t.update({k: v.half() for k, v in t.items() if v.is_floating_point()}),
            ("is F16", "float32"),
            id="fp16",
        ),
        pytest.param(
            lambda t: t.update({first_float(t): (t[first_float(t)] * 100).to(__import__("torch").int8)}),
            ("is I8",),
            id="int8",
        ),
        pytest.param(lambda t: t.update({first_float(t): t[first_float(t)] > 0}), ("is BOOL",), id="bool"),
        pytest.param(
            lambda t: t.update({k: v * float("nan") for k, v in t.items() if v.is_floating_point()}),
            ("NaN or infinite",),
            id="all-nan",
        ),
        pytest.param(
            lambda t: t[first_float(t)].view(-1).__setitem__(0, float("inf")),
            ("1 NaN or infinite",),
            id="one-inf",
        ),
        pytest.param(
            lambda t: t.update({first_float(t): t[first_float(t)].reshape(-1)[:-1].clone()}),
            ("size mismatch for",),
            id="wrong-shape",
        ),
        pytest.param(lambda t: t.pop(first_float(t)), ("missing tensor(s)",), id="missing-tensor"),
        pytest.param(
            lambda t: t.update(extra=t[first_float(t)].clone()),
            ("unexpected tensor(s) extra",),
            id="extra-tensor",
        ),
    ],
)
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
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig

    model = VQVAE(
        VQVAEConfig(base_channels=8, num_res_blocks=1, quantizer=QuantizerConfig(codebook_size=8, code_dim=4))
    )
    save_model(model, tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.quantizer.steps.dtype == model.quantizer.steps.dtype
    assert loaded.fingerprint() == model.fingerprint()


# --- 3. secrets never echoed -------------------------------------------------------------------------------------

SECRET_TOKEN = "hf_SECRETtoken123456"


def test_redact():
    from vqgen.stages.core.errors import one_line, redact

    assert redact(f"token {SECRET_TOKEN} sent") == "token *** sent"
    assert SECRET_TOKEN not in redact(f"Authorization: Bearer {SECRET_TOKEN}")
    assert redact("authorization: Basic dXNlcjpwYXNz") == "authorization: ***"
    assert redact('{"Authorization": "Bearer abc.def"}') == '{"Authorization": "***"}'
    assert redact("sent bearer abc.def here") == "sent bearer *** here"
    assert redact("GET https://user:pass@hub.example/api") == "GET https://***@hub.example/api"
    assert redact("http://me@127.0.0.1:8000/x") == "http://***@127.0.0.1:8000/x"
    for kept in ("http://127.0.0.1:8000/a@b", "/home/me/hf_cache", "owner/name", "https://huggingface.co/x"):
        assert redact(kept) == kept
    assert SECRET_TOKEN not in one_line(ValueError(f"bad\ntoken {SECRET_TOKEN}"))
    assert SECRET_TOKEN not in str(UserError(f"a message with {SECRET_TOKEN}"))


@pytest.fixture
def echo_hub():
    """A stand-in Hub on 127.0.0.1 that answers every request with an error echoing the request's headers (in
    the body, and in the X-Error-Message header that huggingface_hub puts into its exceptions)."""
    import http.server
    import threading

    seen = []

    class Echo(http.server.BaseHTTPRequestHandler):
        def answer(self):
            seen.append(dict(self.headers))
            # the reachability check and the model card's validation pass, so `push` goes on to send the token
            if (self.command == "HEAD" and self.path == "/") or self.path.startswith("/api/validate-yaml"):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(b"{}")
                return
            first = sorted(
                self.headers.items(), key=lambda kv: kv[0].lower() != "authorization"
            )  # before any cut
            echoed = "; ".join(f"{k}: {v}" for k, v in first)
            body = json.dumps({"error": f"bad request {self.path} with headers {echoed}"}).encode()
            self.send_response(401)  # its message names the URL too (with any user:password in it)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Message", f"headers {echoed}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_POST = do_PUT = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port, seen
    server.shutdown()


def all_text_under(folder: Path) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("credentials", ["token", "endpoint"])
def test_secrets_never_printed_or_written(tmp_path, image_folder, echo_hub, credentials):
    """HF_TOKEN, and a user:password inside HF_ENDPOINT, never appear in what vqgen prints or writes, even from a
    Hub that echoes every request header back in its error messages."""
    port, seen = echo_hub
    secret = SECRET_TOKEN if credentials == "token" else "secretpw"
    endpoint = (
        f"http://user:{secret}@127.0.0.1:{port}" if credentials == "endpoint" else f"http://127.0.0.1:{port}"
    )
    env = {"HF_ENDPOINT": endpoint, "HF_TOKEN": SECRET_TOKEN, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}  # fmt: skip
    out = tmp_path / "out"
    runs = [
        run_cli("generate", "--from", "owner/name", "--out", str(out / "g.png"), env=env),
        run_cli(
            "tokenize",
            "--tokenizer",
            "owner/name",
            "--run",
            str(out / "run"),
            "--dataset",
            str(image_folder),
            *TINY_TOKENIZER_FLAGS,
            env=env,
        ),
        run_cli(
            "tokenize",
            "--dataset",
            "owner/dataset",
            "--run",
            str(out / "run2"),
            *TINY_TOKENIZER_FLAGS,
            env=env,
        ),
    ]
    assert seen, "the stand-in Hub was never asked"
    if credentials == "token":
        assert any(SECRET_TOKEN in str(h) for h in seen)  # the secret was really in play ...
    for result in runs:
        assert_user_error(result)
        assert secret not in result.stdout + result.stderr, result.stderr  # ... and never shown
        assert "Bearer" not in result.stderr or "***" in result.stderr
    if out.exists():
        assert secret not in all_text_under(out)


def test_published_training_state_has_no_local_paths(tmp_path):
    import torch
    from vqgen.stages.commands.push import _copy_training_state
    from vqgen.stages.training import checkpoint as ckpt

    run, home = tmp_path / "run", str(Path.home())
    config = {
        "run_dir": str(run), "tokenizer": f"{home}/models/tok", "data": {"dataset": str(tmp_path / "digits")},
        "codes": "../run/codes", "plugins": ["gan"], "seed": 0, "hub": "owner/name",
    }  # fmt: skip
    for folder in (run, run / "prior-gru"):
        ckpt.write_checkpoint(folder, 2, {"w": torch.zeros(2)}, {}, keep=1)
        (folder / "run_config.json").write_text(json.dumps(config))
    out = tmp_path / "upload"
    placed = _copy_training_state({"tokenizer": run, "prior": run / "prior-gru"}, out)
    assert set(placed) == {"tokenizer", "prior"}
    for kind in placed:
        published = json.loads((out / "training_state" / kind / "run_config.json").read_text())
        assert published == {
            "run_dir": "run",
            "tokenizer": "tok",
            "data": {"dataset": "digits"},
            "codes": "codes",
            "plugins": ["gan"],
            "seed": 0,
            "hub": "owner/name",
        }
    text = all_text_under(out / "training_state")
    assert str(tmp_path) not in text and home not in text


# --- 4. images changed without a word ----------------------------------------------------------------------------


def test_a_16_bit_png_keeps_its_gradient(tmp_path):
    import numpy as np
    from PIL import Image
    from vqgen.stages.data.images import to_array

    ramp = np.tile(
        np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1)
    )  # left to right, black to white
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as image:
        assert image.mode.startswith("I")
        row = to_array(image, 32, 1)[0, 16]
    assert len(np.unique(row)) > 2 and (np.diff(row.astype(int)) >= 0).all()
    assert row[0] == 0 and row[-1] == 255
    assert np.abs(row.astype(int) - (ramp[0] / 257).round()).max() <= 1  # divided by 257: 8-bit values kept
    for mode in ("I", "I;16"):  # both modes PIL may give a 16-bit PNG, and in RGB as well
        as_mode = (
            Image.fromarray(ramp.astype(np.int32)).convert("I") if mode == "I" else Image.fromarray(ramp)
        )
        assert (to_array(as_mode, 32, 3)[:, 16] == row).all()


@pytest.mark.parametrize("low,high", [(0.0, 1.0), (-3.0, 40.0)])
def test_a_float_tiff_is_scaled_not_clipped(tmp_path, low, high):
    import numpy as np
    from PIL import Image
    from vqgen.stages.data.images import to_array

    ramp = np.tile(np.linspace(low, high, 32, dtype=np.float32), (32, 1))
    Image.fromarray(ramp, mode="F").save(tmp_path / "ramp.tif")
    with Image.open(tmp_path / "ramp.tif") as image:
        assert image.mode == "F"
        row = to_array(image, 32, 1)[0, 16]
    assert row.max() == 255 and row.min() == 0 and len(np.unique(row)) > 16  # not black, not binarised
    assert (np.diff(row.astype(int)) >= 0).all()
    expected = ramp[0] * 255 if (low, high) == (0.0, 1.0) else (ramp[0] - low) / (high - low) * 255
    assert np.abs(row.astype(int) - expected.round()).max() <= 1


def test_a_folder_mixing_class_folders_and_loose_images_warns(tmp_path, image_folder, capsys):
    import shutil

    from vqgen.stages.data.images import DataConfig
    from vqgen.stages.data.sources import load_image_splits

    mixed = tmp_path / "mixed"
    shutil.copytree(image_folder, mixed)
    for i, png in enumerate(sorted((mixed / "3").glob("*.png"))[:2]):
        shutil.copy(png, mixed / f"loose{i}.png")
    splits = load_image_splits(DataConfig(str(mixed)))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "2 image(s) at its root have no class folder" in warnings[0], warnings
    assert "read as unlabelled" in warnings[0]
    assert splits.num_classes == 0  # as before, but no longer without a word
    load_image_splits(DataConfig(str(image_folder)))  # a folder of class folders only: labelled, no warning
    assert "warning" not in capsys.readouterr().err


# --- numbers in range, paths that stay inside their folders ----------------------------------------------------
@pytest.mark.parametrize(
    "args,fragment",
    [
        (["tokenize", "--seed", "-1"], "--seed"),
        (["tokenize", "--seed", str(2**32)], "--seed"),
        (["tokenize", "--lr", "1e5"], "--lr"),
        (["tokenize", "--image-size", "100000"], "--image-size"),
        (["generate", "--n", str(10**12)], "--n"),
        (["generate", "--cfg-power", "-1"], "--cfg-power"),
        (["evaluate", "--n-samples", str(10**9)], "--n-samples"),
    ],
)
def test_numbers_out_of_range_are_one_line(args, fragment, tmp_path):
    assert_user_error(run_cli(*args, cwd=tmp_path), fragment)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_a_file_where_a_folder_is_needed_is_one_line(tmp_path, image_folder):
    (tmp_path / "file").write_text("")
    result = run_cli("tokenize", "--dataset", str(image_folder), "--run", str(tmp_path / "file" / "run"))
    assert_user_error(result, "file")


def test_paths_in_index_files_stay_inside_their_folder(tmp_path):
    from vqgen.stages.artifacts.published import INDEX_FILE, locate

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.json").write_text("{}")
    pub = tmp_path / "published"
    pub.mkdir()
    (pub / INDEX_FILE).write_text(
        json.dumps({"format": 1, "tokenizer": "../elsewhere", "prior": "../elsewhere"})
    )
    with pytest.raises(UserError, match="outside the folder"):
        locate(pub)


# --- no silent garbage ---------------------------------------------------------------------------------------
def test_non_finite_logits_are_refused_in_sampling():
    import torch
    from vqgen.priors.gru import GRUPrior, GRUPriorConfig
    from vqgen.stages.sampling.config import SamplingConfig
    from vqgen.stages.sampling.sampler import sample_chunks

    prior = GRUPrior(
        GRUPriorConfig(vocab_size=8, grid_height=2, grid_width=2, num_classes=2, embed_dim=4, hidden_size=8)
    )
    with torch.no_grad():
        next(prior.parameters()).fill_(float("nan"))
    with pytest.raises(UserError, match="non-finite logits"):
        list(sample_chunks(prior, 4, 4, None, SamplingConfig(), seed=0))


def test_a_run_that_keeps_rolling_back_stops_and_says_so(tmp_path):
    import torch
    from vqgen.plugins.base import PluginLoss, TrainingPlugin
    from vqgen.stages.core.errors import TrainingStopped
    from vqgen.stages.training.trainer import TrainConfig, Trainer

    class EveryThirdNaN(TrainingPlugin):  # never two in a row: the in-a-row limit alone would never stop it
        name, stages, calls = "every-third-nan", ("toy",), 0

        def loss(self, ctx, batch, out, step):
            self.calls += 1
            return PluginLoss(torch.tensor(float("nan") if self.calls % 3 == 0 else 0.0))

    cfg = TrainConfig(
        steps=60, batch_size=8, max_nonfinite=3, max_rollback_share=0.2, sample_every=0, log_every=1
    )
    trainer = Trainer(LinearTask(), cfg, tmp_path, [EveryThirdNaN(None)])
    with pytest.raises(
        TrainingStopped, match=r"non-finite losses were rolled back, \d+% of the steps so far"
    ):
        trainer.fit()
    assert trainer.nonfinite_in_row < 3 and trainer.nonfinite_total >= 3


def test_the_summary_line_reports_rollbacks():
    from vqgen.command_line.app import rollback_note

    assert (
        rollback_note({"nonfinite_rolled_back": 4})
        == "; warning: 4 step(s) had a non-finite loss and were rolled back"
    )
    assert rollback_note({"nonfinite_rolled_back": 0}) == ""


@pytest.mark.parametrize("credentials", ["token", "endpoint"])
def test_push_never_prints_or_writes_secrets(tmp_path, image_folder, echo_hub, credentials):
    """`push` to a Hub that echoes every request header back: the token and an endpoint password stay hidden."""
    from test_cli_priors import TINY_PRIOR_OPTIONS

    port, seen = echo_hub
    secret = SECRET_TOKEN if credentials == "token" else "secretpw"
    endpoint = (
        f"http://user:{secret}@127.0.0.1:{port}" if credentials == "endpoint" else f"http://127.0.0.1:{port}"
    )
    run = tmp_path / "run"
    assert (
        run_cli(
            "tokenize",
            "--run",
            str(run),
            "--dataset",
            str(image_folder),
            *TINY_TOKENIZER_FLAGS,
            "--steps",
            "2",
        ).returncode
        == 0
    )
    opts = [f for o in TINY_PRIOR_OPTIONS["gru"] for f in ("--prior-opt", o)]
    trained = run_cli(
        "train-prior",
        "--codes",
        str(run / "codes"),
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--sample-every",
        "0",
        *opts,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    env = {"HF_ENDPOINT": endpoint, "HF_TOKEN": SECRET_TOKEN, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}  # fmt: skip
    pushed = run_cli("push", str(run), "--repo-id", "owner/name", env=env)
    assert pushed.returncode == 2 and seen, (pushed.returncode, pushed.stderr[-2000:])
    if credentials == "token":
        assert any(SECRET_TOKEN in str(h) for h in seen)  # the secret was really sent ...
    assert secret not in pushed.stdout + pushed.stderr  # ... and never shown
    assert secret not in all_text_under(tmp_path / "run")


def test_dot_dot_in_a_path_creates_no_folder_on_the_way(tmp_path, image_folder):
    result = run_cli(
        "tokenize",
        "--run",
        str(tmp_path / "never" / ".." / "run"),
        "--dataset",
        str(image_folder),
        *TINY_TOKENIZER_FLAGS,
        "--steps",
        "1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    """The atomic writer renames a mkstemp file into place; the file must not keep mkstemp's owner-only 0600,
    or generated images and published runs could not be shared."""
    import stat

    from vqgen.stages.core.files import write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() gives under this process's umask
    written = write_text("x", tmp_path / "written.txt")
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert not list(tmp_path.glob(".*.tmp"))
