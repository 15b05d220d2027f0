"""The prior contract, checked on every registered prior with a tiny config (vocab 16, a 3x5 grid, 3 classes)."""

import dataclasses
import json
import math
import os
from typing import get_type_hints

import pytest
import torch
import vqgen
from hypothesis import given, settings
from hypothesis import strategies as st
from vqgen.priors import Prior, PriorConfig, SamplingOptions
from vqgen.priors.base import draw, filter_logits
from vqgen.priors.gru import GRUPriorConfig
from vqgen.stages.core.registry import PRIORS, register_prior

NAMES = PRIORS.names()  # built-ins and any installed through the entry-point group
# architectures that see every earlier position and learn fast
BUILT_IN = {"gru", "pixelcnn", "transformer", "llamagen"}
COMMON = dict(vocab_size=16, grid_height=3, grid_width=5, num_classes=3)
TINY = {  # architecture fields of the built-ins; a third-party prior is tried with its defaults
    "gru": dict(embed_dim=16, hidden_size=32, num_layers=2, row_context=8, dropout=0.0, code_noise=0.0),
    "pixelcnn": dict(channels=16, num_layers=4, head_channels=32),  # 4 layers see all of a 3x5 grid
    "transformer": dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, attention_dropout=0),
    "llamagen": dict(hidden_size=32, num_layers=2, num_heads=2, multiple_of=32, token_dropout=0, resid_dropout=0,
                     ffn_dropout=0),
}  # fmt: skip
V, H, W, T = COMMON["vocab_size"], COMMON["grid_height"], COMMON["grid_width"], 15


def tiny(name: str, dtype: torch.dtype = torch.float32, **overrides) -> Prior:
    """A tiny prior with random weights: noise on every parameter, so that no check passes only because a
    prior initialises something to zero."""
    cls = PRIORS.get(name)
    config_cls = get_type_hints(cls.__init__)["config"]
    torch.manual_seed(0)
    model = cls(config_cls(**{**COMMON, **TINY.get(name, {}), **overrides})).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def skip_unless_built_in(name: str) -> None:
    if name not in BUILT_IN:
        pytest.skip(f"{name}: a property of the built-in architectures, not of the prior contract")


def codes_and_labels(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (n, H, W), generator=g), torch.randint(0, 3, (n,), generator=g)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and spinning threads slow down on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=NAMES, scope="module")
def name(request) -> str:
    return request.param


def test_config_names_its_prior(name):
    model = tiny(name)
    assert isinstance(model.config, PriorConfig)
    assert model.config.prior_type == name


def test_forward_shapes_and_loss(name):
    model = tiny(name)
    codes, labels = codes_and_labels(4)
    for lab in (labels, None):
        out = model(codes, lab)
        assert out.logits.shape == (4, H, W, V)
        assert out.loss.shape == () and torch.isfinite(out.loss)
    model.eval()
    out = model(codes, labels)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, V), codes.reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    assert abs(out.loss.item() - math.log(V)) < 1.0  # an untrained prior is close to uniform


def test_causal(name):
    """Changing the codes at raster position t and later leaves the logits at positions <= t unchanged, and
    changes some logits after t (the prior does read its input)."""
    model = tiny(name, torch.float64).eval()
    codes, labels = codes_and_labels(3)
    with torch.no_grad():
        base = model(codes, labels).logits.reshape(3, T, V)
        for t in range(T):
            changed = codes.clone().view(3, T)
            later = changed[:, t:]  # a view: changed in place
            later.add_(torch.randint(1, V, later.shape, generator=seeded(t))).remainder_(V)
            logits = model(changed.view(3, H, W), labels).logits.reshape(3, T, V)
            torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-10)
            if t < T - 1:
                moved = (logits[:, t + 1 :] - base[:, t + 1 :]).abs().max()
                assert moved > 1e-6, f"position {t} is never read"


def test_sees_every_earlier_position(name):
    """Changing the code at one position s changes the logits at every later position (no blind spot) and
    at no earlier one."""
    skip_unless_built_in(name)
    assert_reads_exactly_the_earlier_positions(tiny(name, torch.float64).eval())


def assert_reads_exactly_the_earlier_positions(model: Prior) -> None:
    codes, labels = codes_and_labels(1)
    changed = codes.view(1, T).repeat(T, 1)  # row s: the code at position s changed
    changed[torch.arange(T), torch.arange(T)] = (changed.diagonal() + 1) % V
    with torch.no_grad():
        base = model(codes, labels).logits.reshape(1, T, V)
        logits = model(changed.view(T, H, W), labels.expand(T)).logits.reshape(T, T, V)
    moved = (logits - base).abs().amax(-1) > 1e-9  # (s, t): did the logits at t move when s changed?
    assert torch.equal(moved, torch.ones(T, T, dtype=torch.bool).triu(1))


