"""Property-based tests (hypothesis) of the quantizer and of config parsing, over random shapes, sizes and inputs.

Deterministic (derandomize=True: the same examples on every run) and small (max_examples of 20-40) so the file
runs in seconds; each property states what must hold for every input, not for a chosen one.
"""

import json
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]

from vqgen.plugins.gan import GANConfig  # noqa: E402
from vqgen.priors.gru import GRUPriorConfig  # noqa: E402
from vqgen.priors.pixelcnn import PixelCNNPriorConfig  # noqa: E402
from vqgen.priors.transformer import TransformerPriorConfig  # noqa: E402
from vqgen.stages.artifacts.codes import read_codes_meta  # noqa: E402
from vqgen.stages.artifacts.models import build_config  # noqa: E402
from vqgen.stages.core.build import build_prior  # noqa: E402
from vqgen.stages.core.errors import UserError  # noqa: E402
from vqgen.stages.core.options import parse_options, split_assignments  # noqa: E402
from vqgen.stages.evaluation.metrics import codebook_stats  # noqa: E402
from vqgen.stages.tokenizer.base import QuantizerConfig  # noqa: E402
from vqgen.stages.tokenizer.quantizer import VectorQuantizer  # noqa: E402
from vqgen.stages.tokenizer.vqvae import VQVAEConfig  # noqa: E402
from vqgen.stages.training.plugins import build_plugins  # noqa: E402

FAST = settings(max_examples=30, deadline=None, derandomize=True, database=None)


