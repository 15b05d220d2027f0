"""Every bad input of docs/errors.md answered through the CLI: one line `error: ...`, exit code 2, no traceback,
and nothing written over.

Each row calls `cli.main()` in this process with its argv: the same code as `python cli.py ...` (typer's parsing and
main's handling of UserError, click's usage errors and disk errors), in milliseconds instead of the 3-5 s a new
interpreter costs to import torch. `test_a_real_process_answers_the_same` runs a row as a real process.
One tiny run (tokenizer + GRU prior) is trained once per session; every row checks that it is left unchanged.
"""

import contextlib
import errno
import io
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_TOKENIZER_FLAGS, Answer, call_cli, run_cli
from PIL import Image
from safetensors.torch import load_file, save_file

SOURCE_DIRS = ("stages", "priors", "plugins", "benchmarks")
GRU_FLAGS = ["--prior-opt", "embed_dim=8", "--prior-opt", "hidden_size=8", "--prior-opt", "num_layers=1"]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and modification time: equal snapshots = nothing written."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def assert_one_line_error(answer: Answer, *fragments: str) -> str:
    """Exit code 2, exactly one `error: ...` line on stderr holding every fragment, no traceback."""
    assert answer.code == 2, (answer.code, answer.out[-1500:], answer.err[-1500:])
    assert "Traceback" not in answer.err, answer.err
    lines = [line for line in answer.err.splitlines() if line.startswith("error")]
    assert len(lines) == 1, answer.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def expect_error(world: "World", *args: str, fragments: tuple[str, ...]) -> str:
    before = snapshot(world.root)
    line = assert_one_line_error(call_cli(*args), *fragments)
    assert snapshot(world.root) == before, "a bad input changed the shared run"
    return line


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def copy_with(src: Path, dst: Path, config_edit=None, weights_edit=None) -> Path:
    """A copy of a model folder with its config.json and/or model.safetensors changed."""
    shutil.copytree(src, dst)
    if config_edit:
        config = json.loads((dst / "config.json").read_text())
        config_edit(config)
        (dst / "config.json").write_text(json.dumps(config))
    if weights_edit:
        weights_edit(dst / "model.safetensors")
    return dst


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def perturb(path: Path) -> None:
    tensors = load_file(str(path))
    name = sorted(k for k in tensors if tensors[k].is_floating_point())[0]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(path))


@dataclass
class World:
    root: Path  # everything below is read by the rows and must not change
    digits: Path  # 10 class folders of PNGs, plus one garbage .png and one truncated PNG
    run: Path  # tokenize output, with prior-gru/
    bad: Path  # broken copies of the run's artifacts

    @property
    def prior(self) -> Path:
        return self.run / "prior-gru"


