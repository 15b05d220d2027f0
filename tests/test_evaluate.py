"""`evaluate`: metrics against hand-computed values, Fréchet distance and precision/recall on constructed sets, and
the command end to end on a tiny run (a few tokenizer and prior steps, a one-epoch classifier)."""

import gzip
import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_user_error, run_cli
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

from vqgen.stages.commands.evaluate import CompareConfig, EvaluateConfig, run_compare, run_evaluate  # noqa: E402
from vqgen.stages.core.errors import UserError  # noqa: E402
from vqgen.stages.data.eval_images import read_idx  # noqa: E402
from vqgen.stages.evaluation import fid  # noqa: E402
from vqgen.stages.evaluation import metrics as M  # noqa: E402

TINY_EVAL = {
    "n_samples": 20,
    "batch_size": 16,
    "classifier_epochs": 1,
    "classifier_width": 4,
    "features": "auto",
}


# --- image metrics -------------------------------------------------------------------------------------------
def unit(x: np.ndarray) -> torch.Tensor:
    """[0, 1] numpy (H, W) -> (1, 1, H, W) tensor in [-1, 1]."""
    return torch.tensor(x, dtype=torch.float32)[None, None] * 2 - 1


def test_psnr_l1_mse_by_hand():
    x, y = np.zeros((4, 4)), np.zeros((4, 4))
    y[1, 2] = 1.0  # one pixel of 16 off by the full range
    assert M.mse_per_image(unit(y), unit(x)).item() == pytest.approx(1 / 16)
    assert M.l1_per_image(unit(y), unit(x)).item() == pytest.approx(1 / 16)
    assert M.psnr_per_image(unit(y), unit(x)).item() == pytest.approx(10 * math.log10(16), abs=1e-4)


def test_ssim_by_hand():
    flat_a, flat_b = np.full((4, 4), 0.5), np.full((4, 4), 0.25)  # no variance: only the luminance term
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
    assert M.ssim_per_image(unit(flat_a), unit(flat_b)).item() == pytest.approx(expected, abs=1e-6)

    # y = a x + b on an 11x11 image: one Gaussian window (sigma 1.5); mean, variance and covariance by hand
    x = np.random.default_rng(0).uniform(0.2, 0.6, (11, 11))
    a, b = 0.5, 0.3
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mu = (w * x).sum()
    var = (w * x * x).sum() - mu**2
    mu_y = a * mu + b
    expected = ((2 * mu * mu_y + c1) * (2 * a * var + c2)) / (
        (mu**2 + mu_y**2 + c1) * ((1 + a * a) * var + c2)
    )
    assert M.ssim_per_image(unit(a * x + b), unit(x)).item() == pytest.approx(expected, abs=1e-5)
    assert M.ssim_per_image(unit(x), unit(x)).item() == pytest.approx(1.0, abs=1e-6)


# --- Fréchet distance, precision and recall --------------------------------------------------------------------
def test_frechet_distance_self_shift_and_by_hand():
    feats = torch.randn(500, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert fid.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)
    shift = torch.full((8,), 0.5, dtype=torch.float64)
    assert fid.frechet_distance(feats, feats + shift) == pytest.approx(8 * 0.25, rel=1e-6)  # ||shift||^2
    assert fid.frechet_distance(feats, feats + 2 * shift) > fid.frechet_distance(feats, feats + shift)
    # 1-d: a = {-1, 1} has mean 0 and variance 2; 3a + 5 has mean 5 and variance 18:
    # 5^2 + 2 + 18 - 2 sqrt(2 * 18) = 25 + 20 - 12 = 33
    a = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    assert fid.frechet_distance(a, 3 * a + 5) == pytest.approx(33.0, abs=1e-9)


def test_precision_recall_on_constructed_sets():
    gen = torch.Generator().manual_seed(0)
    cluster_a = torch.randn(50, 4, generator=gen)
    cluster_b = torch.randn(50, 4, generator=gen) + 100
    real = torch.cat([cluster_a, cluster_b])
    assert fid.precision_recall(real, real) == (1.0, 1.0)
    assert fid.precision_recall(cluster_a, cluster_a + 1000) == (0.0, 0.0)
    precision, recall = fid.precision_recall(real, cluster_a)  # generates only one of the two modes
    assert precision == 1.0 and recall == pytest.approx(0.5)


def no_inception(device):
    raise ModuleNotFoundError("No module named 'torchmetrics'")


