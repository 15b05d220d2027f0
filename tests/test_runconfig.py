"""Runs described by a file (`--config`), `--resume` without retyping flags, and typed `--plugin-opt`/`--prior-opt`."""

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import pytest
from conftest import TINY_TOKENIZER_FLAGS, assert_user_error, call_cli, run_cli
from vqgen.priors.gru import GRUPriorConfig
from vqgen.stages.commands.train_prior import prior_training
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.options import parse_options
from vqgen.stages.core.runconfig import flat_file, set_fields
from vqgen.stages.training.config import PRIOR_TRAINING, TOKENIZER_TRAINING, TrainConfig

TINY = {
    "codebook_size": 16,
    "code_dim": 4,
    "base_channels": 8,
    "res_blocks": 1,
    "batch_size": 8,
    "sample_every": 0,
}


def saved(run):
    return json.loads((run / "run_config.json").read_text())


def test_config_file_sets_fields_without_a_flag_and_flags_win(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "train:\n  steps: 4\n  warmup_steps: 1\n  clip_grad: 0.5\n  keep_checkpoints: 1\n"
        + "".join(f"{k}: {v}\n" for k, v in TINY.items())
    )
    run = tmp_path / "run"
    result = run_cli("tokenize", "--run", str(run), "--config", str(config), "--steps", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    cfg = saved(run)
    assert cfg["train"]["steps"] == 3  # the flag beats the file
    assert (cfg["train"]["warmup_steps"], cfg["train"]["clip_grad"], cfg["train"]["keep_checkpoints"]) == (
        1,
        0.5,
        1,
    )
    assert cfg["model"]["quantizer"]["codebook_size"] == 16 and cfg["model"]["num_res_blocks"] == 1


def test_resume_reads_the_saved_configuration(tmp_path):
    run = tmp_path / "run"
    flags = [*TINY_TOKENIZER_FLAGS, "--steps", "4", "--checkpoint-every", "2"]
    assert run_cli("tokenize", "--run", str(run), *flags).returncode == 0
    changed = run_cli("tokenize", "--run", str(run), "--resume", "--codebook-size", "32")
    assert_user_error(changed, "--resume: codebook_size was 16", "is now 32")
    more = run_cli("tokenize", "--run", str(run), "--resume", "--steps", "6")  # nothing else retyped
    assert more.returncode == 0, more.stderr[-2000:]
    assert "warning: --resume: steps changes from 4 to 6" in more.stderr
    cfg = saved(run)
    assert cfg["train"]["steps"] == 6 and cfg["model"]["quantizer"]["codebook_size"] == 16
    assert cfg["model"]["base_channels"] == 8


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("steps: [1, 2]\n", "steps"),
        ("no_such_option: 1\n", "unknown option(s) no_such_option"),
        ("- 1\n", "mapping"),
    ],
)
def test_bad_config_files_are_one_line(tmp_path, text, fragment):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert_user_error(run_cli("tokenize", "--run", str(tmp_path / "r"), "--config", str(config)), fragment)
    assert not (tmp_path / "r").exists()


def test_set_fields_reaches_nested_fields_and_keeps_the_defaults():
    @dataclass
    class Outer:
        train: TrainConfig = field(default_factory=TrainConfig)
        name: str = "x"

    base = Outer()
    changed = set_fields(base, {"clip_grad": 0.25, "name": "y", "steps": 7}, "test")
    assert (changed.train.clip_grad, changed.name, changed.train.steps) == (0.25, "y", 7)
    assert base.train.clip_grad == 1.0 and TOKENIZER_TRAINING.clip_grad == 1.0
    with pytest.raises(UserError, match="clip_grad should be float"):
        set_fields(base, {"clip_grad": "high"}, "test")
    assert flat_file({"train": {"steps": 3}, "name": "a"}, "f") == {"steps": 3, "name": "a"}
    with pytest.raises(UserError, match="given twice"):
        flat_file({"train": {"steps": 3}, "steps": 4}, "f")