@pytest.fixture(scope="session")
def world(tmp_path_factory, digits) -> World:
    root = tmp_path_factory.mktemp("world")
    images, labels = digits
    folder = root / "digits"
    for i, (img, lab) in enumerate(zip(images[::2], labels[::2])):  # 3 per class
        (folder / str(lab)).mkdir(parents=True, exist_ok=True)
        (folder / str(lab) / f"{i}.png").write_bytes(png_bytes(img))
    (folder / "0" / "garbage.png").write_bytes(b"this is not an image")
    (folder / "1" / "truncated.png").write_bytes(png_bytes(images[1])[:60])
    run = root / "run"
    tok = call_cli("tokenize", "--run", run, "--dataset", folder, *TINY_TOKENIZER_FLAGS, "--steps", "2")
    assert tok.code == 0, tok.err[-3000:]
    assert "warning: skipped 2 of 32 images" in tok.err
    prior = call_cli(
        "train-prior",
        "--codes",
        run / "codes",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--sample-every",
        "0",
        *GRU_FLAGS,
    )
    assert prior.code == 0, prior.err[-3000:]

    bad = root / "bad"
    bad.mkdir()
    tokenizer, gru = run / "tokenizer", run / "prior-gru"
    copy_with(tokenizer, bad / "tok-truncated", weights_edit=truncate)
    copy_with(tokenizer, bad / "tok-wrong-type", lambda c: c.update(base_channels="eight"))
    copy_with(tokenizer, bad / "tok-nested-wrong-type", lambda c: c["quantizer"].update(codebook_size=16.5))
    copy_with(tokenizer, bad / "tok-unknown-key", lambda c: c.update(bogus=1))
    copy_with(tokenizer, bad / "tok-perturbed", weights_edit=perturb)
    (bad / "tok-not-json").mkdir()
    (bad / "tok-not-json" / "config.json").write_text("{model_type: vqvae")
    shutil.copy(tokenizer / "model.safetensors", bad / "tok-not-json")
    (bad / "tok-pickle-only").mkdir()
    shutil.copy(tokenizer / "config.json", bad / "tok-pickle-only")
    (bad / "tok-pickle-only" / "pytorch_model.bin").write_bytes(b"\x80\x04pickled")
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig

    small = VQVAEConfig(
        base_channels=8, num_res_blocks=1, quantizer=QuantizerConfig(codebook_size=8, code_dim=4)
    )
    VQVAE(small).save_pretrained(str(bad / "tok-8-codes"))
    copy_with(gru, bad / "prior-truncated", weights_edit=truncate)
    copy_with(gru, bad / "prior-wrong-type", lambda c: c.update(hidden_size="big"))
    copy_with(gru, bad / "prior-unknown-key", lambda c: c.update(bogus=1))
    copy_with(gru, bad / "prior-other-weights", lambda c: c.update(hidden_size=12))
    copy_with(gru, bad / "prior-unknown-type", lambda c: c.update(prior_type="no-such-prior"))
    for name, meta in (
        ("codes-not-json", "{not json"),
        ("codes-missing-field", json.dumps({"vocab_size": 16})),
    ):
        (bad / name).mkdir()
        (bad / name / "codes.json").write_text(meta)
    (bad / "all-unreadable" / "a").mkdir(parents=True)
    (bad / "all-unreadable" / "a" / "garbage.png").write_bytes(b"GIF89a but not really")
    (bad / "all-unreadable" / "a" / "truncated.png").write_bytes(png_bytes(images[0])[:60])
    (bad / "empty").mkdir()
    (bad / "a-file").write_text("not a folder")
    (bad / "not-a-run").mkdir()
    (bad / "not-a-run" / "thesis.tex").write_text("precious")
    return World(root, folder, run, bad)


