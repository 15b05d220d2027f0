"""`train-prior` and `generate` end to end with every built-in prior on a tiny run, and their bad-input answers."""

import json
import shutil

import pytest
import torch
from conftest import TINY_TOKENIZER_FLAGS, assert_user_error, run_cli
from PIL import Image

TINY_PRIOR_OPTIONS = {
    "gru": ["embed_dim=16", "hidden_size=16", "num_layers=1"],
    "pixelcnn": ["channels=8", "num_layers=2", "head_channels=16"],
    "transformer": ["hidden_size=16", "num_layers=1", "num_heads=2", "intermediate_size=32"],
    "llamagen": ["hidden_size=16", "num_layers=1", "num_heads=2", "multiple_of=16"],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, image_folder):
    root = tmp_path_factory.mktemp("pipeline") / "run"
    result = run_cli(
        "tokenize", "--run", str(root), "--dataset", str(image_folder), *TINY_TOKENIZER_FLAGS, "--steps", "3"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def train(run, prior, *extra):
    opts = [f for o in TINY_PRIOR_OPTIONS[prior] for f in ("--prior-opt", o)]
    return run_cli(
        "train-prior",
        "--prior",
        prior,
        "--codes",
        str(run / "codes"),
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--sample-every",
        "0",
        *opts,
        *extra,
    )


@pytest.mark.parametrize("prior", sorted(TINY_PRIOR_OPTIONS))
def test_train_prior_and_generate(run, prior):
    result = train(run, prior, "--eval-every", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    folder = run / f"prior-{prior}"
    config = json.loads((folder / "config.json").read_text())
    assert config["prior_type"] == prior and config["vocab_size"] == 16 and config["num_classes"] == 10
    saved = json.loads((folder / "metrics.json").read_text())
    metrics = saved["prior"]
    assert metrics["val_bits_per_token"] > 0 and metrics["val_bits_per_dim"] > 0
    scored = [
        h for h in saved["history"] if "val_bits_per_token" in h
    ]  # --eval-every 2 of 3 steps, and the last
    assert [h["step"] for h in scored] == [2, 3] and scored[0]["val_bits_per_token"] > 0
    best = min(scored, key=lambda h: h["val_bits_per_token"])
    assert metrics["best_val_step"] == best["step"] and metrics["kept"] == "best" and metrics["steps"] == 3
    assert metrics["kept_step"] == best["step"]  # the saved prior is the best scored one, and says so:
    assert metrics["val_bits_per_token"] == pytest.approx(best["val_bits_per_token"], rel=1e-5)
    assert f"those of step {best['step']} of 3" in (folder / "README.md").read_text()
    assert (folder / "samples" / f"samples_{best['step']:07d}.png").is_file()  # the kept model's grid
    assert "val_bits_per_token=" in result.stderr  # the progress line shows the held-out NLL

    out = run / f"{prior}-sevens.png"
    gen = run_cli(
        "generate",
        "--prior",
        str(folder),
        "--label",
        "7",
        "--n",
        "4",
        "--out",
        str(out),
        "--top-k",
        "5",
        "--cfg-scale",
        "1.5",
    )
    assert gen.returncode == 0, gen.stderr[-3000:]
    images = sorted((run / f"{prior}-sevens").glob("*.png"))  # beside them: .chunk-N.json records (resume)
    assert [p.name for p in images] == [f"{i:05d}_label7.png" for i in range(4)]
    assert Image.open(images[0]).size == (28, 28) and Image.open(out).size[0] > 28

    again = run_cli("generate", "--prior", str(folder), "--label", "7", "--n", "4", "--out", str(out))
    assert_user_error(again, "already exists")


@pytest.mark.parametrize(
    "args,fragments",
    [
        (("--temperature", "0"), ("temperature",)),
        (("--top-p", "1.5"), ("top-p",)),
        (("--top-k", "0"), ("top-k",)),
        (("--n", "0"), ("--n",)),
        (("--label", "10"), ("outside the trained classes",)),
    ],
)
def test_bad_sampling_options(run, tmp_path, args, fragments):
    if not (run / "prior-gru" / "model.safetensors").is_file():
        assert train(run, "gru").returncode == 0
    result = run_cli("generate", "--prior", str(run / "prior-gru"), "--out", str(tmp_path / "x.png"), *args)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "x.png").exists()


def test_prior_with_the_wrong_tokenizer_is_refused(run, tmp_path, image_folder):
    if not (run / "prior-gru" / "model.safetensors").is_file():
        assert train(run, "gru").returncode == 0
    other = tmp_path / "other"
    result = run_cli(
        "tokenize",
        "--run",
        str(other),
        "--dataset",
        str(image_folder),
        *TINY_TOKENIZER_FLAGS,
        "--steps",
        "3",
        "--seed",
        "1",
    )
    assert result.returncode == 0
    gen = run_cli(
        "generate",
        "--prior",
        str(run / "prior-gru"),
        "--tokenizer",
        str(other / "tokenizer"),
        "--out",
        str(tmp_path / "g.png"),
    )
    assert_user_error(gen, "trained on tokenizer")
    shutil.rmtree(other)


def test_train_prior_bad_input(run, tmp_path):
    assert_user_error(
        run_cli(
            "train-prior", "--prior", "nope", "--codes", str(run / "codes"), "--out", str(tmp_path / "p")
        ),
        "unknown prior",
    )
    assert_user_error(run_cli("train-prior", "--codes", str(tmp_path)), "codes.json")
    bad_opt = run_cli(
        "train-prior",
        "--prior",
        "gru",
        "--codes",
        str(run / "codes"),
        "--out",
        str(tmp_path / "q"),
        "--prior-opt",
        "no_such=1",
    )
    assert_user_error(bad_opt, "no_such")
    fixed = run_cli(
        "train-prior",
        "--prior",
        "gru",
        "--codes",
        str(run / "codes"),
        "--out",
        str(tmp_path / "r"),
        "--prior-opt",
        "vocab_size=3",
    )
    assert_user_error(fixed, "vocab_size")


def test_a_patience_without_held_out_scores_is_one_line(run, tmp_path):
    result = train(run, "gru", "--patience", "3", "--eval-every", "0", "--out", str(tmp_path / "p"))
    assert_user_error(result, "--patience 3", "--eval-every")
    assert not (tmp_path / "p").exists()  # refused before anything was written


def test_a_size_preset_reaches_the_saved_config(run, tmp_path):
    """--size B fills the fields no --prior-opt names (here GPT-B's SwiGLU width); the run records the preset."""
    out = tmp_path / "sized"
    opts = [f for o in ("hidden_size=16", "num_heads=2", "num_layers=1") for f in ("--prior-opt", o)]
    result = run_cli(
        "train-prior",
        "--prior",
        "transformer",
        "--codes",
        str(run / "codes"),
        "--size",
        "B",
        *opts,
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--sample-every",
        "0",
        "--eval-every",
        "0",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_layers"], config["intermediate_size"]) == (16, 1, 2048)
    assert json.loads((out / "run_config.json").read_text())["size"] == "B"


def test_priors_command_lists_the_builtins():
    result = run_cli("priors")
    assert result.returncode == 0
    for name in ("gru", "pixelcnn", "transformer", "llamagen"):
        assert name in result.stdout and "built-in" in result.stdout


def test_the_best_held_out_step_and_the_overfitting_warning():
    from vqgen.stages.evaluation.priors import best_validation, overfit_note

    history = [{"step": 25, "loss": 3.0}, {"step": 200, "loss": 2.0, "val_bits_per_token": 5.1},
               {"step": 400, "val_bits_per_token": 5.0}, {"step": 600, "val_bits_per_token": 6.0}]  # fmt: skip
    rising = {"val_bits_per_token": 10.5, **best_validation(history, 10.5, 2000)}
    assert rising["best_val_step"] == 400 and rising["best_val_bits_per_token"] == 5.0
    note = overfit_note(rising, 1615)
    assert "lowest at step 400 (5.000 bits/token)" in note and "--steps 400" in note and "1,615" in note
    falling = {"val_bits_per_token": 4.9, **best_validation(history, 4.9, 2000)}
    assert falling["best_val_step"] == 2000 and overfit_note(falling, 1615) is None
    level = {"val_bits_per_token": 5.2, **best_validation(history, 5.2, 2000)}  # within 5% of the best
    assert overfit_note(level, 1615) is None


def test_scoring_the_held_out_split_during_training_changes_no_weight(run, tmp_path):
    """--eval-every uses no random numbers (label dropout and dropout are back on for the next step): the same
    weights as without."""
    from safetensors.torch import load_file

    weights = {}
    for every in ("0", "1"):
        out = tmp_path / f"every-{every}"
        result = train(run, "transformer", "--eval-every", every, "--out", str(out), "--keep-last")
        assert result.returncode == 0, result.stderr[-3000:]
        weights[every] = load_file(out / "model.safetensors")
    assert weights["0"].keys() == weights["1"].keys()
    assert all(torch.equal(weights["0"][k], weights["1"][k]) for k in weights["0"])
