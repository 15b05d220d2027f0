"""Every registered prior on a 16x16 grid (256 tokens): causality, cached == naive sampling under every guidance
schedule, and a save/load round trip; the guidance schedules themselves; and their refusals."""

from typing import get_type_hints

import pytest
import torch
from vqgen.priors.base import GUIDANCE_SCHEDULES, SamplingOptions, guidance_scales
from vqgen.stages.artifacts.models import load_prior
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.registry import PRIORS
from vqgen.stages.sampling.config import SamplingConfig

G, V, K = 16, 32, 3  # grid side, vocabulary, classes
TINY = {
    "gru": dict(embed_dim=8, hidden_size=16, num_layers=1, dropout=0.0),
    "pixelcnn": dict(channels=8, num_layers=3, head_channels=16),
    "transformer": dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, attention_dropout=0),
    "llamagen": dict(hidden_size=16, num_layers=1, num_heads=2, multiple_of=16, token_dropout=0, resid_dropout=0,
                     ffn_dropout=0),
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=PRIORS.names(), scope="module")
def prior(request):
    cls = PRIORS.get(request.param)
    config_cls = get_type_hints(cls.__init__)["config"]
    torch.manual_seed(0)
    common = dict(vocab_size=V, grid_height=G, grid_width=G, num_classes=K)
    model = cls(config_cls(**common, **TINY.get(request.param, {}))).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_causal_on_a_long_grid(prior):
    """Changing the code at one position changes no logit at or before it."""
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, V, (2, G, G), generator=g)
    labels = torch.tensor([0, 2])
    t = G * G // 2 + 3
    changed = codes.clone().view(2, -1)
    changed[:, t] = (changed[:, t] + 1) % V
    with torch.no_grad():
        a = prior(codes, labels).logits.reshape(2, G * G, V)
        b = prior(changed.view(2, G, G), labels).logits.reshape(2, G * G, V)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-9)


@pytest.mark.parametrize("schedule", GUIDANCE_SCHEDULES)
def test_cached_equals_naive_on_a_long_grid(prior, schedule):
    interval = (0.1, 0.9) if schedule == "constant" else (0.0, 1.0)
    options = SamplingOptions(cfg_scale=2.0, cfg_schedule=schedule, cfg_power=2.0, cfg_interval=interval)
    labels = torch.tensor([1, 2])
    fast = prior.sample(2, labels, options, generator=torch.Generator().manual_seed(3))
    slow = prior.sample_naive(2, labels, options, generator=torch.Generator().manual_seed(3))
    assert fast.shape == (2, G, G) and torch.equal(fast, slow)


