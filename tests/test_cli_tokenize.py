"""`cli.py tokenize` end to end on tiny configurations: outputs, overwrite protection, exact resume, bad input,
and a real two-process run through `accelerate launch`."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, TINY_TOKENIZER_FLAGS, assert_user_error, run_cli
from safetensors.torch import load_file


def tokenize(run, folder, *extra):
    return run_cli("tokenize", "--run", str(run), "--dataset", str(folder), *TINY_TOKENIZER_FLAGS, *extra)


def test_tokenize_writes_a_complete_run(tmp_path, image_folder):
    run = tmp_path / "run"
    result = tokenize(run, image_folder, "--steps", "4", "--checkpoint-every", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PSNR" in result.stdout
    assert sorted(p.name for p in (run / "tokenizer").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    metrics = json.loads((run / "metrics.json").read_text())["tokenizer"]
    for key in (
        "psnr",
        "ssim",
        "mse",
        "codebook_usage",
        "perplexity",
        "dead_codes",
        "images_per_s",
        "wall_seconds",
    ):
        assert key in metrics
    meta = json.loads((run / "codes" / "codes.json").read_text())
    assert meta["vocab_size"] == 16 and meta["grid_height"] == 7 and meta["num_classes"] == 10
    from datasets import load_from_disk

    codes = load_from_disk(str(run / "codes"))
    assert set(codes) == {"train", "validation"} and len(codes["train"]) + len(codes["validation"]) == 60
    row = codes["train"].with_format("numpy")[:1]
    assert row["codes"].shape == (1, 7, 7) and 0 <= row["codes"].max() < 16
    assert (run / "samples" / "recon_final.png").is_file()
    assert [p.name for p in (run / "checkpoints").iterdir()] and (run / "run_config.json").is_file()

    again = tokenize(run, image_folder, "--steps", "4")
    assert_user_error(again, "--overwrite")
    assert (run / "metrics.json").read_text() == json.dumps(
        json.loads((run / "metrics.json").read_text()), indent=2, sort_keys=True
    ) + "\n"


def test_resume_ends_with_the_same_weights(tmp_path, image_folder):
    full, part = tmp_path / "full", tmp_path / "part"
    flags = ("--steps", "6", "--checkpoint-every", "3")
    assert tokenize(full, image_folder, *flags).returncode == 0
    assert tokenize(part, image_folder, *flags).returncode == 0
    shutil.rmtree(part / "checkpoints" / "step_0000006")  # as if killed between step 3 and step 6
    shutil.rmtree(part / "tokenizer")
    resumed = tokenize(part, image_folder, *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(full / "tokenizer" / "model.safetensors"))
    b = load_file(str(part / "tokenizer" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), [k for k in a if not (a[k] == b[k]).all()]


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, image_folder):
    run = tmp_path / "run"
    assert tokenize(run, image_folder, "--steps", "4", "--checkpoint-every", "2").returncode == 0
    latest = run / "checkpoints" / "step_0000004" / "state.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    resumed = tokenize(run, image_folder, "--steps", "4", "--checkpoint-every", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "corrupt checkpoint" in resumed.stderr


@pytest.mark.parametrize(
    "args,fragments",
    [
        (("--image-size", "30", "--downsample", "4"), ("not divisible",)),
        (("--codebook-size", "1"), ("--codebook-size", "greater than or equal to 2")),
        (("--downsample", "3"), ("power of two",)),
        (("--plugin", "no-such-plugin"), ("unknown plugin", "no-such-plugin")),
        (("--dataset", "/definitely/missing/folder"), ("no such folder",)),
        (("--channels", "2"), ("channels",)),
        (("--log-with", "nosuch"), ("nosuch",)),
        (("--plugin-opt", "gan.weight=1"), ("not enabled",)),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, image_folder, args, fragments):
    result = run_cli(
        "tokenize", "--run", str(tmp_path / "r"), "--dataset", str(image_folder), *TINY_TOKENIZER_FLAGS, *args
    )
    assert_user_error(result, *fragments)


def test_empty_folder_and_unknown_option(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run_cli("tokenize", "--run", str(tmp_path / "r"), "--dataset", str(empty)), "no images")
    unknown = run_cli("tokenize", "--no-such-flag")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr and "no-such-flag" in unknown.stderr


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("tokenize", "priors", "plugins"):
        assert command in result.stdout


@pytest.mark.slow
def test_two_process_accelerate_launch(tmp_path, image_folder):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "cli.py"),
        "tokenize", "--run", str(run), "--dataset", str(image_folder), *TINY_TOKENIZER_FLAGS, "--steps", "3",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "tokenizer" / "model.safetensors").is_file()
    from datasets import load_from_disk

    codes = load_from_disk(str(run / "codes"))
    assert len(codes["train"]) + len(codes["validation"]) == 60  # both processes' shards gathered, none lost


def test_large_datasets_are_read_batch_by_batch_with_the_same_batches(image_folder):
    import torch
    from vqgen.stages.data.images import DataConfig
    from vqgen.stages.data.sources import load_image_splits
    from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig
    from vqgen.stages.training.tasks import TokenizerTask

    splits = load_image_splits(DataConfig(dataset=str(image_folder)))
    model = VQVAE(VQVAEConfig())
    in_memory, streamed = TokenizerTask(model, splits), TokenizerTask(model, splits, in_memory_bytes=0)
    assert in_memory.pixels is not None and streamed.pixels is None
    idx = torch.tensor([5, 0, 17, 3])
    assert torch.equal(
        in_memory.get_batch(idx, torch.device("cpu")), streamed.get_batch(idx, torch.device("cpu"))
    )