# Each row: (id, argv with {run} {prior} {bad} {new} placeholders, fragments of the one error line).
# {new} is a fresh path under the test's tmp_path, for outputs that must not be created.
TOK = ["--dataset", "{digits}", *TINY_TOKENIZER_FLAGS, "--steps", "1"]
ROWS = [
    # paths and data
    ("dataset-missing", ["tokenize", "--run", "{new}", "--dataset", "{bad}/missing"], ["no such folder"]),
    ("dataset-empty-folder", ["tokenize", "--run", "{new}", "--dataset", "{bad}/empty"], ["no images found"]),
    ("dataset-is-a-file", ["tokenize", "--run", "{new}", "--dataset", "{bad}/a-file"], ["not a folder"]),
    ("dataset-all-images-unreadable", ["tokenize", "--run", "{new}", "--dataset", "{bad}/all-unreadable"],
     ["none of the 2 images could be read"]),
    ("dataset-hub-id-with-dotdot", ["tokenize", "--run", "{new}", "--dataset", "foo/.."], ["not a valid Hugging Face Hub id"]),
    ("run-exists", ["tokenize", "--run", "{run}", *TOK], ["already holds a run", "--overwrite"]),
    ("run-is-a-file", ["tokenize", "--run", "{bad}/a-file", *TOK], ["not a folder"]),
    ("overwrite-a-folder-that-is-no-run", ["tokenize", "--run", "{bad}/not-a-run", "--overwrite", *TOK],
     ["does not look like a vqgen run"]),
    ("resume-without-a-run", ["tokenize", "--run", "{new}", "--resume", *TOK], ["holds no run to continue"]),
    # command-line values
    ("steps-zero", ["tokenize", "--run", "{new}", *TOK, "--steps", "0"], ["--steps", "--help"]),
    ("unknown-flag", ["tokenize", "--no-such-flag"], ["No such option", "--no-such-flag"]),
    ("mixed-precision-unknown", ["tokenize", "--run", "{new}", *TOK, "--mixed-precision", "fp8"], ["--mixed-precision"]),
    ("resize-unknown", ["tokenize", "--run", "{new}", *TOK, "--resize", "stretch"], ["--resize", "center-crop or pad"]),
    ("num-workers-negative", ["tokenize", "--run", "{new}", *TOK, "--num-workers", "-1"], ["--num-workers", "greater than or equal to 0"]),
    ("n-not-a-number", ["generate", "--prior", "{prior}", "--n", "abc", "--out", "{new}.png"], ["--n"]),
    # plugins
    ("plugin-opt-malformed", ["tokenize", "--run", "{new}", *TOK, "--plugin", "gan", "--plugin-opt", "gan"],
     ["NAME.OPTION=VALUE"]),
    ("plugin-opt-unknown-option", ["tokenize", "--run", "{new}", *TOK, "--plugin", "gan", "--plugin-opt", "gan.nosuch=1"],
     ["no option 'nosuch'"]),
    ("plugin-opt-wrong-type", ["tokenize", "--run", "{new}", *TOK, "--plugin", "gan", "--plugin-opt", "gan.weight=abc"],
     ["expected float"]),
    # tokenizer files (--tokenizer)
    ("tokenizer-missing", ["tokenize", "--run", "{new}", *TOK, "--tokenizer", "{bad}/missing"], ["no such folder"]),
    ("tokenizer-truncated-safetensors", ["tokenize", "--run", "{new}", *TOK, "--tokenizer", "{bad}/tok-truncated"],
     ["could not load model.safetensors"]),
    ("tokenizer-config-wrong-type", ["tokenize", "--run", "{new}", *TOK, "--tokenizer", "{bad}/tok-wrong-type"],
     ["field base_channels should be int", '"eight"']),
    ("tokenizer-config-nested-wrong-type", ["generate", "--prior", "{prior}", "--tokenizer", "{bad}/tok-nested-wrong-type",
     "--out", "{new}.png"], ["field quantizer.codebook_size should be int"]),
    ("tokenizer-config-unknown-key", ["tokenize", "--run", "{new}", *TOK, "--tokenizer", "{bad}/tok-unknown-key"],
     ["unknown field(s) bogus"]),
    ("tokenizer-config-not-json", ["tokenize", "--run", "{new}", *TOK, "--tokenizer", "{bad}/tok-not-json"],
     ["config.json is not valid JSON"]),
    ("tokenizer-pickle-only", ["tokenize", "--run", "{new}", *TOK, "--tokenizer", "{bad}/tok-pickle-only"],
     ["pickled weights are never loaded"]),
    ("tokenizer-is-a-prior", ["generate", "--prior", "{prior}", "--tokenizer", "{prior}", "--out", "{new}.png"],
     ["not a vqgen tokenizer"]),
    ("tokenizer-hub-id-with-dotdot", ["tokenize", "--run", "{new}", *TOK, "--tokenizer", "a/../b"],
     ["not a valid Hugging Face Hub id"]),
    # train-prior
    ("codes-missing", ["train-prior", "--codes", "{bad}/missing", "--out", "{new}"], ["no codes.json"]),
    ("codes-meta-not-json", ["train-prior", "--codes", "{bad}/codes-not-json", "--out", "{new}"], ["not valid JSON"]),
    ("codes-meta-missing-field", ["train-prior", "--codes", "{bad}/codes-missing-field", "--out", "{new}"],
     ["field grid_height"]),
    ("prior-unknown", ["train-prior", "--prior", "nope", "--codes", "{run}/codes", "--out", "{new}"], ["unknown prior"]),
    ("prior-name-with-path", ["train-prior", "--prior", "../../evil", "--codes", "{run}/codes"], ["unknown prior"]),
    ("prior-opt-malformed", ["train-prior", "--codes", "{run}/codes", "--out", "{new}", "--prior-opt", "hidden_size"],
     ["OPTION=VALUE"]),
    ("prior-opt-wrong-type", ["train-prior", "--codes", "{run}/codes", "--out", "{new}", "--prior-opt", "hidden_size=abc"],
     ["expected int"]),
    ("prior-opt-no-valid-model", ["train-prior", "--codes", "{run}/codes", "--out", "{new}", "--prior-opt", "hidden_size=-4"],
     ["no valid model"]),
    ("prior-opt-heads-do-not-divide", ["train-prior", "--prior", "transformer", "--codes", "{run}/codes", "--out", "{new}",
     "--prior-opt", "hidden_size=16", "--prior-opt", "num_heads=3"], ["no valid model", "attention heads"]),
    ("prior-opt-code-noise-not-a-fraction", ["train-prior", "--prior", "gru", "--codes", "{run}/codes", "--out", "{new}",
     "--prior-opt", "code_noise=1.5"], ["no valid model", "code_noise should be a fraction"]),
    ("prior-out-exists", ["train-prior", "--codes", "{run}/codes", "--out", "{prior}", *GRU_FLAGS], ["already holds a run"]),
    # generate: prior files
    ("prior-folder-missing", ["generate", "--prior", "{bad}/missing", "--out", "{new}.png"], ["no such folder"]),
    ("prior-folder-is-a-file", ["generate", "--prior", "{bad}/a-file", "--out", "{new}.png"], ["is a file"]),
    ("prior-truncated-safetensors", ["generate", "--prior", "{bad}/prior-truncated", "--tokenizer", "{run}/tokenizer",
     "--out", "{new}.png"], ["could not load model.safetensors"]),
    ("prior-config-wrong-type", ["generate", "--prior", "{bad}/prior-wrong-type", "--out", "{new}.png"],
     ["field hidden_size should be int"]),
    ("prior-config-unknown-key", ["generate", "--prior", "{bad}/prior-unknown-key", "--out", "{new}.png"],
     ["unknown field(s) bogus"]),
    ("prior-weights-do-not-match-config", ["generate", "--prior", "{bad}/prior-other-weights", "--out", "{new}.png"],
     ["could not load model.safetensors"]),
    ("prior-type-unknown", ["generate", "--prior", "{bad}/prior-unknown-type", "--out", "{new}.png"],
     ["unknown prior 'no-such-prior'"]),
    ("prior-is-a-tokenizer", ["generate", "--prior", "{run}/tokenizer", "--out", "{new}.png"], ["no 'prior_type'"]),
    ("prior-with-the-wrong-tokenizer", ["generate", "--prior", "{prior}", "--tokenizer", "{bad}/tok-perturbed",
     "--out", "{new}.png"], ["trained on tokenizer"]),
    ("prior-with-a-tokenizer-of-another-size", ["generate", "--prior", "{prior}", "--tokenizer", "{bad}/tok-8-codes",
     "--out", "{new}.png"], ["models 16 codes but the tokenizer has 8"]),
    # generate: sampling options
    ("temperature-zero", ["generate", "--prior", "{prior}", "--temperature", "0", "--out", "{new}.png"], ["--temperature"]),
    ("temperature-negative", ["generate", "--prior", "{prior}", "--temperature", "-1", "--out", "{new}.png"],
     ["--temperature"]),
    ("top-p-zero", ["generate", "--prior", "{prior}", "--top-p", "0", "--out", "{new}.png"], ["--top-p"]),
    ("top-p-above-one", ["generate", "--prior", "{prior}", "--top-p", "1.01", "--out", "{new}.png"], ["--top-p"]),
    ("top-k-zero", ["generate", "--prior", "{prior}", "--top-k", "0", "--out", "{new}.png"], ["--top-k"]),
    ("n-zero", ["generate", "--prior", "{prior}", "--n", "0", "--out", "{new}.png"], ["--n", "greater than or equal to 1"]),
    ("n-negative", ["generate", "--prior", "{prior}", "--n", "-3", "--out", "{new}.png"], ["--n", "greater than or equal to 1"]),
    ("label-above-the-classes", ["generate", "--prior", "{prior}", "--label", "10", "--out", "{new}.png"],
     ["outside the trained classes 0..9"]),
    ("label-negative", ["generate", "--prior", "{prior}", "--label", "-1", "--out", "{new}.png"],
     ["outside the trained classes"]),
    ("labels-not-matching-n", ["generate", "--prior", "{prior}", "--label", "1", "--label", "2", "--n", "3",
     "--out", "{new}.png"], ["exactly --n 3"]),
    ("out-not-png", ["generate", "--prior", "{prior}", "--n", "2", "--out", "{new}"], ["must be a .png file"]),
]  # fmt: skip


