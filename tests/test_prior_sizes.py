"""Size presets (`train-prior --size`, `vqgen priors --sizes`): LlamaGen's widths, depths and heads, with parameter
counts checked against LlamaGen's own (tests/fixtures/llamagen_gpt/param_counts.json, counted from their code by
make_fixtures.py), on fake tensors: no preset is ever allocated."""

import json
import typing
from pathlib import Path

import pytest
from conftest import assert_user_error, run_cli
from vqgen.command_line.app import size_listing
from vqgen.priors.base import count_size
from vqgen.priors.sizes import SIZES, swiglu_hidden
from vqgen.stages.core.build import build_prior, sized_options
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.registry import PRIORS

REFERENCE = json.loads(
    (Path(__file__).parent / "fixtures" / "llamagen_gpt" / "param_counts.json").read_text()
)


def config_of(name: str, size: str, grid: int):
    config_class = typing.get_type_hints(PRIORS.get(name).__init__)["config"]
    fields = config_class.sizes()[size]
    return config_class(
        vocab_size=REFERENCE["vocab_size"],
        grid_height=grid,
        grid_width=grid,
        num_classes=REFERENCE["num_classes"],
        **fields,
    )


@pytest.mark.parametrize(("size", "grid"), [(size, 16) for size in SIZES] + [("B", 24)])
def test_parameter_counts_match_llamagen(size, grid):
    want = REFERENCE["counts"][f"{size}@{grid}"]
    exact, _ = count_size(PRIORS.get("llamagen"), config_of("llamagen", size, grid), flops=False)
    assert exact == want  # the same architecture: the same count
    close, _ = count_size(PRIORS.get("transformer"), config_of("transformer", size, grid), flops=False)
    assert abs(close / want - 1) < 0.01  # the class tokens share the output layer there


def test_swiglu_widths_are_llamagens():
    assert [swiglu_hidden(SIZES[s].hidden_size) for s in ("B", "L", "XL", "3B")] == [2048, 2816, 3584, 8704]


def test_flops_grow_with_the_grid():
    _, at16 = count_size(PRIORS.get("llamagen"), config_of("llamagen", "B", 16))
    _, at24 = count_size(PRIORS.get("llamagen"), config_of("llamagen", "B", 24))
    assert 2 * 97e6 < at16 < at24  # at least 2 FLOPs per matmul weight (97M outside the embedding tables)


def test_options_win_over_the_preset():
    options = sized_options("llamagen", "L", {"num_layers": "2"})
    assert options == {"num_layers": "2", "num_heads": "16", "hidden_size": "1024", "multiple_of": "256"}
    assert sized_options("gru", None, {"x": "1"}) == {"x": "1"}
    with pytest.raises(UserError, match="has no size presets"):
        sized_options("gru", "B", {})


def test_a_preset_builds_with_its_widths():
    """--size B gives LlamaGen's GPT-B widths; a --prior-opt still wins (one layer keeps this fast)."""
    meta = dict(vocab_size=16, grid_height=4, grid_width=4, num_classes=2, tokenizer_fingerprint="")
    model = build_prior("llamagen", meta, sized_options("llamagen", "B", {"num_layers": "1"}))
    c = model.config
    assert (c.hidden_size, c.num_heads, c.num_layers, c.ffn_size) == (768, 12, 1, 2048)


def test_size_listing(monkeypatch):
    for size in [s for s in SIZES if s != "B"]:
        monkeypatch.delitem(SIZES, size)  # one preset keeps the test fast; the counts are checked above
    text = size_listing(vocab_size=16384, grid=16, num_classes=1000)
    rows = {tuple(line.split()[:2]): line for line in text.splitlines()[1:-1]}
    assert set(rows) == {("llamagen", "B"), ("transformer", "B")}
    assert "110.9M" in rows[("llamagen", "B")]


def test_unknown_size_is_one_line_before_anything(tmp_path):
    result = run_cli("train-prior", "--prior", "llamagen", "--size", "XS", "--codes", str(tmp_path / "none"))
    assert_user_error(result, "--size XS", "B, L, XL, XXL, 1B, 3B")
    assert not any(tmp_path.iterdir())
