"""Two CPU processes under `accelerate launch` (gloo), in every mode torch runs on the CPU: DDP, and FSDP2
(`--use_fsdp --fsdp_version 2`; accelerate leaves it to vqgen on the CPU, stages/training/sharding.py). Each
matches one process at the same global batch, resumes exactly after a SIGKILL, and its gathered weights are its
shards. FSDP1 and DeepSpeed are refused (tests/test_gpu_path.py); bf16 and several GPUs: benchmarks/prior_scale.py.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY_TOKENIZER_FLAGS, assert_user_error, run_cli
from safetensors.torch import load_file
from test_resume import cli_in_process
from vqgen.stages.core.errors import UserError
from vqgen.stages.training.preflight import check_resume

STEPS = 6
PRIOR = [
    "--prior", "transformer", "--sample-every", "0", "--steps", str(STEPS), "--checkpoint-every", "2",
    "--eval-every", "3", "--model-ema-decay", "0.9", "--record-data-order",
    *[f for o in ("hidden_size=32", "num_layers=2", "num_heads=2", "intermediate_size=64", "label_dropout=0",
                  "attention_dropout=0", "token_dropout=0", "resid_dropout=0") for f in ("--prior-opt", o)],
]  # fmt: skip
SETTINGS = {"log_every": 1, "checkpoint_shard_gb": 2e-5}  # 20 kB shards: a checkpoint of several files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cmd(processes: int, mode: str, *args: str) -> list[str]:
    # --multi_gpu: DDP over gloo when there is no GPU (`--cpu` would start one process, whatever --num_processes)
    engine = ["--use_fsdp", "--fsdp_version", "2"] if mode == "fsdp" else ["--multi_gpu"]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *engine,
        str(ROOT / "cli.py"), *args,
    ]  # fmt: skip


def launch(processes: int, mode: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = launch_cmd(processes, mode, *args)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def codes(tmp_path_factory, image_folder) -> Path:
    run = tmp_path_factory.mktemp("codes") / "run"
    cli_in_process(
        "tokenize", "--run", str(run), "--dataset", str(image_folder), *TINY_TOKENIZER_FLAGS, "--steps", "2"
    )
    settings = run / "settings.json"
    settings.write_text(json.dumps(SETTINGS))
    return run / "codes"


def train_args(codes: Path, out: Path, batch: int) -> list[str]:
    return ["train-prior", "--codes", str(codes), "--out", str(out), "--batch-size", str(batch), *PRIOR,
            "--config", str(codes.parent / "settings.json")]  # fmt: skip


@pytest.fixture(scope="module")
def runs(codes, tmp_path_factory) -> dict[str, Path]:
    """The same 6 steps at a global batch of 8: one process, and two of 4 under DDP and under FSDP."""
    root = tmp_path_factory.mktemp("runs")
    out = {name: root / name for name in ("one", "ddp", "fsdp")}
    cli_in_process(*train_args(codes, out["one"], 8))
    for mode in ("ddp", "fsdp"):
        result = launch(2, mode, *train_args(codes, out[mode], 4))
        assert result.returncode == 0, result.stderr[-3000:]
    return out


def data_order(run: Path) -> list[list[int]]:
    """Per step, the dataset indices process 0 consumed."""
    lines = (run / "data_order.txt").read_text().splitlines()
    return [[int(i) for i in line.split("\t")[1].split(",")] for line in lines]


def val_curve(run: Path) -> list[float]:
    history = json.loads((run / "metrics.json").read_text())["history"]
    return [h["val_bits_per_token"] for h in history if "val_bits_per_token" in h]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_at_the_same_global_batch(runs, mode):
    one, two = runs["one"], runs[mode]
    # process 0 took the first half of each global batch: each step saw the same examples as one process did
    assert data_order(two) == [indices[:4] for indices in data_order(one)]
    assert len(val_curve(one)) == 2 and val_curve(two) == pytest.approx(val_curve(one), rel=1e-4)
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    step = two / "checkpoints" / f"step_{STEPS:07d}"
    meta = json.loads((step / "state.json").read_text())
    assert meta["num_processes"] == 2 and meta["engine"] == ("fsdp-cpu" if mode == "fsdp" else "plain")
    assert (step / "state.safetensors.index.json").is_file() and len(meta["files"]) > 2  # shards + index


@pytest.mark.slow
def test_fsdp_gathered_checkpoint_is_the_trained_model(runs):
    """The final model (the weight average, gathered from the shards) is the checkpoint's gathered average, and
    it loads on one device as any prior does."""
    from vqgen.stages.artifacts.models import load_prior
    from vqgen.stages.training import checkpoint as ckpt

    tensors, _ = ckpt.read_checkpoint(runs["fsdp"] / "checkpoints" / f"step_{STEPS:07d}")
    final = load_file(runs["fsdp"] / "model.safetensors")
    assert all(torch.equal(final[k], tensors[f"ema.{k}"]) for k in final)
    assert sum(p.numel() for p in load_prior(runs["fsdp"]).parameters()) == sum(
        t.numel() for t in final.values()
    )


@pytest.mark.slow
def test_fsdp_killed_then_resumed_is_exact(runs, codes, tmp_path):
    run = tmp_path / "killed"
    args = train_args(codes, run, 4)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        launch_cmd(2, "fsdp", *args),
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "checkpoints" / "step_0000002").is_dir():
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers, wherever they are
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (run / "model.safetensors").exists()

    result = launch(2, "fsdp", *args, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    reference = runs["fsdp"]
    a, b = load_file(reference / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    final, ref_final = (r / "checkpoints" / f"step_{STEPS:07d}" for r in (run, reference))
    assert json.loads((final / "state.json").read_text()) == json.loads(
        (ref_final / "state.json").read_text()
    )
    assert (run / "data_order.txt").read_text() == (reference / "data_order.txt").read_text()


@pytest.mark.slow
def test_resume_on_another_process_count_and_a_missing_shard_are_one_line(runs, codes, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(runs["fsdp"], run)
    saved = json.loads((run / "run_config.json").read_text())
    (run / "run_config.json").write_text(json.dumps({**saved, "out": str(run)}))  # the copy is its own run
    with pytest.raises(UserError, match="written by 2 processes, not 1"):
        check_resume(run, 1, 4)
    check_resume(run, 2, 4)
    newest = run / "checkpoints" / f"step_{STEPS:07d}"
    index = json.loads((newest / "state.safetensors.index.json").read_text())
    (newest / sorted(set(index["weight_map"].values()))[-1]).unlink()
    args = [*train_args(codes, run, 4), "--steps", str(STEPS + 2), "--resume"]
    assert_user_error(run_cli(*args), "is missing (its index lists it)")


def test_a_model_too_large_for_the_devices_is_one_line(codes, tmp_path):
    """Measured on the meta device before anything is built: here the memory is declared 100 kB per device."""
    out = tmp_path / "huge"
    memory = {"VQGEN_DEVICE_MEMORY_GB": "0.0001"}
    result = run_cli(*train_args(codes, out, 4), env=memory)
    assert_user_error(
        result, "0M parameters", "20 bytes per parameter", "more than VQGEN_DEVICE_MEMORY_GB has"
    )
    assert not out.exists()


def test_every_prior_names_its_blocks_as_the_sharding_unit():
    """FSDP shards and gathers a prior block by block: the classes in `_no_split_modules` (priors/base.py)."""
    from vqgen.stages.core.build import prior_config_class
    from vqgen.stages.core.registry import PRIORS

    for entry in PRIORS.entries():
        cls = PRIORS.get(entry.name)
        prior = cls(prior_config_class(cls)(vocab_size=16, grid_height=4, grid_width=4, num_classes=2))
        present = {type(m).__name__ for m in prior.modules()}
        assert set(prior._no_split_modules) <= present, entry.name
    transformer = PRIORS.get("transformer")
    assert transformer(prior_config_class(transformer)())._no_split_modules == ["LlamaDecoderLayer"]


@pytest.mark.slow
def test_each_process_destroys_its_process_group_before_the_interpreter_exits(tmp_path):
    """Left to interpreter shutdown, gloo's threads can abort a finished process (SIGABRT: a run that reads as
    failed). atexit runs its handlers last-in first-out: the one registered first sees the group new_accelerator's
    handler left."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import atexit, os, sys\n"
        "import torch.distributed as dist\n"
        "from vqgen.stages.training.distribution import new_accelerator\n"
        "report = open(os.path.join(sys.argv[1], os.environ['RANK']), 'w')\n"
        "atexit.register(lambda: report.write(f'left at exit: {dist.is_initialized()}'))\n"
        "accelerator = new_accelerator('auto')\n"
        "report.write(f'processes: {accelerator.num_processes}; ')\n"
    )
    cmd = [*launch_cmd(2, "ddp")[:-1], str(script), str(tmp_path)]  # the launch, with the probe for cli.py
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [(tmp_path / rank).read_text() for rank in "01"] == ["processes: 2; left at exit: False"] * 2
