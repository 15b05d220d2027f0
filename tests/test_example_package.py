"""A third-party package (examples/vqgen-markov) adds a prior and a plugin through entry points; both are found
and driven through the CLI without any change to vqgen."""

import subprocess
import sys

import pytest
from conftest import ROOT, TINY_TOKENIZER_FLAGS, run_cli

EXAMPLE = ROOT / "examples" / "vqgen-markov"


@pytest.fixture(scope="module")
def installed():
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        str(EXAMPLE),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    from vqgen.stages.core.registry import PLUGINS, PRIORS

    PRIORS.refresh()
    PLUGINS.refresh()


def test_entry_points_are_listed_with_their_source(installed):
    priors = run_cli("priors")
    line = next(line for line in priors.stdout.splitlines() if line.startswith("markov"))
    assert "entry point (vqgen-markov 0.1.0)" in line and "vqgen_markov.prior:MarkovPrior" in line
    plugins = run_cli("plugins")
    assert any(line.startswith("l1") and "vqgen-markov" in line for line in plugins.stdout.splitlines())


def test_example_prior_and_plugin_run_through_the_cli(installed, tmp_path, image_folder):
    run = tmp_path / "run"
    tok = run_cli(
        "tokenize",
        "--run",
        str(run),
        "--dataset",
        str(image_folder),
        *TINY_TOKENIZER_FLAGS,
        "--steps",
        "3",
        "--plugin",
        "l1",
        "--plugin-opt",
        "l1.weight=0.5",
    )
    assert tok.returncode == 0, tok.stderr[-3000:]
    assert "l1" in (run / "run_config.json").read_text()
    prior = run_cli(
        "train-prior",
        "--prior",
        "markov",
        "--codes",
        str(run / "codes"),
        "--steps",
        "20",
        "--batch-size",
        "8",
        "--sample-every",
        "0",
    )
    assert prior.returncode == 0, prior.stderr[-3000:]
    gen = run_cli(
        "generate",
        "--prior",
        str(run / "prior-markov"),
        "--label",
        "3",
        "--n",
        "4",
        "--out",
        str(tmp_path / "m.png"),
    )
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert len(list((tmp_path / "m").glob("*.png"))) == 4


def test_markov_prior_passes_the_contract(installed):
    import torch
    from vqgen.stages.core.registry import PRIORS

    cls = PRIORS.get("markov")
    from vqgen.stages.core.build import prior_config_class

    prior = cls(prior_config_class(cls)(vocab_size=5, grid_height=2, grid_width=3, num_classes=2))
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_()
    labels = torch.tensor([0, 1, 1])
    a = prior.sample(3, labels, generator=torch.Generator().manual_seed(0))
    b = prior.sample_naive(3, labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