def test_labels_condition_the_logits(name):
    model = tiny(name).eval()
    codes, _ = codes_and_labels(2)
    with torch.no_grad():
        a = model(codes, torch.tensor([0, 0])).logits
        b = model(codes, torch.tensor([1, 1])).logits
    assert (a[:, 0, 0] - b[:, 0, 0]).abs().max() > 1e-6  # even the first position sees the label


def test_dropout_acts_in_training_only(name):
    """Every `*dropout` field of a built-in prior's config (label dropout aside) changes the teacher-forced logits in
    training mode and nothing in eval mode; with all of them at 0, training mode computes what eval mode does."""
    skip_unless_built_in(name)
    fields = [f.name for f in dataclasses.fields(tiny(name).config)]
    rates = [f for f in fields if f.endswith("dropout") and f != "label_dropout"]
    kinds = {
        "transformer": {"attention_dropout", "token_dropout", "resid_dropout"},
        "llamagen": {"token_dropout", "resid_dropout", "ffn_dropout"},
    }
    assert kinds.get(name, {"dropout", "token_dropout"}) <= set(rates)  # gru and pixelcnn: both kinds
    codes, labels = codes_and_labels(4)

    def logits(model, train: bool) -> torch.Tensor:
        model.train(train)
        torch.manual_seed(1)
        with torch.no_grad():
            return model(codes, labels).logits

    off = tiny(name, label_dropout=0.0, **dict.fromkeys(rates, 0.0))
    torch.testing.assert_close(logits(off, True), logits(off, False), rtol=0, atol=0)
    for rate in rates:
        model = tiny(name, label_dropout=0.0, **{**dict.fromkeys(rates, 0.0), rate: 0.5})
        assert not torch.equal(logits(model, True), logits(model, False)), (
            f"{rate} changes nothing in training"
        )
        torch.testing.assert_close(logits(model, False), logits(off, False), rtol=0, atol=0)


def pattern(labels: torch.Tensor) -> torch.Tensor:
    """(n,) labels -> (n, H, W) codes that follow the label and the position."""
    rows, cols = torch.arange(H)[:, None], torch.arange(W)[None, :]
    return (labels[:, None, None] * 5 + rows + 2 * cols) % V


