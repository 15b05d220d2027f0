"""The best held-out prior kept, early stopping, and both resumed exactly: a tiny GRU through the real Trainer on
random codes, with held-out scores scripted per step (the real scoring is tested in test_cli_priors.py)."""

import shutil

import pytest
import torch
from vqgen.priors.gru import GRUPrior, GRUPriorConfig
from vqgen.stages.artifacts.codes import CodeSplits
from vqgen.stages.core.errors import UserError
from vqgen.stages.training.best import BestWeights
from vqgen.stages.training.checkpoint import CHECKPOINT_DIR
from vqgen.stages.training.config import MIN_DATA_STEPS, PRIOR_TRAINING, TrainConfig, steps_for_epochs
from vqgen.stages.training.tasks import PriorTask
from vqgen.stages.training.trainer import Trainer

CURVE = {1: 5.0, 2: 4.0, 3: 4.5, 4: 3.9, 5: 4.2, 6: 4.3, 7: 4.4, 8: 3.0}  # step -> held-out bits/token


class ScriptedPriorTask(PriorTask):
    """A PriorTask whose held-out score is CURVE[step]; it remembers the weights it was shown at each step."""

    def __init__(self, *args):
        super().__init__(*args)
        self.shown: dict[int, dict[str, torch.Tensor]] = {}
        self.trainer: Trainer | None = None

    def validate(self, model):
        step = self.trainer.step
        self.shown[step] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"val_bits_per_token": CURVE[step]}


def make_trainer(run_dir, **train) -> Trainer:
    g = torch.Generator().manual_seed(0)
    codes = CodeSplits(
        torch.randint(0, 8, (32, 2, 3), generator=g),
        torch.randint(0, 2, (32,), generator=g),
        torch.randint(0, 8, (8, 2, 3), generator=g),
        torch.randint(0, 2, (8,), generator=g),
        {},
    )
    torch.manual_seed(0)
    model = GRUPrior(
        GRUPriorConfig(
            vocab_size=8,
            grid_height=2,
            grid_width=3,
            num_classes=2,
            embed_dim=8,
            hidden_size=8,
            num_layers=1,
            dropout=0.0,
        )
    )
    task = ScriptedPriorTask(model, codes)
    cfg = TrainConfig(
        **{
            "steps": 8,
            "batch_size": 4,
            "sample_every": 0,
            "log_every": 1,
            "eval_every": 1,
            "checkpoint_every": 100,
            "keep_checkpoints": 20,
            "device": "cpu",
            **train,
        }
    )
    trainer = Trainer(task, cfg, run_dir)
    task.trainer = trainer
    return trainer


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_best_weights_bookkeeping():
    best, model = BestWeights("val", patience=2), torch.nn.Linear(2, 1)
    assert best.update(1, {"val": 3.0}, model) and best.step == 1
    assert not best.update(2, {"val": float("nan")}, model) and not best.exhausted
    assert not best.update(3, {"val": 3.0}, model) and best.exhausted  # equal is no improvement
    tensors, meta = best.state_dict()
    again = BestWeights("val", patience=2)
    again.load_state_dict(tensors, meta)
    assert (again.step, again.value, again.since) == (1, 3.0, 2) and again.exhausted
    assert_same(again.weights, best.weights)
    empty = BestWeights("val")
    empty.load_state_dict(*empty.state_dict())
    assert empty.step is None and empty.value == float("inf")


def test_the_best_held_out_weights_are_kept_and_the_last_ones_with_keep_last(tmp_path):
    trainer = make_trainer(tmp_path / "best")
    trainer.fit()
    assert trainer.step == 8 and not trainer.stopped_early
    last = weights(trainer.unwrapped())
    assert trainer.best.step == 8 and trainer.kept() == "best"  # 3.0 at the last step: the last is the best
    trainer = make_trainer(tmp_path / "mid", steps=7)  # the curve's lowest before step 8: step 4
    trainer.fit()
    assert trainer.kept() == "best" and trainer.best.step == 4
    assert_same(weights(trainer.final_model()), trainer.task.shown[4])
    keep_last = make_trainer(tmp_path / "last", steps=7, keep_last=True)
    keep_last.fit()
    assert keep_last.kept() == "last"
    assert_same(weights(keep_last.final_model()), keep_last.task.shown[7])
    assert not torch.equal(last["head.weight"], keep_last.task.shown[4]["head.weight"])


def test_patience_stops_early_with_one_line_and_resume_is_exact(tmp_path, capsys):
    """Patience 3: the best is step 4 (3.9), steps 5, 6, 7 bring nothing lower: the run stops at step 7 of 8.
    A run resumed from its step-5 checkpoint keeps, and stops at, exactly the same."""
    full = make_trainer(tmp_path / "full", patience=3, checkpoint_every=1)
    full.fit()
    assert full.stopped_early and full.step == 7 and full.best.step == 4
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "early stop" in line]
    assert lines == [
        "prior: early stop at step 7 of 8: no lower val_bits_per_token in 3 scorings (--patience 3, every 1 "
        "steps); the best was at step 4 (3.9 val_bits_per_token)"
    ]
    last = weights(full.unwrapped())
    kept = weights(full.final_model())  # loads the kept weights into the model
    assert_same(kept, full.task.shown[4])

    resumed_dir = tmp_path / "resumed"
    (resumed_dir / CHECKPOINT_DIR).mkdir(parents=True)
    shutil.copytree(
        full.run_dir / CHECKPOINT_DIR / "step_0000005", resumed_dir / CHECKPOINT_DIR / "step_0000005"
    )
    resumed = make_trainer(resumed_dir, patience=3, checkpoint_every=1)
    assert resumed.resume() == 5 and resumed.best.step == 4 and resumed.best.since == 1
    resumed.fit()
    assert resumed.stopped_early and resumed.step == 7 and resumed.data_digest == full.data_digest
    assert_same(weights(resumed.unwrapped()), last)  # the last weights: bit for bit
    assert_same(weights(resumed.final_model()), kept)  # the kept ones too

    again = make_trainer(
        tmp_path / "full", patience=3, checkpoint_every=1
    )  # resuming a run that stopped early: it stays stopped
    assert again.resume() == 7 and again.stopped_early
    again.fit()
    assert again.step == 7


def test_the_progress_line_shows_the_held_out_score(tmp_path):
    trainer = make_trainer(tmp_path, steps=2)
    trainer.fit()
    assert "val_bits_per_token=4" in str(trainer.bar)  # 4.0 at step 2, beside the training loss
    assert "loss=" in str(trainer.bar)


def test_the_default_steps_follow_the_size_of_the_data(tmp_path):
    assert steps_for_epochs(28, 4500, 64) == 1969  # the digits: about the 2,000 steps chosen for them
    assert steps_for_epochs(28, 1615, 64) == 707  # the 1,615 emoji at 32 px
    assert steps_for_epochs(28, 60, 64) == MIN_DATA_STEPS  # a tiny folder still gets a schedule
    assert PRIOR_TRAINING.steps == 0 and PRIOR_TRAINING.epochs > 0
    trainer = make_trainer(tmp_path, steps=0, epochs=100.0, batch_size=4)  # 32 grids
    assert trainer.cfg.steps == 800 and trainer.ctx.total_steps == 800
    with pytest.raises(UserError, match="epochs > 0"):
        make_trainer(tmp_path / "none", steps=0, epochs=0.0)