@pytest.mark.parametrize("args,fragments", [pytest.param(a, f, id=i) for i, a, f in ROWS])
def test_bad_input(world, tmp_path, args, fragments):
    new = tmp_path / "new"
    paths = {"run": world.run, "prior": world.prior, "bad": world.bad, "digits": world.digits, "new": new}
    expect_error(world, *[a.format(**paths) for a in args], fragments=tuple(fragments))
    assert not new.with_suffix(".png").exists() and not (new.exists() and any(new.iterdir()))


def test_generate_output_that_exists_is_kept(world, tmp_path):
    out = tmp_path / "mine.png"
    out.write_bytes(b"my picture")
    expect_error(
        world, "generate", "--prior", world.prior, "--n", "2", "--out", out, fragments=("already exists",)
    )
    assert out.read_bytes() == b"my picture"


def test_some_unreadable_images_are_skipped_and_counted(world):
    metrics = json.loads((world.run / "metrics.json").read_text())["tokenizer"]
    assert metrics["skipped_images"] == 2  # garbage.png and truncated.png; the 30 digits were used
    from datasets import load_from_disk

    codes = load_from_disk(str(world.run / "codes"))
    assert len(codes["train"]) + len(codes["validation"]) == 30


def fake_entry_points(monkeypatch, **targets: str) -> None:
    """Make the prior registry see entry points NAME = TARGET (as if a package declaring them were installed)."""
    from vqgen.stages.core.registry import PRIORS

    eps = [EntryPoint(name, target, "vqgen.priors") for name, target in targets.items()]
    monkeypatch.setattr(
        "vqgen.stages.core.registry.entry_points", lambda group: eps if group == "vqgen.priors" else []
    )
    monkeypatch.setattr(PRIORS, "_entries", dict(PRIORS._entries))
    monkeypatch.setattr(PRIORS, "_classes", dict(PRIORS._classes))
    monkeypatch.setattr(PRIORS, "_entry_points_read", False)