def test_save_load_round_trip_on_a_long_grid(prior, tmp_path):
    prior.float().save_pretrained(tmp_path)
    loaded = load_prior(tmp_path)
    codes = torch.randint(0, V, (2, G, G), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(
            prior(codes, torch.tensor([0, 1])).logits, loaded(codes, torch.tensor([0, 1])).logits
        )
    prior.double()


def test_guidance_schedules():
    assert guidance_scales(3.0, 4) == [3.0] * 4
    assert guidance_scales(3.0, 4, "linear") == [1.5, 2.0, 2.5, 3.0]
    assert guidance_scales(3.0, 4, "power", power=2.0) == [1 + 2 * (r / 4) ** 2 for r in (1, 2, 3, 4)]
    assert guidance_scales(3.0, 4, "constant", interval=(0.25, 0.75)) == [1.0, 3.0, 3.0, 1.0]
    for bad in (dict(schedule="cosine"), dict(interval=(0.5, 0.5)), dict(power=0.0)):
        with pytest.raises(ValueError):
            guidance_scales(3.0, 4, **bad)


class Config:
    def __init__(self, num_classes, label_dropout):
        self.num_classes, self.label_dropout = num_classes, label_dropout
        self.sample_cfg_scale, self.sample_temperature = 2.5, 0.8


class Stub:
    def __init__(self, num_classes=10, label_dropout=0.1):
        self.config = Config(num_classes, label_dropout)


def test_guidance_defaults_and_refusals():
    resolved = SamplingConfig().for_prior(Stub())  # the prior's own defaults
    assert (resolved.cfg_scale, resolved.temperature) == (2.5, 0.8)
    assert SamplingConfig(temperature=1.0, cfg_scale=3.0).for_prior(Stub()).temperature == 1.0
    assert SamplingConfig().for_prior(Stub(num_classes=0)).cfg_scale == 1.0
    assert SamplingConfig().for_prior(Stub(label_dropout=0.0)).cfg_scale == 1.0
    with pytest.raises(UserError, match="unconditional"):
        SamplingConfig(cfg_scale=2.0).for_prior(Stub(num_classes=0))
    with pytest.raises(UserError, match="without label dropout"):
        SamplingConfig(cfg_scale=2.0).for_prior(Stub(label_dropout=0.0))
    for bad, fragment in (
        (dict(cfg_schedule="cosine"), "--cfg-schedule 'cosine' does not exist"),
        (dict(cfg_scale=float("nan")), "--cfg-scale must be a number"),
        (dict(cfg_scale=1e300), "--cfg-scale must be a number"),
        (dict(temperature=1e-300), "--temperature must lie in"),
        (dict(cfg_interval=(0.8, 0.2)), "--cfg-interval"),
    ):
        with pytest.raises(UserError, match=fragment):
            SamplingConfig(**bad).validate()


def test_transformer_with_2d_positions_samples_as_its_forward_pass():
    from vqgen.priors.transformer import TransformerPrior, TransformerPriorConfig

    torch.manual_seed(0)
    config = TransformerPriorConfig(
        vocab_size=V, grid_height=G, grid_width=G, num_classes=K, pos_2d=True, **TINY["transformer"]
    )
    model = TransformerPrior(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    labels, options = torch.tensor([0, 1]), SamplingOptions(cfg_scale=2.0, cfg_schedule="linear")
    fast = model.sample(2, labels, options, generator=torch.Generator().manual_seed(5))
    assert torch.equal(
        fast, model.sample_naive(2, labels, options, generator=torch.Generator().manual_seed(5))
    )


def test_pixelcnn_layers_cover_the_grid():
    """With the default number of layers, the logits of a position have a gradient from every earlier position
    and from no later one (a structural check: influence through 15 gated layers is too small to see in values)."""
    from vqgen.priors.pixelcnn import PixelCNNPrior, PixelCNNPriorConfig, layers_to_cover

    assert [layers_to_cover(g, g, 3) for g in (7, 16, 32)] == [6, 15, 31]
    torch.manual_seed(0)
    config = PixelCNNPriorConfig(vocab_size=V, grid_height=G, grid_width=G, channels=4, head_channels=8)
    model = PixelCNNPrior(config).double()
    assert len(model.layers) == 15
    inputs = {}
    model.embed.register_forward_hook(
        lambda module, args, out: inputs.setdefault("e", out.retain_grad() or out)
    )
    for ti, tj in [(G - 1, G - 1), (1, 0), (G - 1, 0)]:
        inputs.clear()
        model(torch.randint(0, V, (1, G, G))).logits[0, ti, tj].sum().backward()
        seen = inputs["e"].grad[0].abs().sum(-1) != 0  # (H, W): positions the logits depend on
        earlier = torch.arange(G * G).view(G, G) < ti * G + tj
        assert bool(seen[earlier].all()) and not bool(seen[~earlier].any()), (ti, tj)


def test_long_grid_benchmark_runs_in_tiny_mode(tmp_path):
    from benchmarks import long_grids

    result = long_grids.main(["--tiny", "--json", str(tmp_path / "out.json")])
    assert (tmp_path / "out.json").is_file()
    for grid in result["results"].values():
        cached = [r for r in grid["sampling"] if r["sampler"] == "cached"]
        assert cached and all(r["same_as_naive"] for r in cached)
        assert {r["prior"] for r in grid["train"]} == set(PRIORS.names())


def test_the_transformer_knows_rows_and_columns_from_16x16_by_default():
    from vqgen.priors.transformer import TransformerPriorConfig

    assert TransformerPriorConfig(grid_height=7, grid_width=7).pos_2d is False  # the digits' 7x7 codes
    assert TransformerPriorConfig(grid_height=16, grid_width=16).pos_2d is True
    assert TransformerPriorConfig(grid_height=32, grid_width=32, pos_2d=False).pos_2d is False  # asked for
