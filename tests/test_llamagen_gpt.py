"""LlamaGen's class-conditional GPT imported as a `llamagen` prior computes what LlamaGen's own code computes.

The fixtures (tests/fixtures/llamagen_gpt/, made by its make_fixtures.py from LlamaGen's public code) hold a tiny
GPT's checkpoint in LlamaGen's format, teacher-forced logits of their `forward`, and sequences their `generate`
sampled with top-k 1, without and with guidance (cfg_interval in tokens)."""

import argparse
import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, run_cli
from vqgen.priors import SamplingOptions
from vqgen.priors.llamagen import LlamaGenPrior, LlamaGenPriorConfig
from vqgen.stages.artifacts.models import load_prior, save_model
from vqgen.stages.commands.interop import ImportConfig, run_import
from vqgen.stages.core.errors import UserError
from vqgen.stages.interop.llamagen_gpt import convert, llamagen_cfg_interval
from vqgen.stages.interop.sources import read_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "llamagen_gpt"
CHECKPOINT = FIXTURES / "c2i_tiny.pt.fixture"
EXPECTED = torch.load(FIXTURES / "expected.fixture", weights_only=True)
C = EXPECTED["config"]  # dim 32, 2 layers, 2 heads, 64 codes, 36 tokens (6x6), 10 classes
GRID = 6


def tokenizer(codebook_size: int = C["vocab_size"], image_size: int = 24):
    """A tiny tokenizer with the fixture's vocabulary; 24 px at f4 gives its 6x6 grid."""
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    q = QuantizerConfig(codebook_size=codebook_size, code_dim=4, init="random")
    config = VQVAEConfig(
        image_size=image_size, downsample=4, base_channels=8, num_res_blocks=1, latent_channels=8, quantizer=q
    )
    return VQVAE(config).eval()


@pytest.fixture
def tiny_preset(monkeypatch):
    """The fixture's widths as the preset GPT-tiny: a GPT-B checkpoint is far too large for a test."""
    from vqgen.priors.sizes import SizePreset
    from vqgen.stages.interop import llamagen_gpt

    preset = SizePreset(C["n_layer"], C["n_head"], C["dim"], multiple_of=C["multiple_of"])
    monkeypatch.setitem(llamagen_gpt.SIZES, "tiny", preset)
    monkeypatch.setitem(llamagen_gpt.MODELS, "GPT-tiny", "tiny")


@pytest.fixture
def run(tmp_path) -> Path:
    """A run folder holding the tiny tokenizer."""
    save_model(tokenizer(), tmp_path / "run" / "tokenizer")
    return tmp_path / "run"


@pytest.fixture
def imported(tiny_preset, run) -> LlamaGenPrior:
    result = run_import(
        ImportConfig("llamagen-gpt", str(CHECKPOINT), str(run), options={"model": "GPT-tiny"})
    )
    assert result["folder"] == str(run / "prior-gpt-tiny")
    return load_prior(run / "prior-gpt-tiny")