@pytest.mark.parametrize(
    "target,fragments",
    [
        pytest.param(
            "no_such_module_xyz:Prior", ("failed to load", "ModuleNotFoundError"), id="does-not-import"
        ),
        pytest.param(
            "vqgen.priors.gru:NoSuchClass", ("failed to load", "AttributeError"), id="no-such-attribute"
        ),
        pytest.param(
            "collections:OrderedDict", ("does not subclass vqgen.priors.base.Prior",), id="not-a-prior"
        ),
    ],
)
def test_broken_entry_point(world, tmp_path, monkeypatch, target, fragments):
    fake_entry_points(monkeypatch, broken=target)
    args = ["train-prior", "--prior", "broken", "--codes", world.run / "codes", "--out", tmp_path / "p"]
    expect_error(world, *args, fragments=("prior 'broken'", *fragments))
    assert not (tmp_path / "p").exists()


def test_entry_point_with_a_path_for_a_name_is_refused(world, tmp_path, monkeypatch):
    fake_entry_points(monkeypatch, **{"../../escape": "vqgen.priors.gru:GRUPrior"})
    args = ["train-prior", "--prior", "../../escape", "--codes", world.run / "codes", *GRU_FLAGS]
    expect_error(world, *args, fragments=("not a valid name",))
    assert not (world.run.parent.parent / "escape").exists()


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody can create files in: chmod for a normal user, `chattr +i` for root (whom chmod does not
    stop); skipped where neither works."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    as_root = os.geteuid() == 0
    if as_root:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr +i: no way to make a read-only folder")
    else:
        folder.chmod(0o555)
    try:
        with contextlib.suppress(OSError):
            (folder / "probe").write_text("")
            pytest.skip("this file system lets us write into a read-only folder")
        yield folder
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def test_read_only_output_folder(world, read_only_folder):
    expect_error(
        world,
        "tokenize",
        "--run",
        read_only_folder / "run",
        *[a.format(digits=world.digits) for a in TOK],
        fragments=("cannot write to the run folder", str(read_only_folder)),
    )
    expect_error(
        world,
        "train-prior",
        "--codes",
        world.run / "codes",
        "--out",
        read_only_folder / "p",
        *GRU_FLAGS,
        fragments=("cannot write to the run folder",),
    )
    expect_error(
        world,
        "generate",
        "--prior",
        world.prior,
        "--n",
        "2",
        "--out",
        read_only_folder / "g.png",
        fragments=(str(read_only_folder),),
    )
    assert list(read_only_folder.iterdir()) == []


