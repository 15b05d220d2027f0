"""Training plugins: the contract through the real Trainer, the GAN plugin's pieces, the perceptual plugin's
offline error, and the CLI. Tiny models on the embedded MNIST digits; the whole file runs in well under 90 s."""

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from vqgen.plugins import PluginContext, PluginLoss, TrainingPlugin  # noqa: E402
from vqgen.plugins.gan import GAN_LOSSES, GANPlugin, adaptive_weight  # noqa: E402
from vqgen.stages.core.errors import UserError  # noqa: E402
from vqgen.stages.core.registry import PLUGINS, register_plugin  # noqa: E402
from vqgen.stages.data.images import DataConfig  # noqa: E402
from vqgen.stages.data.sources import load_image_splits  # noqa: E402
from vqgen.stages.tokenizer.base import QuantizerConfig  # noqa: E402
from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig  # noqa: E402
from vqgen.stages.training.plugins import build_plugins  # noqa: E402
from vqgen.stages.training.tasks import TokenizerTask  # noqa: E402
from vqgen.stages.training.trainer import TrainConfig, Trainer  # noqa: E402

# a small discriminator that trains from step 0 and reaches the tokenizer from step 2
FAST_GAN = ["gan.start_step=2", "gan.disc_warmup_steps=2", "gan.channels=8"]


@dataclass
class ToyConfig:
    scale: float = 1.0  # the loss is scale * mean(recon)
    nan_at: int = -1  # return a NaN loss once, at this step


@register_plugin("test-toy")
class ToyPlugin(TrainingPlugin):
    config_class = ToyConfig

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.fired = False  # not in state_dict: a rollback must not make it fire again

    def loss(self, ctx, batch, out, step):
        if step == self.config.nan_at and not self.fired:
            self.fired = True
            return PluginLoss(torch.tensor(float("nan")))
        return PluginLoss(self.config.scale * out.recon.mean(), {"toy": 1.0})


@pytest.fixture(scope="module")
def splits():
    return load_image_splits(DataConfig())


def make_trainer(splits, run_dir: Path, plugins: list[TrainingPlugin], **train) -> Trainer:
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(base_channels=8, num_res_blocks=0, quantizer=QuantizerConfig(codebook_size=16)))
    cfg = TrainConfig(**{"steps": 6, "batch_size": 8, "sample_every": 0, "log_every": 1, **train})
    return Trainer(TokenizerTask(model, splits), cfg, run_dir, plugins)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


def disc_weights(plugin: GANPlugin) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in plugin.disc.state_dict().items()}


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- the contract through the Trainer ---------------------------------------------------------------------
def test_plugin_loss_reaches_the_gradient(splits, tmp_path):
    after = {}
    for scale in (0, 50):  # the same seeded step; only the plugin's term differs
        plugins = build_plugins(["test-toy"], [f"test-toy.scale={scale}"], "tokenizer")
        trainer = make_trainer(splits, tmp_path / str(scale), plugins, lr=1e-2, warmup_steps=1)
        metrics = trainer.train_step(0)
        assert metrics["toy"] == 1.0  # the plugin's metrics reach the trainer
        after[scale] = weights(trainer)
    assert not torch.equal(after[0]["decoder.conv_out.weight"], after[50]["decoder.conv_out.weight"])


def test_gan_discriminator_steps_and_generator_term(splits, tmp_path):
    (gan,) = build_plugins(
        ["gan"], ["gan.start_step=1", "gan.disc_warmup_steps=1", "gan.channels=8"], "tokenizer"
    )
    trainer = make_trainer(splits, tmp_path, [gan])
    before = disc_weights(gan)
    m0 = trainer.train_step(0)
    assert "d_loss" in m0 and "g_loss" not in m0  # the discriminator warms up before step 1
    m1 = trainer.train_step(1)
    changed = [k for k, v in disc_weights(gan).items() if not torch.equal(v, before[k])]
    assert any(k.endswith("original") for k in changed)  # spectral-norm weights moved: the optimizer stepped
    assert math.isfinite(m1["g_loss"]) and m1["adaptive_weight"] > 0
    assert {"logits_real", "logits_fake", "d_grad_norm"} <= m1.keys()


