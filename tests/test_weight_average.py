"""--model-ema-decay: an exponential moving average of the weights, saved as the model, carried by checkpoints so
that an interrupted run resumes it exactly, and rolled back with the model."""

import pytest
import torch
from test_resume import LinearTask
from vqgen.stages.training.ema import WeightAverage
from vqgen.stages.training.trainer import TrainConfig, Trainer


def config(steps: int = 10) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=8, checkpoint_every=3, sample_every=0, model_ema_decay=0.9)


def test_the_average_follows_the_weights_with_a_warm_up():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # first update: decay min(0.9, 2/11)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1 - 2 / 11))
    with ema.applied(model):
        assert torch.allclose(model.weight, torch.full((1, 2), 1 - 2 / 11))
    assert torch.equal(model.weight, torch.ones(1, 2))  # its own weights back after the block


def test_the_saved_model_is_the_average_and_a_resumed_run_ends_identical(tmp_path):
    whole = Trainer(LinearTask(), config(), tmp_path / "whole")
    whole.fit()
    trained = {k: v.clone() for k, v in whole.unwrapped().state_dict().items()}
    final = whole.final_model().state_dict()
    assert not torch.equal(final["weight"], trained["weight"])  # the average, not the last step's weights
    assert torch.equal(final["weight"], whole.ema.shadow["weight"])

    stopped = Trainer(LinearTask(), config(), tmp_path / "stopped")
    step = stopped.train_step

    def stop(s):
        if s == 7:
            raise KeyboardInterrupt  # as a kill after the checkpoint of step 6
        return step(s)

    stopped.train_step = stop
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    resumed = Trainer(LinearTask(), config(), tmp_path / "stopped")
    assert resumed.resume() == 6 and resumed.ema.updates == 6
    resumed.fit()
    assert all(torch.equal(final[k], resumed.final_model().state_dict()[k]) for k in final)


def test_resuming_with_an_average_from_a_run_without_one_is_refused(tmp_path):
    Trainer(
        LinearTask(), TrainConfig(steps=3, batch_size=8, checkpoint_every=3, sample_every=0), tmp_path
    ).fit()
    from vqgen.stages.core.errors import UserError

    with pytest.raises(UserError, match="holds no weight average"):
        Trainer(LinearTask(), config(), tmp_path).resume()
