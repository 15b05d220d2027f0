"""Every tokenizer architecture x every quantizer through the command line at tiny sizes: `tokenize`,
`train-prior` (gru), `generate`, `push --dry-run` and the Pipeline, a save/load round trip with bit-identical
outputs, `--resume` of a VQGAN run, the 256 px VQGAN-f16 at a tiny width, `cli.py tokenizers`, and bad input.

Commands run in this process through `cli.main()` (as tests/test_bad_inputs.py does): the same code as
`python cli.py ...` without a new interpreter per call.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Answer, call_cli
from vqgen.stages.core.registry import QUANTIZERS, TOKENIZERS

STEPS = ["--steps", "2", "--batch-size", "8", "--sample-every", "0"]
ARCH_FLAGS = {  # a tiny configuration of every architecture, at 16 px
    "vqvae": ["--arch", "vqvae", "--base-channels", "8", "--res-blocks", "1", "--image-size", "16"],
    "vqgan": ["--arch", "vqgan-tiny"],
}
QUANTIZER_FLAGS = {  # K = 16 for each
    "vq": ["--codebook-size", "16", "--code-dim", "4"],
    "fsq": ["--quantizer", "fsq", "--fsq-levels", "4,4"],
    "lfq": ["--quantizer", "lfq", "--code-dim", "4"],
}
GRU_FLAGS = ["--prior-opt", "embed_dim=8", "--prior-opt", "hidden_size=8", "--prior-opt", "num_layers=1"]


def ok(answer: Answer) -> Answer:
    assert answer.code == 0, (answer.out[-2000:], answer.err[-3000:])
    return answer


def one_line_error(answer: Answer, *fragments: str) -> None:
    assert answer.code == 2 and "Traceback" not in answer.err, (answer.code, answer.err[-3000:])
    lines = [line for line in answer.err.splitlines() if line.startswith("error")]
    assert len(lines) == 1, answer.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny models run many small convolutions; on a busy machine every parallel region can wait tens of
    milliseconds for a descheduled thread, so this module runs on one (and restores the count afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_every_registered_architecture_and_quantizer_is_covered():
    assert set(TOKENIZERS.names()) <= set(ARCH_FLAGS) and set(QUANTIZERS.names()) <= set(QUANTIZER_FLAGS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, image_folder) -> dict:
    """One tokenizer run per (architecture, quantizer), each with a GRU prior; trained once for this module."""
    root = tmp_path_factory.mktemp("archs")
    out = {}
    for arch in ARCH_FLAGS:
        for kind in QUANTIZER_FLAGS:
            run = root / f"{arch}-{kind}"
            flags = [*ARCH_FLAGS[arch], *QUANTIZER_FLAGS[kind], *STEPS]
            ok(call_cli("tokenize", "--run", run, "--dataset", image_folder, *flags))
            ok(call_cli("train-prior", "--codes", run / "codes", *STEPS, *GRU_FLAGS))
            out[arch, kind] = run
    return out


@pytest.mark.parametrize("kind", sorted(QUANTIZER_FLAGS))
@pytest.mark.parametrize("arch", sorted(ARCH_FLAGS))
def test_tokenize_train_prior_generate(runs, arch, kind, image_folder, tmp_path):
    from datasets import load_from_disk
    from vqgen.stages.artifacts.models import load_tokenizer
    from vqgen.stages.data.images import to_float

    run = runs[arch, kind]
    config = json.loads((run / "tokenizer" / "config.json").read_text())
    assert config["model_type"] == arch and config["quantizer"]["kind"] == kind
    meta = json.loads((run / "codes" / "codes.json").read_text())
    assert meta["vocab_size"] == 16 and meta["grid_height"] == meta["grid_width"] == 4
    metrics = json.loads((run / "metrics.json").read_text())["tokenizer"]
    assert 0 < metrics["codebook_usage"] <= 1 and 1 <= metrics["perplexity"] <= 16

    # save/load round trip: the saved tokenizer reproduces the codes it wrote, bit for bit, and saves again exactly
    tokenizer = load_tokenizer(run / "tokenizer")
    assert type(tokenizer).__name__ == {"vqvae": "VQVAE", "vqgan": "VQGAN"}[arch]
    assert tokenizer.fingerprint() == meta["tokenizer_fingerprint"]
    codes = load_from_disk(str(run / "codes"))["validation"].with_format("numpy")[:]
    pixels = torch.from_numpy(np.asarray(load_from_disk(str(run / "codes"))["validation"]["codes"]))
    assert pixels.shape[1:] == (4, 4) and codes["codes"].max() < 16
    images = to_float(torch.randint(0, 256, (3, config["channels"], 16, 16), dtype=torch.uint8))
    tokenizer.save_pretrained(tmp_path / "again")
    again = load_tokenizer(tmp_path / "again")
    assert torch.equal(tokenizer.encode(images), again.encode(images))
    assert torch.equal(tokenizer.decode(tokenizer.encode(images)), again.decode(again.encode(images)))

    out = tmp_path / "grid.png"
    answer = ok(
        call_cli("generate", "--prior", run / "prior-gru", "--n", "2", "--batch-size", "2", "--out", out)
    )
    assert out.is_file() and "wrote" in answer.out


def test_push_and_the_pipeline_with_a_vqgan_fsq_run(runs, tmp_path):
    from vqgen.stages.pipeline import Pipeline

    run = runs["vqgan", "fsq"]
    folder = tmp_path / "publish"
    ok(call_cli("push", run, "--repo-id", "someone/tiny", "--prior", "gru", "--dry-run", folder))
    assert "VQGAN (FSQ) tokenizer" in (folder / "README.md").read_text()
    images = Pipeline.from_pretrained(str(folder)).generate(n=2, seed=0)
    assert len(images) == 2 and images[0].size == (16, 16)


def test_a_prior_trained_on_other_codes_is_refused(runs, tmp_path):
    other = (
        runs["vqgan", "vq"] / "tokenizer"
    )  # same K and grid as the vqvae run's: only the fingerprint differs
    answer = call_cli(
        "generate",
        "--prior",
        runs["vqvae", "vq"] / "prior-gru",
        "--tokenizer",
        other,
        "--n",
        "2",
        "--out",
        tmp_path / "g.png",
    )
    one_line_error(answer, "the prior was trained on tokenizer")
    lfq = runs["vqvae", "lfq"] / "tokenizer"
    answer = call_cli(
        "generate",
        "--prior",
        runs["vqgan", "fsq"] / "prior-gru",
        "--tokenizer",
        lfq,
        "--n",
        "2",
        "--out",
        tmp_path / "g.png",
    )
    one_line_error(answer, "not on this one")
    assert not (tmp_path / "g.png").exists()


def test_resume_keeps_the_run_architecture(tmp_path, image_folder):
    run = tmp_path / "run"
    flags = [*ARCH_FLAGS["vqgan"], *QUANTIZER_FLAGS["lfq"], "--batch-size", "8", "--sample-every", "0"]
    ok(call_cli("tokenize", "--run", run, "--dataset", image_folder, *flags, "--steps", "2"))
    ok(call_cli("tokenize", "--run", run, "--dataset", image_folder, "--resume", "--steps", "3"))
    assert json.loads((run / "tokenizer" / "config.json").read_text())["model_type"] == "vqgan"
    saved = json.loads((run / "run_config.json").read_text())
    assert saved["arch"] == "vqgan-tiny" and saved["train"]["steps"] == 3
    one_line_error(
        call_cli("tokenize", "--run", run, "--dataset", image_folder, "--resume", "--arch", "vqvae"),
        "arch was 'vqgan-tiny'",
    )


def test_vqgan_f16_at_256_px_end_to_end(tmp_path, image_folder):
    """The full VQ-16 layout (5 levels, attention at 16x16) at 256 px, made tiny by width, on 10 images."""
    import shutil

    few = tmp_path / "few"
    for digit in range(10):
        (few / str(digit)).mkdir(parents=True)
        shutil.copy(sorted((image_folder / str(digit)).iterdir())[0], few / str(digit))
    config = tmp_path / "narrow.yaml"
    config.write_text("base_channels: 4\nlatent_channels: 8\nnum_res_blocks: 1\n")
    run = tmp_path / "run"
    answer = call_cli(
        "tokenize",
        "--run",
        run,
        "--dataset",
        few,
        "--arch",
        "vqgan-f16",
        "--image-size",
        "256",
        "--config",
        config,
        "--codebook-size",
        "16",
        "--code-dim",
        "4",
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--sample-every",
        "0",
    )
    ok(answer)
    model = json.loads((run / "tokenizer" / "config.json").read_text())
    assert model["ch_mult"] == [1, 1, 2, 2, 4] and model["image_size"] == 256 and model["base_channels"] == 4
    meta = json.loads((run / "codes" / "codes.json").read_text())
    assert meta["grid_height"] == meta["grid_width"] == 16


def test_cli_lists_every_architecture_and_preset():
    answer = ok(call_cli("tokenizers"))
    for name in ("vqvae", "vqgan", "vqgan-f8", "vqgan-f16", "vqgan-tiny"):
        assert any(line.split()[0] == name for line in answer.out.splitlines()), name
    f16 = next(line for line in answer.out.splitlines() if line.startswith("vqgan-f16"))
    assert "256 px" in f16 and "16^2" in f16 and "built-in" in f16 and "71.75M" in f16
    assert {"vq", "fsq", "lfq"} <= {line.split()[0] for line in ok(call_cli("quantizers")).out.splitlines()}


@pytest.mark.parametrize(
    "flags,fragments",
    [
        (["--arch", "nosuch"], ("unknown tokenizer architecture 'nosuch'", "vqgan-f16")),
        (["--quantizer", "nosuch"], ("unknown quantizer 'nosuch'", "fsq")),
        (["--quantizer", "fsq", "--fsq-levels", "1,8"], ("fsq levels must each be at least 2",)),
        (["--quantizer", "fsq", "--fsq-levels", "256,256,2"], ("131072 codes", "at most 65536")),
        (["--quantizer", "fsq", "--fsq-levels", "8,x"], ("comma-separated integers",)),
        (["--quantizer", "lfq", "--code-dim", "20"], ("1 to 16",)),
        (["--quantizer", "fsq", "--codebook-size", "64"], ("--codebook-size applies to --quantizer vq",)),
        (["--arch", "vqgan-f16", "--image-size", "40"], ("not divisible by the downsampling factor 16",)),
        (["--arch", "vqgan", "--downsample", "8"], ("--downsample does not apply to --arch vqgan",)),
    ],
)
def test_bad_tokenizer_choices_are_one_line(flags, fragments, tmp_path, image_folder):
    answer = call_cli(
        "tokenize", "--run", tmp_path / "run", "--dataset", image_folder, *flags, "--steps", "1"
    )
    one_line_error(answer, *fragments)
    assert not (tmp_path / "run").exists()


def test_old_tokenizer_config_without_a_quantizer_kind_loads(tmp_path):
    from vqgen.stages.artifacts.models import load_tokenizer
    from vqgen.stages.tokenizer.base import LATER_FIELDS, QuantizerConfig
    from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(base_channels=8, quantizer=QuantizerConfig(codebook_size=16, code_dim=4)))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for later in LATER_FIELDS:  # as written before these fields existed
        del config["quantizer"][later]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_tokenizer(tmp_path)
    assert loaded.config.quantizer.kind == "vq" and loaded.fingerprint() == model.fingerprint()
    Path(tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "nosuch"}))
    with pytest.raises(Exception, match="not a vqgen tokenizer"):
        load_tokenizer(tmp_path)


def test_gan_plugin_and_a_trained_vqgan_reused(runs, tmp_path, image_folder):
    """The GAN plugin's adaptive weight reads a VQGAN's last layer; `--tokenizer` reuses a trained VQGAN."""
    flags = [*ARCH_FLAGS["vqgan"], *QUANTIZER_FLAGS["lfq"], *STEPS]
    ok(call_cli("tokenize", "--run", tmp_path / "gan", "--dataset", image_folder, *flags, "--plugin", "gan"))
    trained = runs["vqgan", "fsq"] / "tokenizer"
    reuse = ["tokenize", "--dataset", image_folder, "--tokenizer", trained]
    ok(call_cli(*reuse, "--run", tmp_path / "reuse", "--image-size", "16"))
    meta = json.loads((tmp_path / "reuse" / "codes" / "codes.json").read_text())
    assert (
        meta["tokenizer_fingerprint"]
        == json.loads((runs["vqgan", "fsq"] / "codes" / "codes.json").read_text())["tokenizer_fingerprint"]
    )
    one_line_error(call_cli(*reuse, "--run", tmp_path / "other"), "takes 16 px images", "--image-size 16")


def test_tokenizer_sizes_benchmark_in_its_tiny_mode(tmp_path):
    from benchmarks import tokenizer_sizes

    result = tokenizer_sizes.main(
        ["--tiny", "--skip-usage", "--repeats", "1", "--json", str(tmp_path / "s.json")]
    )
    (row,) = result["train_step"]
    assert row["name"] == "vqgan-tiny" and row["throughput"] > 0 and row["params_m"] > 0
    assert json.loads((tmp_path / "s.json").read_text())["train_step"][0]["gflops_per_image"] > 0


def test_the_default_vqvae_grid_suits_the_image_size():
    from vqgen.stages.tokenizer.vqvae import downsample_for

    sizes = {28: 4, 32: 4, 64: 4, 96: 8, 128: 8, 256: 16, 512: 16, 100: 4, 200: 8, 30: 2}
    assert {s: downsample_for(s) for s in sizes} == sizes
    assert {s: s // downsample_for(s) for s in (28, 64, 128, 256)} == {28: 7, 64: 16, 128: 16, 256: 16}


def test_new_quantizer_fields_at_their_defaults_leave_the_fingerprint_as_published():
    """A field added to QuantizerConfig must be listed in LATER_FIELDS, or every published tokenizer's fingerprint
    changes and all its priors are refused."""
    from vqgen.stages.tokenizer.base import fingerprint_fields
    from vqgen.stages.tokenizer.vqvae import VQVAEConfig

    first_release = {
        "codebook_size", "code_dim", "beta", "update", "ema_decay", "cosine", "init", "kmeans_iters",
        "restart_threshold", "restart_every",
    }  # fmt: skip
    assert set(fingerprint_fields(VQVAEConfig())["quantizer"]) == first_release