def test_gan_skips_and_reports_an_exploding_discriminator(splits, tmp_path, capsys):
    (gan,) = build_plugins(["gan"], [*FAST_GAN, "gan.max_disc_grad_norm=0"], "tokenizer")
    trainer = make_trainer(splits, tmp_path, [gan])
    before = disc_weights(gan)
    trainer.train_step(0)
    metrics = trainer.train_step(1)
    after = disc_weights(gan)
    assert all(torch.equal(before[k], after[k]) for k in before if k.endswith("original"))  # steps skipped
    assert gan.events["exploding"] == 2 and metrics["gan_exploding"] == 2
    assert "gan: warning: discriminator gradient norm" in capsys.readouterr().out


def test_resume_is_bit_identical_with_plugin_state(splits, tmp_path):
    opts = [*FAST_GAN, "gan.reg=lecam"]
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    (gan_a,) = build_plugins(["gan"], opts, "tokenizer")
    full = make_trainer(splits, full_dir, [gan_a], checkpoint_every=3, keep_checkpoints=5)
    full.fit()
    shutil.copytree(full_dir, resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "step_0000006")

    (gan_b,) = build_plugins(["gan"], opts, "tokenizer")
    resumed = make_trainer(splits, resumed_dir, [gan_b], checkpoint_every=3, keep_checkpoints=5)
    assert resumed.resume() == 3
    assert gan_b.lecam_ready
    resumed.fit()
    assert_identical(weights(full), weights(resumed))
    assert_identical(disc_weights(gan_a), disc_weights(gan_b))
    assert torch.equal(gan_a.lecam_ema, gan_b.lecam_ema)
    state_a, state_b = gan_a.opt.state_dict()["state"], gan_b.opt.state_dict()["state"]
    for pid in state_a:
        assert torch.equal(state_a[pid]["exp_avg"], state_b[pid]["exp_avg"])


def test_rollback_on_injected_nan(splits, tmp_path):
    plugins = build_plugins(
        ["gan", "test-toy"], [*FAST_GAN, "test-toy.scale=0", "test-toy.nan_at=3"], "tokenizer"
    )
    trainer = make_trainer(splits, tmp_path, plugins, snapshot_every=2)
    trainer.fit()
    gan = plugins[0]
    assert trainer.step == 6 and trainer.nonfinite_total == 1
    assert trainer.lr_scale == pytest.approx(0.5)
    assert gan.lr_scale == pytest.approx(0.5)
    assert all(g["lr"] == pytest.approx(gan.config.lr * 0.5) for g in gan.opt.param_groups)
    assert all(torch.isfinite(v).all() for v in weights(trainer).values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in disc_weights(gan).values())
    assert trainer.history[-1]["nonfinite_skipped"] == 1


# --- registry and options ---------------------------------------------------------------------------------
def test_rejected_plugins_name_themselves():
    class NotAPlugin:
        config_class = ToyConfig

    with pytest.raises(UserError, match="test-not-a-plugin"):
        register_plugin("test-not-a-plugin")(NotAPlugin)

    @register_plugin("test-no-dataclass")
    class NoDataclass(TrainingPlugin):
        config_class = dict

    with pytest.raises(UserError, match="test-no-dataclass"):
        build_plugins(["test-no-dataclass"], [], "tokenizer")
    assert PLUGINS.get("test-toy") is ToyPlugin


def test_plugin_options_are_typed_and_checked():
    (gan,) = build_plugins(
        ["gan"], ["gan.weight=0.8", "gan.layers=3", "gan.spectral_norm=false", "gan.loss=lsq"], "tokenizer"
    )
    cfg = gan.config
    assert (cfg.weight, cfg.layers, cfg.spectral_norm, cfg.loss) == (0.8, 3, False, "lsq")
    assert isinstance(cfg.weight, float) and isinstance(cfg.layers, int)
    with pytest.raises(UserError, match="no option 'nope'"):
        build_plugins(["gan"], ["gan.nope=1"], "tokenizer")
    with pytest.raises(UserError, match="layers: expected int"):
        build_plugins(["gan"], ["gan.layers=three"], "tokenizer")
    with pytest.raises(UserError, match="loss must be one of"):
        build_plugins(["gan"], ["gan.loss=wasserstein"], "tokenizer")
    with pytest.raises(UserError, match="NAME.OPTION=VALUE"):
        build_plugins(["gan"], ["gan.weight"], "tokenizer")
    with pytest.raises(UserError, match="not enabled"):
        build_plugins([], ["gan.weight=1"], "tokenizer")