def test_logits_equal_llamagen(imported):
    codes = EXPECTED["codes"].view(-1, GRID, GRID)
    with torch.no_grad():
        logits = imported(codes, EXPECTED["labels"]).logits.reshape(codes.shape[0], GRID * GRID, -1)
    assert imported.config.num_classes == C["num_classes"] and imported.config.vocab_size == C["vocab_size"]
    assert EXPECTED["logits"].abs().max() > 1  # random output weights: the comparison is not of zeros
    torch.testing.assert_close(logits, EXPECTED["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("key", ["greedy", "guided"])
def test_top_k_1_samples_equal_llamagen(imported, key):
    s = EXPECTED["sampled"][key]
    options = SamplingOptions(
        top_k=1, cfg_scale=s["cfg_scale"], cfg_interval=llamagen_cfg_interval(s["cfg_interval"], 36)
    )
    labels = EXPECTED["sample_labels"]
    cached = imported.sample(2, labels, options, generator=torch.Generator().manual_seed(0))
    naive = imported.sample_naive(2, labels, options, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cached.view(2, -1), s["seq"])
    assert torch.equal(naive, cached)


def test_guidance_and_its_interval_change_the_samples(imported):
    """The two fixture sequences differ, and guiding every token (no interval) differs again: each setting is
    checked, not just greedy decoding."""
    greedy, guided = EXPECTED["sampled"]["greedy"]["seq"], EXPECTED["sampled"]["guided"]["seq"]
    assert not torch.equal(greedy, guided)
    everywhere = imported.sample(2, EXPECTED["sample_labels"], SamplingOptions(top_k=1, cfg_scale=4.0))
    assert not torch.equal(everywhere.view(2, -1), guided)


def test_interval_in_tokens_as_a_fraction():
    assert llamagen_cfg_interval(-1, 256) == (0.0, 1.0)
    lo, hi = llamagen_cfg_interval(10, 36)  # LlamaGen guides tokens 0..11
    assert [t for t in range(36) if lo <= t / 36 < hi] == list(range(12))


def test_the_imported_folder_says_where_it_came_from(imported, run):
    config = json.loads((run / "prior-gpt-tiny" / "config.json").read_text())
    p = config["provenance"]
    assert (p["format"], p["preset"], p["licence"], p["file"]) == (
        "llamagen-gpt",
        "GPT-tiny",
        "mit",
        CHECKPOINT.name,
    )
    assert len(p["sha256"]) == 64 and config["prior_type"] == "llamagen"
    assert "autoregressive-prior" in (run / "prior-gpt-tiny" / "README.md").read_text()
    assert config["tokenizer_fingerprint"] == tokenizer().fingerprint()


def test_generate_samples_the_imported_prior(imported, run):
    result = run_cli(
        "generate",
        "--prior",
        str(run / "prior-gpt-tiny"),
        "--label",
        "3",
        "--n",
        "2",
        "--top-k",
        "1",
        "--out",
        str(run / "threes.png"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((run / "threes").glob("*_label3.png"))) == 2


def test_bad_checkpoints_are_one_line(tiny_preset, tmp_path):
    checkpoint = read_checkpoint(CHECKPOINT)
    assert isinstance(checkpoint["args"], argparse.Namespace)  # train_c2i.py's "args" loads as plain data

    def refused(state, tok=None, model="GPT-tiny") -> str:
        with pytest.raises(UserError) as info:
            convert(model, state, tok or tokenizer(), GRID, tmp_path / "c.pt")
        assert "\n" not in str(info.value)
        return str(info.value)

    state = checkpoint["model"]
    assert "GPT-Q" in refused(state, model="GPT-Q")
    wrong = {**state, "layers.1.attention.wo.weight": torch.zeros(32, 16)}
    message = refused(wrong)
    assert "layers.1.attention.wo.weight" in message and "[32, 16]" in message and "[32, 32]" in message
    fewer = {k: v for k, v in state.items() if not k.startswith("layers.1.")}
    assert "layers.1." in refused(fewer)
    assert "tokenizer has 128" in refused(state, tok=tokenizer(codebook_size=128))  # another vocabulary


def test_a_run_without_a_matching_tokenizer_is_refused(tiny_preset, run, tmp_path):
    options = {"model": "GPT-tiny", "image_size": 32}  # an 8x8 grid; the run's tokenizer makes 6x6
    with pytest.raises(UserError, match="--image-size 24"):
        run_import(ImportConfig("llamagen-gpt", str(CHECKPOINT), str(run), options=options))
    result = run_cli("import", "llamagen-gpt", str(CHECKPOINT), "--run", str(tmp_path / "empty"))
    assert_user_error(result, "holds no tokenizer", "llamagen-vq")
    assert not (tmp_path / "empty").exists() and not (run / "prior-gpt-tiny").exists()


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_needs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Payload()}, path)
    with pytest.raises(UserError, match="never runs code"):
        read_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out
    path.write_bytes(pickle.dumps([1, 2]) + b"junk")
    with pytest.raises(UserError):
        read_checkpoint(path)


def test_drop_path_acts_in_training_only():
    """Stochastic depth rises from 0 at the first block to drop_path at the last, and only while training."""
    codes = EXPECTED["codes"].view(-1, GRID, GRID)
    config = LlamaGenPriorConfig(
        vocab_size=64,
        grid_height=GRID,
        grid_width=GRID,
        num_classes=10,
        hidden_size=32,
        num_layers=3,
        num_heads=2,
        multiple_of=32,
        token_dropout=0,
        resid_dropout=0,
        ffn_dropout=0,
        label_dropout=0,
        drop_path=0.5,
    )
    torch.manual_seed(0)
    model = LlamaGenPrior(config)
    torch.nn.init.normal_(model.head.weight)
    assert [b.drop_path.p for b in model.blocks] == [0.0, 0.25, 0.5]
    with torch.no_grad():
        model.eval()
        still = model(codes, EXPECTED["labels"]).logits
        model.train()
        dropped = model(codes, EXPECTED["labels"]).logits
        model.eval()
        assert not torch.equal(dropped, still) and torch.equal(model(codes, EXPECTED["labels"]).logits, still)


def test_default_config_builds_and_keeps_llamagen_widths():
    config = LlamaGenPriorConfig(hidden_size=768, num_heads=12, num_layers=1)
    assert config.ffn_size == 2048  # LlamaGen's GPT-B SwiGLU width
    with pytest.raises(ValueError, match="divisible by 4"):
        LlamaGenPriorConfig(hidden_size=36, num_heads=6)