def test_stage_defaults_are_declared_once():
    assert (TOKENIZER_TRAINING.steps, PRIOR_TRAINING.steps, PRIOR_TRAINING.weight_decay) == (3200, 0, 0.01)
    assert PRIOR_TRAINING.epochs == 28.0  # steps 0: the prior's steps follow the size of its data


def test_each_prior_trains_with_its_own_defaults_and_given_values_win(tmp_path, monkeypatch):
    """A prior's config may declare the training settings it trains best with (`training`: the GRU's 56 epochs
    and weight decay 0.1); train-prior takes them where no flag or --config value was given."""
    gru = prior_training("gru")
    assert (gru.epochs, gru.weight_decay) == (2 * PRIOR_TRAINING.epochs, 0.1)
    assert prior_training("transformer") == PRIOR_TRAINING
    run = tmp_path / "run"
    assert run_cli("tokenize", "--run", str(run), *TINY_TOKENIZER_FLAGS, "--steps", "2").returncode == 0
    config = tmp_path / "prior.yaml"
    config.write_text("train:\n  epochs: 3\n")
    tiny = {"gru": ["embed_dim=8", "hidden_size=8", "num_layers=1", "row_context=4"],
            "transformer": ["hidden_size=8", "num_layers=1", "num_heads=2", "intermediate_size=16"]}  # fmt: skip
    quick = ["--steps", "2", "--batch-size", "8", "--eval-every", "0", "--sample-every", "0"]
    runs = {
        "gru": ("gru", []),
        "transformer": ("transformer", []),
        "gru-given": ("gru", ["--weight-decay", "0.05", "--config", str(config)]),
    }
    for out, (prior, extra) in runs.items():
        flags = [f for opt in tiny[prior] for f in ("--prior-opt", opt)]
        where = ["--codes", run / "codes", "--out", tmp_path / out, "--prior", prior]
        answer = call_cli("train-prior", *where, *quick, *flags, *extra)
        assert answer.code == 0, answer.err[-2000:]
    trained = {out: saved(tmp_path / out)["train"] for out in runs}
    assert (trained["gru"]["epochs"], trained["gru"]["weight_decay"]) == (56.0, 0.1)
    assert (trained["transformer"]["epochs"], trained["transformer"]["weight_decay"]) == (28.0, 0.01)
    assert (trained["gru-given"]["epochs"], trained["gru-given"]["weight_decay"]) == (3.0, 0.05)
    monkeypatch.setattr(GRUPriorConfig, "training", {"epoch": 56.0})  # a typo in a plugin prior's config
    with pytest.raises(UserError, match="training settings that train-prior does not have: epoch"):
        prior_training("gru")


class Loss(Enum):
    hinge = "hinge"
    lsq = "lsq"


@dataclass
class Typed:
    mult: tuple[int, ...] = (1, 2)
    pair: tuple[int, float] = (1, 2.0)
    names: list[str] = field(default_factory=list)
    loss: Loss = Loss.hinge
    kind: Literal["a", "b"] = "a"


def test_options_convert_lists_tuples_enums_and_literals():
    got = parse_options(
        "p", Typed, {"mult": "1,2,4", "pair": "(3, 0.5)", "names": "[a, b]", "loss": "lsq", "kind": "b"}
    )
    assert got == Typed((1, 2, 4), (3, 0.5), ["a", "b"], Loss.lsq, "b")
    assert parse_options("p", Typed, {"names": ""}).names == []


@pytest.mark.parametrize(
    "options,fragment",
    [
        ({"pair": "1,2,3"}, "expected 2"),
        ({"loss": "nope"}, "one of hinge, lsq"),
        ({"kind": "c"}, "one of a, b"),
        ({"mult": "1,x"}, "expected int"),
    ],
)
def test_options_refuse_what_does_not_convert(options, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_options("p", Typed, options)