def no_space(path, *args, **kwargs) -> None:
    """A write that fills the disk: half a file, then ENOSPC."""
    Path(path).write_bytes(b"\0" * 100)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_full_disk_while_writing_a_checkpoint(world, tmp_path, monkeypatch):
    monkeypatch.setattr(
        "vqgen.stages.artifacts.sharded.save_file", lambda tensors, path, *a, **k: no_space(path)
    )
    run = tmp_path / "run"
    answer = call_cli(
        "tokenize",
        "--run",
        run,
        "--dataset",
        world.digits,
        *TINY_TOKENIZER_FLAGS,
        "--steps",
        "2",
        "--checkpoint-every",
        "1",
    )
    assert_one_line_error(answer, "no space left on the device of", "checkpoints", "--resume")
    leftovers = [p.name for p in (run / "checkpoints").iterdir()] if (run / "checkpoints").exists() else []
    assert leftovers == []  # no half-written checkpoint, not even under a temporary name


def test_full_disk_while_saving_the_tokenizer(world, tmp_path, monkeypatch):
    monkeypatch.setattr("safetensors.torch.save_model", lambda model, path, *a, **k: no_space(path))
    run = tmp_path / "run"
    answer = call_cli(
        "tokenize", "--run", run, "--dataset", world.digits, *TINY_TOKENIZER_FLAGS, "--steps", "1"
    )
    assert_one_line_error(answer, "no space left on the device of", "while writing the model")
    assert not (run / "tokenizer" / "model.safetensors").exists()  # never half-written under its final name
    assert [p.name for p in (run / "tokenizer").iterdir()] == []  # the temporary copy is gone too


def test_dotdot_paths_write_only_inside_their_folders(world, tmp_path, monkeypatch):
    """`..` in --dataset, --run and --codes is followed like any path, and every file lands in the run folder:
    nothing beside it, nothing in the dataset, and the default prior folder goes beside the codes folder even
    when --codes is spelled `.` from inside it."""
    base = tmp_path / "base"
    (base / "a" / "b").mkdir(parents=True)
    shutil.copytree(world.digits, base / "data")
    before = snapshot(base)
    dataset = base / "a" / "b" / ".." / ".." / "data"
    run = base / "a" / ".." / "run"
    answer = call_cli("tokenize", "--run", run, "--dataset", dataset, *TINY_TOKENIZER_FLAGS, "--steps", "1")
    assert answer.code == 0, answer.err[-3000:]
    monkeypatch.chdir(base / "run" / "codes")
    answer = call_cli(
        "train-prior", "--codes", ".", "--steps", "1", "--batch-size", "8", "--sample-every", "0", *GRU_FLAGS
    )
    assert answer.code == 0, answer.err[-3000:]
    after = snapshot(base)
    new = sorted(set(after) - set(before))
    assert new and all(p.startswith("run/") for p in new), new
    assert {k: v for k, v in after.items() if k in before} == before  # the dataset is only read
    assert (base / "run" / "prior-gru" / "model.safetensors").is_file()
    assert not any(p.startswith("run/codes/prior-") for p in new)


def test_a_real_process_answers_the_same(world, tmp_path):
    """A row as a real `python cli.py` process, with the same exit code and line as in-process (a process costs
    3-10 s, so one): a broken package installed for real, a .dist-info whose entry point names a missing module."""
    dist = tmp_path / "site" / "vqgen_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vqgen-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vqgen.priors]\nbroken = vqgen_broken_missing:BrokenPrior\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    answer = run_cli(
        "train-prior",
        "--prior",
        "broken",
        "--codes",
        str(world.run / "codes"),
        "--out",
        str(tmp_path / "p"),
        env=env,
    )
    line = assert_one_line_error(Answer(answer.returncode, answer.stdout, answer.stderr), "failed to load")
    assert "vqgen-broken 0.1" in line and "ModuleNotFoundError" in line and not (tmp_path / "p").exists()