def test_auto_features_fall_back_to_the_classifier(monkeypatch):
    from vqgen.stages.evaluation.classifier import Classifier, ClassifierConfig

    monkeypatch.setattr(fid, "inception_space", no_inception)
    lines = []
    clf = Classifier(ClassifierConfig(width=4, feature_dim=8))
    space = fid.choose_space("auto", torch.device("cpu"), clf, "classifier-x", lines.append)
    assert space.name == "classifier-x" and space.dim == 8 and len(lines) == 1 and "falling back" in lines[0]
    pixels = torch.randint(
        0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    feats = fid.extract_features(space, pixels)  # uint8 pixels are scaled like float images in [-1, 1]
    assert feats.shape == (3, 8) and torch.allclose(feats, fid.extract_features(space, pixels / 127.5 - 1))
    with pytest.raises(UserError, match="--features inception"):
        fid.choose_space("inception", torch.device("cpu"), clf, "classifier-x", lines.append)


# --- the command end to end ----------------------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, image_folder):
    """A tokenizer (3 steps) and a gru and a transformer prior (3 steps each) on 60 digits, in process."""
    from vqgen.stages.commands.tokenize import TokenizeConfig, run_tokenize
    from vqgen.stages.commands.train_prior import PriorTrainConfig, run_train_prior
    from vqgen.stages.data.images import DataConfig
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqvae import VQVAEConfig
    from vqgen.stages.training.trainer import TrainConfig

    run = tmp_path_factory.mktemp("eval") / "run"
    model = VQVAEConfig(
        base_channels=8, num_res_blocks=1, quantizer=QuantizerConfig(codebook_size=16, code_dim=4)
    )
    train = TrainConfig(steps=3, batch_size=8, sample_every=0)
    run_tokenize(
        TokenizeConfig(run_dir=str(run), data=DataConfig(str(image_folder)), model=model, train=train)
    )
    tiny = {"gru": {"embed_dim": "16", "hidden_size": "16", "num_layers": "1"},
            "transformer": {"hidden_size": "16", "num_layers": "1", "num_heads": "2", "intermediate_size": "32"}}  # fmt: skip
    for name, options in tiny.items():
        cfg = PriorTrainConfig(
            codes=str(run / "codes"),
            prior=name,
            prior_options=options,
            train=TrainConfig(steps=3, batch_size=8, sample_every=0),
        )
        run_train_prior(cfg)
    return run


def test_evaluate_a_tiny_run(tiny_run, image_folder, digits, tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "inception_space", no_inception)  # as offline, whatever is installed
    lines = []
    m = run_evaluate(EvaluateConfig(run_dir=str(tiny_run), **TINY_EVAL), log=lines.append)
    written = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    assert (
        written["features"] == m["features"] == f"classifier-{image_folder.name}"
    )  # offline: no Inception here
    assert any("falling back to classifier-" in line for line in lines)
    for key in (
        "psnr",
        "ssim",
        "l1",
        "mse",
        "codebook_usage",
        "perplexity",
        "dead_codes",
        "rfid",
        "images_per_s",
    ):
        assert written["tokenizer"][key] is not None, key
    assert written["floor"]["fid"] >= 0 and 0 <= written["floor"]["precision"] <= 1
    assert sorted(written["priors"]) == ["gru", "transformer"]
    for r in written["priors"].values():
        for key in (
            "val_bits_per_token",
            "val_bits_per_dim",
            "gfid",
            "precision",
            "recall",
            "class_accuracy",
            "worst_class_accuracy",
            "tokens_per_s",
        ):
            assert r[key] is not None, key
        assert r["gfid"] >= 0 and 0 <= r["class_accuracy"] <= 1 and r["n_samples"] == 20
        assert 0 <= r["near_blank_share"] <= 1 and 0 <= r["copy_share"] <= 1
        assert 0 <= r["nearest_train_rms_min"] <= r["nearest_train_rms_median"] <= 1
    checks = written["sample_checks"]
    assert checks["eval_images"] == written["eval_images"] and checks["blank_threshold"] > 0
    report = (tiny_run / "eval" / "report.md").read_text()
    assert f"classifier-{image_folder.name}" in report and "| gru |" in report and "FD floor" in report
    assert "near-blank" in report and "copies" in report
    assert (tiny_run / "eval-classifier" / "model.safetensors").is_file()

    with pytest.raises(UserError, match="already holds an evaluation"):
        run_evaluate(EvaluateConfig(run_dir=str(tiny_run), **TINY_EVAL))

    # the comparison reuses the evaluation and draws the plot (PIL when matplotlib is absent)
    rows = run_compare(
        CompareConfig(paths=[str(tiny_run / "prior-gru"), str(tiny_run / "prior-transformer")]),
        log=lines.append,
    )
    assert [r["name"] for r in rows] == ["gru", "transformer"]
    # ... and says where that evaluation's settings differ from the ones this call asked for
    reused = [line for line in lines if line.startswith("using the evaluation in")]
    assert "n_samples=20 (asked: 1000)" in reused[-1] and "--overwrite evaluates again" in reused[-1]
    assert "| transformer |" in (tiny_run / "eval" / "compare.md").read_text()
    assert Image.open(tiny_run / "eval" / "compare.png").size[0] > 100
    other = tmp_path / "other"  # a second run (a copy, with its evaluation) to compare whole runs
    shutil.copytree(tiny_run, other, ignore=shutil.ignore_patterns("checkpoints", "compare.*"))
    with pytest.raises(UserError, match="--out is needed"):
        run_compare(CompareConfig(paths=[str(tiny_run), str(other)]))
    rows = run_compare(
        CompareConfig(paths=[str(tiny_run), str(other)], out=str(tmp_path / "c")), log=lines.append
    )
    assert [r["name"] for r in rows] == ["run/gru", "run/transformer", "other/gru", "other/transformer"]
    assert "## Tokenizers" in (tmp_path / "c" / "compare.md").read_text()

    # MNIST's idx format as --test-images: the 60 fixture digits, with labels; NLL on their codes too
    images, labels = digits
    idx = tmp_path / "idx"
    idx.mkdir()
    write_idx(idx / "t10k-images-idx3-ubyte.gz", images)
    write_idx(idx / "t10k-labels-idx1-ubyte.gz", labels)
    assert np.array_equal(read_idx(idx / "t10k-labels-idx1-ubyte.gz"), labels)
    cfg = EvaluateConfig(run_dir=str(tiny_run), test_images=str(idx), overwrite=True, **TINY_EVAL)
    m = run_evaluate(cfg, log=lines.append)
    assert m["eval_images"] == 60 and m["classifier"]["eval_accuracy"] is not None
    assert m["priors"]["gru"]["test_examples"] == 60 and m["priors"]["gru"]["test_bits_per_token"] > 0


def test_cli_compare_and_bad_input(tiny_run, tmp_path):
    tiny = ["--n-samples", "20", "--batch-size", "16", "--classifier-epochs", "1", "--classifier-width", "4"]
    tiny += ["--features", "classifier"]
    folders = [str(tiny_run / "prior-gru"), str(tiny_run / "prior-transformer")]
    result = run_cli("evaluate", "--compare", *folders, "--out", str(tmp_path / "cmp"), *tiny)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| gru |" in result.stdout and (tmp_path / "cmp" / "compare.png").is_file()
    again = run_cli("evaluate", "--compare", *folders, "--out", str(tmp_path / "cmp"), *tiny)
    assert_user_error(again, "already exists")

    assert_user_error(run_cli("evaluate", "--run", str(tmp_path / "nope")), "no such run folder")
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("evaluate", "--run", str(tmp_path / "empty")), "no trained tokenizer")
    assert_user_error(run_cli("evaluate", "--compare", str(tmp_path / "empty")), "neither a run folder")