@pytest.fixture(scope="module")
def trained(name) -> tuple[Prior, float, float]:
    """A tiny prior after 70 Adam steps on 24 fixed grids (the pattern of their label, 10% of codes noise), with
    its loss on them before and after."""
    model = tiny(name)
    g = seeded(1)
    labels = torch.arange(24) % 3
    codes = pattern(labels)
    noise = torch.rand(codes.shape, generator=g) < 0.1
    codes = torch.where(noise, torch.randint(0, V, codes.shape, generator=g), codes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.eval()
    with torch.no_grad():
        before = model(codes, labels).loss.item()
    model.train()
    for _ in range(70):
        loss = model(codes, labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = model(codes, labels).loss.item()
    return model, before, after


def test_training_reduces_loss(trained):
    _, before, after = trained
    assert after < 0.5 * before, (before, after)


def test_trained_prior_follows_its_label(name, trained):
    skip_unless_built_in(name)
    model, _, _ = trained
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    greedy = model.sample(6, labels, SamplingOptions(top_k=1))
    assert (greedy == pattern(labels)).double().mean() > 0.8
    guided = model.sample(6, labels, SamplingOptions(cfg_scale=2.0), generator=seeded())
    assert (guided == pattern(labels)).double().mean() > 0.6
    a = model.sample(6, torch.tensor(0), generator=seeded())
    b = model.sample(6, torch.tensor(1), generator=seeded())
    assert not torch.equal(a, b)


def test_save_load_round_trip(name, tmp_path):
    model = tiny(name).eval()
    with torch.no_grad():  # weights that a fresh, identically seeded prior does not have
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    assert set(os.listdir(tmp_path)) == {"config.json", "model.safetensors", "README.md"}

    cls = PRIORS.get(name)
    codes, labels = codes_and_labels(2)
    for loaded in (cls.from_pretrained(tmp_path), vqgen.load_prior(tmp_path)):
        assert type(loaded) is cls
        assert type(loaded.config) is type(model.config) and loaded.config == model.config
        loaded.eval()
        with torch.no_grad():
            assert torch.equal(loaded(codes, labels).logits, model(codes, labels).logits)
        labels, options = torch.tensor([0, 2]), SamplingOptions(temperature=0.9, cfg_scale=1.5)
        assert torch.equal(
            loaded.sample(2, labels, options, generator=seeded()),
            model.sample(2, labels, options, generator=seeded()),
        )


def test_top_k_1_is_greedy(name):
    model = tiny(name, torch.float64).eval()
    labels = torch.tensor([0, 1, 2, 1])
    grid = model.sample(4, labels, SamplingOptions(top_k=1), generator=seeded())
    assert grid.shape == (4, H, W) and grid.dtype == torch.long
    with torch.no_grad():  # the best code at each position, given the codes before it
        argmax = model(grid, labels).logits.argmax(-1)
    assert torch.equal(argmax, grid)


def test_classifier_free_guidance(trained):
    model, _, _ = trained
    labels = torch.tensor([0, 1, 2, 0])
    guided = model.sample(4, labels, SamplingOptions(cfg_scale=3.0), generator=seeded())
    assert guided.shape == (4, H, W) and guided.min() >= 0 and guided.max() < V
    assert not torch.equal(guided, model.sample(4, labels, generator=seeded()))
    # guidance scale 0 keeps only the null-label logits: the unconditional sample, draw for draw
    null_only = model.sample(4, labels, SamplingOptions(cfg_scale=0.0), generator=seeded())
    assert torch.equal(null_only, model.sample(4, generator=seeded()))


def test_next_logits_match_forward(name):
    """The cached step, fed the codes one by one, gives the teacher-forced logits."""
    assert_next_logits_match_forward(tiny(name, torch.float64).eval())


def assert_next_logits_match_forward(model: Prior) -> None:
    codes, labels = codes_and_labels(3)
    with torch.no_grad():
        expected = model(codes, labels).logits.reshape(3, T, V)
        state, prev = model.begin_sampling(labels, 3), None
        for t in range(T):
            logits, state = model.next_logits(state, prev)
            torch.testing.assert_close(logits, expected[:, t], rtol=0, atol=1e-9, msg=f"position {t}")
            prev = codes.view(3, T)[:, t]


def test_sampling_under_bf16_autocast(name):
    """Under bf16 autocast the cached step gives the fp32 logits within bf16's precision, and sampling draws from
    float32 probabilities; the transformer casts its decoding weights once, when sampling begins."""
    model = tiny(name).eval()
    codes, labels = codes_and_labels(3)
    with torch.no_grad():
        expected = model(codes, labels).logits.reshape(3, T, V)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            state, prev = model.begin_sampling(labels, 3), None
            for t in range(T):
                logits, state = model.next_logits(state, prev)
                torch.testing.assert_close(
                    logits.float(), expected[:, t], rtol=0, atol=0.03, msg=f"position {t}"
                )
                prev = codes.view(3, T)[:, t]
            sampled = model.sample(4, labels[:1], SamplingOptions(cfg_scale=2.0), generator=seeded())
    assert sampled.shape == (4, H, W) and sampled.min() >= 0 and sampled.max() < V
    if name == "transformer":
        assert state.kv.dtype == state.head_weight.dtype == torch.bfloat16
        assert all(w.qkv_weight.dtype == w.down_weight.dtype == torch.bfloat16 for w in state.layers)


@pytest.mark.parametrize(
    "labels, kwargs",
    [
        (None, {}),
        ([0, 1, 2, 0, 1], dict(temperature=0.8, top_k=5)),
        ([2, 2, 1, 0, 0], dict(cfg_scale=2.5, top_p=0.9)),
    ],
    ids=["unconditional", "labels-topk", "cfg-topp"],
)
def test_cached_sample_equals_naive(name, labels, kwargs):
    model = tiny(name, torch.float64)
    labels = None if labels is None else torch.tensor(labels)
    options = SamplingOptions(**kwargs)
    fast = model.sample(5, labels, options, generator=seeded(3))
    naive = model.sample_naive(5, labels, options, generator=seeded(3))
    assert torch.equal(fast, naive)


def test_unconditional_prior(name):
    model = tiny(name, torch.float64, num_classes=0)
    codes, _ = codes_and_labels(2)
    assert model(codes).logits.shape == (2, H, W, V)
    assert torch.equal(model.sample(3, generator=seeded()), model.sample_naive(3, generator=seeded()))


def test_hf_generate_matches_greedy(name):
    model = tiny(name, torch.float64)
    if not hasattr(model, "sample_hf_generate"):
        pytest.skip(f"{name} has no transformers generate path")
    labels = torch.tensor([0, 1, 2])
    hf = model.sample_hf_generate(3, labels, SamplingOptions(top_k=1))
    assert torch.equal(hf, model.sample(3, labels, SamplingOptions(top_k=1)))
    assert torch.equal(
        model.sample_hf_generate(3, labels, generator=seeded()),
        model.sample_hf_generate(3, labels, generator=seeded()),
    )


def test_duplicate_registration_raises(name):
    class Impostor(Prior):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_prior(name)(Impostor)
    assert PRIORS.get(name) is not Impostor
    assert register_prior(name)(PRIORS.get(name)) is PRIORS.get(name)  # the same class again is fine


def test_filter_logits_examples():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    torch.testing.assert_close(filter_logits(logits, temperature=2.0), logits / 2)
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[True, True, False, False]]
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    for top_p, expect in [(0.5, [1]), (0.79, [1, 3]), (0.81, [1, 2, 3]), (1e-6, [1]), (1.0, [0, 1, 2, 3])]:
        kept = torch.isfinite(filter_logits(probs.log(), top_p=top_p))[0]
        assert kept.nonzero().flatten().tolist() == expect, top_p
    # temperature comes first: a flatter distribution needs more entries to reach the same mass
    assert torch.isfinite(filter_logits(probs.log(), top_p=0.85)).sum() == 3
    assert torch.isfinite(filter_logits(probs.log(), temperature=3.0, top_p=0.85)).sum() == 4


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), top_p=st.floats(0.01, 0.99), temperature=st.floats(0.3, 3.0))
def test_filter_logits_keeps_smallest_nucleus(seed, top_p, temperature):
    logits = torch.randn(3, 20, generator=seeded(seed), dtype=torch.float64) * 3
    out = filter_logits(logits, temperature=temperature, top_p=top_p)
    probs = (logits.float() / temperature).softmax(-1)
    for row, keep in zip(probs, torch.isfinite(out), strict=True):
        kept = row[keep]
        assert kept.sum() >= top_p - 1e-6  # enough mass
        assert kept.sum() - kept.min() < top_p + 1e-6  # and no entry more than needed
        assert (row[~keep] <= kept.min()).all()  # the most likely entries


