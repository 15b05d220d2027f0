"""The benchmark suite (benchmarks/run_all.py) in its tiny mode: every section is there with sane numbers, and a
failing torch.compile becomes a reported row, not a crash."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from vqgen.stages.core.registry import PRIORS

from benchmarks import run_all, tokenizer_speed
from benchmarks.measure import Timing


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory) -> tuple[dict, dict]:
    """One --tiny run: (the returned result, the JSON file it wrote)."""
    out = tmp_path_factory.mktemp("bench") / "suite.json"
    result = run_all.main(["--tiny", "--json", str(out)])
    return result, json.loads(out.read_text())


def test_tiny_suite_has_every_section_with_sane_numbers(tiny_suite, capsys):
    result, written = tiny_suite
    assert written["sections"].keys() == run_all.SECTIONS.keys()
    assert written["suite"]["mode"] == "tiny" and written["suite"]["device"] == "cpu"
    machine = written["machine"]
    assert machine["torch"] == torch.__version__ and machine["cpu"] and machine["torch_threads"] >= 1
    assert len(machine["load_average"]) == 3
    for name, section in written["sections"].items():
        assert section["rows"], name
        for row in section["rows"]:
            assert "error" not in row, row
            assert positive(row["throughput"]) and positive(row["median_s"]) and row["repeats"] >= 1, row
            assert positive(row["ratio_to_baseline"]), row
            if name != "peak_matmul":  # measured on Linux through the process's peak resident set size
                assert row["peak_mem_mib"] is not None and row["peak_mem_mib"] >= 0, row
        baselines = [row for row in section["rows"] if row["baseline"] == row["name"]]
        assert baselines and all(row["ratio_to_baseline"] == 1.0 for row in baselines), name


def test_tiny_suite_measures_what_the_issue_asks(tiny_suite):
    sections = tiny_suite[1]["sections"]
    peaks = {row["name"].split()[0] for row in sections["peak_matmul"]["rows"]}
    assert peaks == {"fp32", "bf16"}

    quantizer = [row["name"] for row in sections["quantizer"]["rows"]]
    assert quantizer[0] == tokenizer_speed.QUANTIZER_BASELINE
    assert any(name.startswith("vqgen VectorQuantizer") for name in quantizer)
    has_vq_pytorch = importlib.util.find_spec("vector_quantize_pytorch") is not None  # the [bench] extra
    assert any(name.startswith("vector-quantize-pytorch") for name in quantizer) == has_vq_pytorch
    if not has_vq_pytorch:  # then the report says that its row is left out
        assert any(
            "vector-quantize-pytorch is not installed" in note for note in sections["quantizer"]["notes"]
        )

    train = sections["tokenizer_train"]["rows"]
    assert {row["precision"] for row in train} == {"fp32", "bf16"}
    for row in train:
        assert positive(row["flops_per_step"]) and positive(row["achieved_tflops"])
        assert positive(row["fraction_of_measured_peak"]) and positive(row["state_mib"])
    assert len({row["flops_per_step"] for row in train}) == 1  # counted once, the same step

    codec = {row["name"].split()[0] for row in sections["tokenizer_codec"]["rows"]}
    assert codec == {"encode", "decode"}

    priors = set(PRIORS.names())
    trained = sections["prior_train"]["rows"]
    assert {(row["prior"], row["precision"]) for row in trained} == {
        (p, q) for p in priors for q in ("fp32", "bf16")
    }

    samplers = sections["sampling"]["rows"]
    assert {row["prior"] for row in samplers} == priors
    for prior in priors:
        cached = next(row for row in samplers if row["name"] == f"{prior} cached")
        assert cached["same_as_naive"] is True
        assert cached["baseline"] == f"{prior} naive (baseline)"


def test_tiny_suite_prints_one_markdown_table_per_section(tiny_suite):
    text = run_all.report(tiny_suite[0])
    for section in tiny_suite[0]["sections"].values():
        assert f"### {section['title']}" in text
    assert text.count("|---|") == len(run_all.SECTIONS)


def test_failed_compile_is_reported_as_a_row(monkeypatch):
    def broken_compile(model, **kwargs):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken_compile)
    rows = tokenizer_speed.tokenizer_train_rows(
        [2], [("fp32", False), ("fp32", True)], Timing(repeats=1, warmup=0), torch.device("cpu")
    )
    ok, failed = rows
    assert positive(ok["throughput"]) and ok["ratio_to_baseline"] == 1.0
    assert failed["throughput"] is None and failed["error"] == "RuntimeError: no compiler here"
    assert failed["ratio_to_baseline"] is None
    table = run_all.markdown_table("t", rows)
    assert "failed: RuntimeError: no compiler here" in table


# --- the --device cuda path, run on the CPU at tiny sizes (the GPU figures are still to be measured) --------------
def test_cuda_plan_is_what_the_issue_asks():
    suite = run_all.make_suite("full", torch.device("cuda"), None, "inductor", ["gru"])  # nothing runs on it
    assert suite.sizes.tokenizer_batches == [32, 256, 1024]
    assert suite.sizes.prior_batches == [16, 256] and suite.sizes.sampling_batches == [16, 256]
    assert suite.train_precisions == ["tf32", "bf16"] and suite.compile_precisions == ["bf16"]
    cpu = run_all.make_suite("full", torch.device("cpu"), None, "inductor", ["gru"])
    assert cpu.compile_precisions == [] and cpu.train_precisions == ["fp32", "bf16"]


def test_tokenizer_step_against_the_plain_vqvae_of_the_same_size():
    rows = tokenizer_speed.tokenizer_train_rows(
        [2],
        [("tf32", False), ("bf16", False), ("bf16", True)],
        Timing(repeats=1, warmup=0),
        torch.device("cpu"),
        compile_backend="eager",
        plain_baseline=True,
    )
    assert len(rows) == 6 and all("error" not in row for row in rows), rows
    for row in rows:
        assert positive(row["throughput"]) and positive(row["ratio_to_baseline"])
        plain = row["model"] == "plain"
        assert row["baseline"].startswith(tokenizer_speed.PLAIN_NAME)
        assert (row["baseline"] == row["name"]) == plain
        if not plain:  # compared with the plain row of the same precision and compilation
            assert row["baseline"].endswith(row["name"].removeprefix("train step"))
    plain = tokenizer_speed.plain_vqvae(tokenizer_speed.VQVAEConfig(image_size=28))
    ours = tokenizer_speed.VQVAE(tokenizer_speed.VQVAEConfig(image_size=28))
    assert {k for k in plain.state_dict() if not k.startswith("quantizer")} == {
        k for k in ours.state_dict() if not k.startswith("quantizer")
    }  # same encoder and decoder


def test_compiled_prior_training_and_sampling_rows(tmp_path):
    result = run_all.main(
        [
            "--tiny",
            "--compile",
            "--compile-backend",
            "eager",
            "--sections",
            "prior_train",
            "sampling",
            "--priors",
            "gru",
            "transformer",
            "--json",
            str(tmp_path / "s.json"),
        ]
    )
    trained = result["sections"]["prior_train"]["rows"]
    assert {(r["prior"], r["compiled"]) for r in trained} == {
        (p, c) for p in ("gru", "transformer") for c in (False, "eager")
    }
    sampled = result["sections"]["sampling"]["rows"]
    for row in trained + sampled:
        assert "error" not in row and positive(row["ratio_to_baseline"]), row
    names = {r["name"] for r in sampled}
    assert {"gru cached, torch.compile", "transformer cached, torch.compile"} <= names
    assert "transformer transformers generate" in names  # HF generate: the transformer's other baseline


def test_rgb_comparison_trains_and_scores_each_architecture(tmp_path, digits):
    """benchmarks/rgb_compare.py on a tiny RGB folder with train/ and test/ class folders: every spec (an
    architecture, a preset with a plugin) trains the steps asked and is scored on the held-out split."""
    from PIL import Image

    from benchmarks import rgb_compare

    images, labels = digits
    for split, rows in (("train", range(0, 40)), ("test", range(40, 60))):
        for i in rows:
            tint = np.array([255, 128, 0] if labels[i] % 2 else [0, 128, 255], dtype=np.uint8)
            rgb = (images[i][..., None].astype(np.uint16) * tint // 255).astype(np.uint8)
            folder = tmp_path / "data" / split / ("odd" if labels[i] % 2 else "even")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb, mode="RGB").save(folder / f"{i}.png")
    out = tmp_path / "rgb.json"
    argv = [
        "--data",
        str(tmp_path / "data"),
        "--image-size",
        "16",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--json",
        str(out),
    ]
    result = rgb_compare.main(
        [*argv, "--archs", "vqvae", "vqgan-tiny+gan", "--grid", str(tmp_path / "grid.png")]
        + ["--plugin-opt", "gan.min_adaptive_weight=0.05"]
    )
    assert result["plugin_options"] == ["gan.min_adaptive_weight=0.05"]
    rows = {row["arch"]: row for row in result["rows"]}
    assert set(rows) == {"vqvae", "vqgan-tiny+gan"}
    assert rows["vqvae"]["grid"] == 4 and rows["vqgan-tiny+gan"]["grid"] == 4  # f4 at 16 px, both
    for row in rows.values():
        assert row["steps"] == 2 and row["eval_images"] == 20
        assert math.isfinite(row["psnr"]) and math.isfinite(row["rfid"]) and 0 < row["codebook_usage"] <= 1
    assert json.loads(out.read_text())["steps"] == 2
    assert Image.open(tmp_path / "grid.png").size == (8 * 18 + 2, 3 * 18 + 2)  # originals + 2 specs, 8 each


def test_rgb_comparison_means_over_seeds():
    from benchmarks import rgb_compare

    rows = [
        {"arch": a, "seed": seed, "steps": 5, "psnr": p, "ssim": 0.5, "edge_sharpness_ratio": e, "rfid": 2.0}
        for a, seed, p, e in (("vqvae", 0, 20.0, 0.7), ("vqvae+gan", 0, 19.0, 0.9), ("vqvae", 1, 22.0, 0.8))
    ]
    means = {m["arch"]: m for m in rgb_compare.seed_means(rows)}
    assert means["vqvae"]["psnr"] == 21.0 and means["vqvae"]["seeds"] == [0, 1]
    assert abs(means["vqvae"]["psnr_std"] - 2**0.5) < 1e-12 and means["vqvae+gan"]["psnr_std"] == 0.0
    assert abs(means["vqvae"]["edge_sharpness_ratio"] - 0.75) < 1e-12


def test_sampling_benchmark_times_a_variant_given_by_prior_options(tmp_path, capsys):
    """`benchmarks.sampling --grid --prior-opt`: the variant is the one timed (fewer parameters for a narrower GRU),
    and an option the prior does not have is one argparse line, exit 2, before anything is timed."""
    from benchmarks import sampling

    args = ["--quick", "--priors", "gru", "--grid", "3", "--batch", "2"]
    default = sampling.main([*args, "--json", str(tmp_path / "a.json")])
    narrow = sampling.main([*args, "--prior-opt", "hidden_size=32", "--json", str(tmp_path / "b.json")])
    assert default["grid"] == [3, 3] and narrow["prior_options"] == {"hidden_size": "32"}
    assert narrow["results"][0]["params"] < default["results"][0]["params"]
    assert narrow["results"][0]["same_as_naive"] is True
    with pytest.raises(SystemExit) as exit_info:
        sampling.main([*args, "--prior-opt", "no_such=1", "--json", str(tmp_path / "c.json")])
    assert exit_info.value.code == 2 and "gru has no option 'no_such'" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
    # --baseline-opt: the same run times the changed prior as the baseline, and no naive sampler
    against = sampling.main([*args, "--baseline-opt", "hidden_size=32", "--json", str(tmp_path / "d.json")])
    names = [row["name"] for row in against["results"]]
    assert names == ["gru cached", "gru cached, hidden_size=32 (baseline)"]
    cached, baseline = against["results"]
    assert cached["baseline"] == baseline["name"] and baseline["ratio_to_baseline"] == 1.0
    assert baseline["params"] < cached["params"] == default["results"][0]["params"]
    assert "same_as_naive" not in cached and against["baseline_options"] == {"hidden_size": "32"}
    with pytest.raises(SystemExit) as exit_info:
        sampling.main([*args, "--baseline-opt", "no_such=1", "--json", str(tmp_path / "e.json")])
    assert exit_info.value.code == 2 and not (tmp_path / "e.json").exists()