def test_gan_weight_is_nonzero_after_its_start_and_reaches_the_tokenizer(splits, tmp_path):
    """The schedule: nothing before `start_step`, a linear ramp over `ramp_steps`, lambda never below its floor; and
    from `start_step` on the adversarial term moves the tokenizer's weights (against the same run at weight 0)."""
    opts = ["gan.start_step=1", "gan.disc_warmup_steps=1", "gan.channels=8", "gan.ramp_steps=2"]
    floor = ["gan.min_adaptive_weight=0.5", "gan.weight=0.4"]
    (gan,) = build_plugins(["gan"], [*opts, *floor], "tokenizer")
    (off,) = build_plugins(["gan"], [*opts, "gan.weight=0"], "tokenizer")
    trainer, baseline = (
        make_trainer(splits, tmp_path / "gan", [gan]),
        make_trainer(splits, tmp_path / "off", [off]),
    )
    assert [gan.schedule(step) for step in range(4)] == pytest.approx([0.0, 0.2, 0.4, 0.4])
    history = [trainer.train_step(0)]
    baseline.train_step(0)
    assert "gan_weight" not in history[0] and "g_loss" not in history[0]
    assert_identical(
        weights(trainer), weights(baseline)
    )  # before the start the tokenizer gets nothing from it
    history.append(trainer.train_step(1))
    baseline.train_step(1)
    moved = weights(trainer)["decoder.conv_out.weight"] - weights(baseline)["decoder.conv_out.weight"]
    assert moved.abs().max() > 0  # the adversarial gradient reached the tokenizer at its start step
    history.append(trainer.train_step(2))
    assert history[1]["adaptive_weight"] >= 0.5 and history[1]["gan_weight"] >= 0.2 * 0.5
    assert history[2]["gan_weight"] >= 0.4 * 0.5 and history[2]["gan_weight"] > history[1]["gan_weight"] * 1.5
    (fixed,) = build_plugins(["gan"], [*opts, "gan.adaptive=false", "gan.weight=0.3"], "tokenizer")
    assert make_trainer(splits, tmp_path / "fixed", [fixed]).train_step(1)["adaptive_weight"] == 1.0


# --- the GAN plugin's pieces ------------------------------------------------------------------------------
def test_adaptive_weight_matches_hand_computation():
    torch.manual_seed(0)
    x, target, v = torch.randn(5, 3), torch.randn(5, 2), torch.randn(5, 2)
    w = torch.randn(2, 3, requires_grad=True)  # the "last layer"
    out = x @ w.T  # (5, 2)
    rec = (out - target).pow(2).mean()
    g = -(out * v).mean()
    lam = adaptive_weight(rec, g, w, max_weight=1e4)
    with torch.no_grad():  # d mean((xW^T - t)^2)/dW = 2/10 (out - t)^T x ; d -mean(xW^T * v)/dW = -1/10 v^T x
        rec_grad = 2 / 10 * (out - target).T @ x
        g_grad = -1 / 10 * v.T @ x
        expected = rec_grad.norm() / (g_grad.norm() + 1e-4)
    assert float(lam) == pytest.approx(float(expected), rel=1e-5)
    assert not lam.requires_grad
    assert float(adaptive_weight(rec, g, w, max_weight=0.01)) == pytest.approx(0.01)
    assert float(adaptive_weight(rec, g, w, max_weight=1e4, min_weight=100.0)) == pytest.approx(
        100.0
    )  # the floor
    (rec + g).backward()  # both graphs were kept for the stage's backward
    assert w.grad is not None