def test_draw_follows_the_probabilities():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0])
    logits = probs.log().expand(40_000, -1)
    tokens = draw(logits, seeded())
    freq = torch.bincount(tokens, minlength=5).double() / tokens.numel()
    assert freq[1] == 0 and freq[4] == 0  # never a filtered-out entry
    torch.testing.assert_close(freq, probs.double(), atol=0.01, rtol=0)
    assert torch.equal(draw(logits[:100], seeded(7)), draw(logits[:100], seeded(7)))


def test_gru_saved_before_row_above_loads_as_it_was(tmp_path):
    """A GRU config.json written before the `row_above` and `row_context` fields existed means a GRU without them
    (the config's `saved_defaults`), not today's defaults: it loads with the same weights and gives the same
    logits."""
    model = tiny("gru", row_above=False, row_context=0).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["row_above"], config["row_context"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = vqgen.load_prior(tmp_path)
    assert loaded.config.row_above is False and GRUPriorConfig().row_above is True
    assert loaded.config.row_context == 0 and GRUPriorConfig().row_context > 0
    codes, labels = codes_and_labels(2)
    with torch.no_grad():
        assert torch.equal(loaded(codes, labels).logits, model(codes, labels).logits)


def test_gru_code_noise_corrupts_its_inputs_not_its_targets():
    """`code_noise` replaces a fraction of the codes the GRU reads with random ones while training: the logits move,
    the loss is still scored on the true codes, and eval mode reads the codes as they are."""
    codes, labels = codes_and_labels(4)
    # no other randomness in training mode (TINY's GRU has dropout 0)
    quiet = dict(label_dropout=0.0, token_dropout=0.0)
    off, noised = tiny("gru", **quiet), tiny("gru", **quiet, code_noise=0.5)
    with torch.no_grad():
        torch.testing.assert_close(
            noised.eval()(codes, labels).logits, off.eval()(codes, labels).logits, rtol=0, atol=0
        )
        torch.manual_seed(1)
        out = noised.train()(codes, labels)
    torch.testing.assert_close(
        off.train()(codes, labels).logits, off.eval()(codes, labels).logits, rtol=0, atol=0
    )
    assert not torch.equal(out.logits, off.eval()(codes, labels).logits)  # so only the noise moved them
    nll = torch.nn.functional.cross_entropy(out.logits.reshape(-1, V), codes.reshape(-1))
    torch.testing.assert_close(out.loss, nll)  # the targets are the uncorrupted codes


@pytest.mark.parametrize(
    "options", [dict(row_context=8), dict(row_context=8, row_above=False), dict(row_above=False)]
)
def test_gru_options_keep_the_contract(options):
    """The GRU's optional inputs (the row above's right-to-left summary, the three codes above) read only earlier
    positions, read all of them, and the cached sampler computes them as the teacher-forced pass does."""
    model = tiny("gru", torch.float64, **options).eval()
    assert_reads_exactly_the_earlier_positions(model)
    assert_next_logits_match_forward(model)