def test_a_folder_of_test_images_is_prepared_once_and_labelled_in_the_runs_classes(
    image_folder, tmp_path, capfd, monkeypatch
):
    """--test-images FOLDER goes through the prepared cache (read in batches, reused next time); its class folders
    map to the run's classes by name, and a class the run does not know is -1."""
    from vqgen.stages.data.eval_images import load_test_images
    from vqgen.stages.data.images import DataConfig
    from vqgen.stages.data.pixels import PixelSplit

    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    folder = tmp_path / "test"
    for name in ("3", "7"):
        shutil.copytree(image_folder / name, folder / name)
    shutil.copytree(image_folder / "5", folder / "cats")
    run_classes = [str(c) for c in range(10)]
    images, labels = load_test_images(folder, DataConfig(), run_classes)
    assert "data: prepared" in capfd.readouterr().err
    split = PixelSplit(images)
    assert split.shape == (18, 1, 28, 28) and len(labels) == 18
    assert sorted(labels.tolist()) == [-1] * 6 + [3] * 6 + [7] * 6
    assert sum(len(b) for b in split.batches(5)) == 18
    again, labels_again = load_test_images(folder, DataConfig(), run_classes)
    assert "data: reusing the prepared cache" in capfd.readouterr().err
    assert torch.equal(labels_again, labels) and torch.equal(PixelSplit(again)[:], split[:])


def test_the_prior_sweep_scores_every_setting_as_evaluate_does(tiny_run, tmp_path):
    """benchmarks/prior_sweep.py on a copy of the tiny run: one row per (prior, variant, sampling setting)."""
    from benchmarks import prior_sweep

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    out = tmp_path / "sweep.json"
    argv = [
        "--run",
        str(run),
        "--priors",
        "gru",
        "--cfg-scales",
        "1",
        "3",
        "--n-samples",
        "20",
        "--json",
        str(out),
    ]
    result = prior_sweep.main(argv)
    rows = result["rows"]
    assert [(r["prior"], r["variant"], r["cfg_scale"]) for r in rows] == [
        ("gru", "defaults", 1.0),
        ("gru", "defaults", 3.0),
    ]
    assert all(0 <= r["worst_class_accuracy"] <= r["class_accuracy"] <= 1 and r["gfid"] >= 0 for r in rows)
    assert rows[0]["gfid_over_floor"] == rows[0]["gfid"] / result["floor"]["fid"]
    assert all(0 <= r["near_blank_share"] <= 1 and 0 <= r["copy_share"] <= 1 for r in rows)
    assert json.loads(out.read_text())["rows"][1]["cfg_scale"] == 3.0