def test_gan_loss_values_on_known_logits():
    real, fake = torch.tensor([2.0, -0.5]), torch.tensor([-2.0, 0.5])
    sp = lambda t: math.log1p(math.exp(t))  # noqa: E731  softplus
    expected = {
        "hinge": (0.5 * (0.75 + 0.75), 0.75),
        "vanilla": (0.5 * ((sp(-2) + sp(0.5)) / 2 + (sp(-2) + sp(0.5)) / 2), (sp(2) + sp(-0.5)) / 2),
        "lsq": (0.5 * ((1 + 2.25) / 2 + (4 + 0.25) / 2), 0.5 * (9 + 0.25) / 2),
    }
    for name, (d, g) in expected.items():
        assert float(GAN_LOSSES[name].d(real, fake)) == pytest.approx(d), name
        assert float(GAN_LOSSES[name].g(fake)) == pytest.approx(g), name


# --- the perceptual plugin --------------------------------------------------------------------------------
def test_perceptual_offline_is_one_clear_line(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    from vqgen.stages.artifacts.hub import weights_file

    ctx = PluginContext(
        accelerator=None, model=None, stage="tokenizer", total_steps=1, seed=0, weights_file=weights_file
    )
    for weights_opt in ([], [f"perceptual.weights={tmp_path / 'missing.safetensors'}"]):
        (plugin,) = build_plugins(["perceptual"], weights_opt, "tokenizer")
        with pytest.raises(
            OSError
        ) as err:  # the plugin's plain error; the trainer makes it a one-line UserError
            plugin.setup(ctx)
        message = str(err.value)
        assert "\n" not in message
        assert "weights" in message and "--plugin-opt perceptual.weights=" in message


def test_perceptual_loss_with_local_weights(tmp_path):
    from safetensors.torch import save_file
    from vqgen.plugins.perceptual import VGG16Features

    torch.manual_seed(0)
    save_file(VGG16Features().state_dict(), str(tmp_path / "vgg.safetensors"))
    (plugin,) = build_plugins(
        ["perceptual"], [f"perceptual.weights={tmp_path / 'vgg.safetensors'}"], "tokenizer"
    )

    class Acc:
        device = torch.device("cpu")

    plugin.setup(PluginContext(Acc(), None, "tokenizer", 1, 0))
    images = torch.rand(2, 1, 28, 28) * 2 - 1
    recon = images.flip(-1).clone().requires_grad_(True)
    out = type("Out", (), {"recon": recon})()
    term = plugin.loss(None, images, out, 0)
    assert float(term.loss.detach()) > 0 and term.metrics["perceptual"] > 0
    term.loss.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert float(plugin.loss(None, images, type("Out", (), {"recon": images})(), 0).loss) == pytest.approx(0)


# --- the CLI --------------------------------------------------------------------------------------------
def test_cli_tokenize_with_gan(tmp_path):
    from typer.testing import CliRunner
    from vqgen.cli import app

    run = tmp_path / "run"
    args = ["tokenize", "--run", str(run), "--steps", "4", "--batch-size", "8", "--codebook-size", "16"]
    args += ["--base-channels", "8", "--res-blocks", "0", "--sample-every", "0", "--plugin", "gan"]
    args += ["--plugin-opt", "gan.start_step=1", "--plugin-opt", "gan.channels=8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((run / "run_config.json").read_text())
    assert config["plugins"] == ["gan"] and config["plugin_options"] == ["gan.start_step=1", "gan.channels=8"]
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert "d_loss" in history[-1] and "g_loss" in history[-1]


def test_gan_rejects_too_deep_discriminator(splits, tmp_path):
    plugins = build_plugins(["gan"], ["gan.layers=4"], "tokenizer")
    with pytest.raises(UserError, match="too many for 28px"):
        make_trainer(splits, tmp_path, plugins)


def test_gan_losses_push_the_right_way():
    """Every generator loss falls as fake logits rise; every discriminator loss falls as it separates better."""
    low, high = torch.full((4,), -1.0), torch.full((4,), 1.0)
    for name, fns in GAN_LOSSES.items():
        assert float(fns.g(high)) < float(fns.g(low)), name
        assert float(fns.d(high, low)) < float(fns.d(low, high)), name