# --- the quantizer ------------------------------------------------------------------------------------------
@st.composite
def quantizers(draw) -> tuple[VectorQuantizer, torch.Tensor]:
    """A quantizer of random size and options, and random encoder features (B, C, H, W) of a random shape."""
    channels = draw(st.integers(1, 6))
    config = QuantizerConfig(
        codebook_size=draw(st.integers(2, 24)),
        code_dim=draw(st.sampled_from([channels, draw(st.integers(1, 6))])),  # often no projection
        cosine=draw(st.booleans()),
        update=draw(st.sampled_from(["ema", "grad"])),
        init=draw(st.sampled_from(["kmeans", "sample", "random"])),
        ema_decay=draw(st.floats(0.5, 0.99)),
        restart_every=0,  # restarts draw from torch's global RNG; the restart test lives in test_quantizer.py
    )
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    vq = VectorQuantizer(channels, config)
    shape = (draw(st.integers(1, 3)), channels, draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    return vq, torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * draw(st.floats(0.1, 10.0))


def flat_vectors(vq: VectorQuantizer, z: torch.Tensor) -> torch.Tensor:
    """The (B*H*W, D) vectors the quantizer assigns, computed independently of its forward pass."""
    z_e = vq.proj_in(z)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
    return F.normalize(flat, dim=-1) if vq.config.cosine else flat


@FAST
@given(quantizers(), st.booleans())
def test_codes_are_in_range_and_nearest(case, training):
    vq, z = case
    vq.train(training)
    with torch.no_grad():
        out = vq(z)
    b, _, h, w = z.shape
    k = vq.config.codebook_size
    assert out.codes.shape == (b, h, w) and out.codes.dtype == torch.long
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < k
    assert out.z_q.shape == z.shape and torch.isfinite(out.z_q).all()
    if not training:  # in training the codebook moves after the assignment (EMA, k-means init)
        book = F.normalize(vq.codebook, dim=-1) if vq.config.cosine else vq.codebook
        flat = flat_vectors(vq, z).double()
        d2 = torch.cdist(flat, book.double()).pow(2)  # (N, K) squared distances, in double
        chosen = d2.gather(1, out.codes.reshape(-1, 1)).squeeze(1)
        scale = flat.pow(2).sum(1) + book.double().pow(2).sum(1).max() + 1  # float32 rounding of the scores
        assert (chosen <= d2.min(1).values + 1e-5 * scale).all()


@FAST
@given(quantizers())
def test_outputs_are_codebook_entries(case):
    """The forward value of z_q is the looked-up code (projected back when code_dim != channels)."""
    vq, z = case
    vq.eval()
    with torch.no_grad():
        out = vq(z)
        torch.testing.assert_close(out.z_q, vq.lookup(out.codes), atol=1e-5, rtol=1e-5)
        if vq.config.code_dim == z.shape[1]:  # no projection: z_q holds codebook rows themselves
            book = F.normalize(vq.codebook, dim=-1) if vq.config.cosine else vq.codebook
            torch.testing.assert_close(out.z_q.permute(0, 2, 3, 1), book[out.codes], atol=1e-5, rtol=1e-5)


@FAST
@given(quantizers(), st.booleans())
def test_straight_through_gradient(case, training):
    """d z_q / d z is the gradient of the same layer with the quantization step left out (straight-through)."""
    vq, z = case
    vq.train(training)
    z = z.clone().requires_grad_(True)
    upstream = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    (vq(z).z_q * upstream).sum().backward()
    assert z.grad.shape == z.shape and torch.isfinite(z.grad).all()
    z_ref = z.detach().clone().requires_grad_(True)
    z_e = vq.proj_in(z_ref)
    (vq.proj_out(F.normalize(z_e, dim=1) if vq.config.cosine else z_e) * upstream).sum().backward()
    torch.testing.assert_close(z.grad, z_ref.grad, atol=1e-4, rtol=1e-4)


@FAST
@given(quantizers())
def test_usage_statistics_agree(case):
    """The quantizer's perplexity agrees with the histogram of its codes, and the histogram statistics with each
    other: 1 <= perplexity <= codes used = usage * K = K - dead codes. A training step moves the EMA counts by
    exactly decay * old + (1 - decay) * this batch's counts."""
    vq, z = case
    vq.eval()
    with torch.no_grad():
        out = vq(z)
    k = vq.config.codebook_size
    counts = torch.bincount(out.codes.flatten(), minlength=k)
    stats = codebook_stats(counts)
    used = int((counts > 0).sum())
    assert stats["codebook_usage"] * k == pytest.approx(used) and stats["dead_codes"] == k - used
    assert 1 - 1e-4 <= stats["perplexity"] <= used + 1e-4
    assert float(out.perplexity) == pytest.approx(stats["perplexity"], rel=1e-4)

    vq.train()
    vq.initialised.fill_(True)  # skip the data init, whose counts are a different rule
    before = vq.ema_count.clone()
    with torch.no_grad():
        out = vq(z)
    counts = torch.bincount(out.codes.flatten(), minlength=k).float()
    d = vq.config.ema_decay
    torch.testing.assert_close(vq.ema_count, d * before + (1 - d) * counts, atol=1e-5, rtol=1e-5)
    assert float(vq.ema_count.sum()) == pytest.approx(
        d * float(before.sum()) + (1 - d) * out.codes.numel(), rel=1e-5
    )


# --- config parsing -----------------------------------------------------------------------------------------
@dataclass
class EveryType:
    """A config with every field type `parse_options` converts."""

    count: int = 1
    scale: float = 1.0
    flag: bool = False
    name: str = "x"
    maybe_count: int | None = None
    maybe_scale: float | None = None
    maybe_name: str | None = None


CONFIGS = [EveryType, GRUPriorConfig, PixelCNNPriorConfig, TransformerPriorConfig, QuantizerConfig]
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
STRIPPED = TEXT.map(str.strip)


def value_for(annotation) -> st.SearchStrategy:
    """A random value of a field's type, and None where the field is optional."""
    if typing.get_origin(annotation) is list:  # e.g. QuantizerConfig.levels: list[int]
        return st.lists(value_for(typing.get_args(annotation)[0]), max_size=4)
    options = typing.get_args(annotation)
    kind = next((o for o in options if o is not type(None)), annotation)
    base = {
        int: st.integers(-(10**12), 10**12),
        float: st.floats(allow_nan=False, allow_infinity=False),
        bool: st.booleans(),
        str: STRIPPED.filter(lambda s: s.lower() != "none" or type(None) not in options),
    }[kind]
    return st.one_of(st.none(), base) if type(None) in options else base


def as_text(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


@st.composite
def valid_assignments(draw):
    config_class = draw(st.sampled_from(CONFIGS))
    hints = typing.get_type_hints(config_class)
    chosen = draw(st.lists(st.sampled_from([f.name for f in fields(config_class)]), unique=True, min_size=1))
    values = {name: draw(value_for(hints[name])) for name in chosen}
    return config_class, values


@FAST
@given(valid_assignments())
def test_valid_assignments_round_trip(case):
    """NAME=VALUE flags for any subset of a config's fields, with any value of the right type, parse back to the
    config built from those values directly."""
    config_class, values = case
    flags = [f"{name}={as_text(value)}" for name, value in values.items()]
    parsed = parse_options("test", config_class, split_assignments(flags, "--opt"))
    assert parsed == config_class(**values)


@FAST
@given(st.lists(TEXT, max_size=4))
def test_split_assignments_raises_only_value_errors(flags):
    """Any text: a dict, or a ValueError naming the flag (which the CLI shows as one `error:` line)."""
    try:
        out = split_assignments(flags, "--prior-opt")
    except ValueError as exc:
        assert "--prior-opt" in str(exc)
    else:
        assert all("=" in f for f in flags) and len(out) <= len(flags)


META = {"vocab_size": 16, "grid_height": 3, "grid_width": 3, "num_classes": 2, "tokenizer_fingerprint": "f"}
SET_BY_CODES = (*META, "prior_type")
PRIOR_CONFIGS = {
    "gru": GRUPriorConfig,
    "pixelcnn": PixelCNNPriorConfig,
    "transformer": TransformerPriorConfig,
}
NAMES = ["eager", "sdpa", "hinge", "vanilla", "lsq", "none", "lecam", "r1"]  # valid for some string fields


@st.composite
def option_texts(draw, config_class: type, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """NAME=VALUE options for a config: mostly its own fields with small values of their type (so that many
    examples build a model), sometimes a value that does not parse, sometimes an unknown name."""
    hints = typing.get_type_hints(config_class)
    names = [f.name for f in fields(config_class) if f.name not in skip]
    options = {}
    for _ in range(draw(st.integers(1, 3))):
        bad_name, bad_value = (draw(st.integers(0, 5)) == 0 for _ in range(2))  # each about 1 in 6
        name = draw(TEXT if bad_name else st.sampled_from(names))
        typed = {
            int: st.integers(-2, 20).map(str),
            float: st.floats(-0.5, 1.5).map(str),
            bool: st.sampled_from(["true", "false"]),
        }.get(hints.get(name, str), st.sampled_from(NAMES))
        options[name] = draw(TEXT if bad_value else typed)
    return options


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    st.sampled_from(sorted(PRIOR_CONFIGS)).flatmap(
        lambda n: st.tuples(st.just(n), option_texts(PRIOR_CONFIGS[n], SET_BY_CODES))
    )
)
def test_prior_options_give_a_prior_or_a_user_error(case):
    """Whatever --prior-opt holds: a prior, or a UserError (one line, exit 2), never another exception."""
    name, options = case
    try:
        prior = build_prior(name, META, options)
    except UserError as exc:
        assert "\n" not in str(exc)
    else:
        assert prior.config.vocab_size == 16 and all(str(getattr(prior.config, k)) for k in options)


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(option_texts(GANConfig), st.integers(0, 3))
def test_plugin_options_give_a_plugin_or_a_user_error(options, form):
    """Whatever --plugin-opt holds (well-formed gan.KEY=VALUE or not): plugins, or a UserError, nothing else."""
    flags = [
        f"gan.{k}={v}" if form else f"{k}={v}" for k, v in options.items()
    ]  # form 0: the plugin name left out
    try:
        plugins = build_plugins(["gan"], flags, stage="tokenizer")
    except UserError as exc:
        assert "\n" not in str(exc)
    else:
        assert [p.name for p in plugins] == ["gan"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-5, 5) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


@FAST
@given(st.sampled_from([VQVAEConfig, GRUPriorConfig, TransformerPriorConfig]), st.data())
def test_config_json_round_trips_and_bad_fields_are_user_errors(config_class, data):
    """config.json as written (asdict) builds the same config back; with one field replaced by any JSON value,
    or one unknown field added, it builds a config or raises a UserError naming the field."""
    config = config_class()
    written = json.loads(json.dumps(asdict(config)))
    assert build_config(config_class, written, "m") == config
    key = data.draw(st.one_of(st.sampled_from(sorted(written)), TEXT), label="key")
    written[key] = data.draw(JSON, label="value")
    try:
        build_config(config_class, written, "m")
    except UserError as exc:
        assert key in str(exc) or key.strip() == "" or "not a valid" in str(exc)


@FAST
@given(st.dictionaries(st.sampled_from([*META, "tokenizer", "extra"]), JSON, max_size=7))
def test_codes_meta_is_checked(tmp_path_factory, meta):
    """codes.json holding any JSON object: a meta with every field of the right type, or a UserError."""
    path = tmp_path_factory.mktemp("meta") / "codes.json"
    path.write_text(json.dumps(meta))
    try:
        read = read_codes_meta(path)
    except UserError as exc:
        assert "codes.json" in str(exc)
    else:
        assert all(type(read[k]) is int and read[k] >= 0 for k in META if k != "tokenizer_fingerprint")
        assert isinstance(read["tokenizer_fingerprint"], str) and isinstance(read.get("tokenizer", ""), str)