def test_no_pickle_when_loading_user_files(world, monkeypatch):
    """Loading a tokenizer, a prior and a training checkpoint never reaches torch.load or pickle."""
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used on a user file")

    for target in ("torch.load", "pickle.load", "pickle.loads"):
        monkeypatch.setattr(target, refuse)
    from vqgen.stages.artifacts.models import load_prior, load_tokenizer
    from vqgen.stages.training.checkpoint import list_checkpoints, read_checkpoint

    assert pickle.loads is refuse and torch.load is refuse
    load_tokenizer(world.run / "tokenizer")
    load_prior(world.prior)
    read_checkpoint(list_checkpoints(world.prior)[-1])


# The two loaders that must read other projects' checkpoints, each in its one owner (issue 23): torch's weights-only
# unpickler for LlamaGen/taming `.pt`/`.ckpt` files, and diffusers' own `VQModel.from_pretrained` (safetensors, or
# `.bin` through diffusers' weights-only torch.load).
ALLOWED_LOADERS = {
    ("stages/interop/sources.py", "torch.load("): "weights_only=True",
    ("stages/interop/diffusers_vq.py", "torch.load("): "weights_only=True",  # its docstring's mention
    (
        "stages/interop/sources.py",
        "import pickle",
    ): "",  # for pickle.UnpicklingError; pickle.load stays forbidden
    ("stages/interop/diffusers_vq.py", ".from_pretrained("): "_vqmodel()",
}


def _allowed_loader(path: str, text: str, match: re.Match) -> bool:
    """An allowed loader's call: its file and pattern are listed, and the call carries the required safeguard."""
    required = ALLOWED_LOADERS.get((path, match.group()))
    if required is None:
        return False
    line_start = text.rfind("\n", 0, match.start()) + 1
    statement = text[line_start : text.find("\n", match.end())]
    return required in statement


def test_no_unsafe_loading_in_the_source():
    """No torch.load without weights_only=True, pickle, trust_remote_code, or a Hub mixin's from_pretrained
    (PyTorchModelHubMixin falls back to torch.load for a Hub repo without safetensors) anywhere in vqgen's own code.
    `Pipeline.from_pretrained` is vqgen's own loader, which goes through stages/hub.py (safetensors only), and
    diffusers' `VQModel.from_pretrained` (vqgen import diffusers) reads safetensors or torch.load(weights_only=True),
    so they are allowed; so is `torch.load(..., weights_only=True)` on one line (vqgen import's checkpoints)."""
    unsafe = re.compile(
        r"torch\.load\((?![^)\n]*weights_only=True)|\bimport pickle|pickle\.load|\bdill\b|trust_remote_code"
        r"|allow_pickle\s*=\s*True|weights_only\s*=\s*False|(?<!Pipeline)(?<!VQModel)\.from_pretrained\("
    )
    files = [ROOT / "cli.py", *[p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py")]]
    files += [p for p in (ROOT / "examples").rglob("*.py") if "build" not in p.parts]
    assert len(files) > 20
    found = [
        f"{p.relative_to(ROOT)}: {m.group()}"
        for p in files
        for m in unsafe.finditer(p.read_text())
        if not _allowed_loader(p.relative_to(ROOT).as_posix(), p.read_text(), m)
    ]
    assert found == []
    calls = (
        "model = VQVAE.from_pretrained(path)",
        "torch" + ".load(f)",
    )  # split: the house-rule scan reads this file
    assert all(unsafe.search(call) for call in calls)  # the scan can fail
    unguarded = unsafe.search("return torch" + ".load(path)")
    assert not _allowed_loader("stages/interop/sources.py", "return torch" + ".load(path)\n", unguarded)


def test_hub_token_is_never_printed(tmp_path):
    """With HF_TOKEN set, a failed Hub download sends the token (to our stand-in Hub) but never prints it."""
    import http.server
    import threading

    seen = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("authorization"))
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
            self.wfile.write(b'{"error": "Repository not found"}')

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = "hf_vqgenTestTokenThatMustNeverBePrinted"
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_TOKEN": token, "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0"}  # fmt: skip
    try:
        answer = run_cli("generate", "--prior", "someone/a-prior", "--out", str(tmp_path / "g.png"), env=env)
    finally:
        server.shutdown()
    assert_one_line_error(Answer(answer.returncode, answer.stdout, answer.stderr), "someone/a-prior")
    assert f"Bearer {token}" in seen  # the token was really in play ...
    assert token not in answer.stdout + answer.stderr  # ... and never shown
