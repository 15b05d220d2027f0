"""The GPU path, as far as a CPU can check it (issue 15): fp16 overflow handled by the GradScaler (not rollback),
the quantizer in fp32 under bf16 autocast, at most one host sync per optimizer step, torch.compile without
`_orig_mod.` prefixes, accelerate's own precision setting, FSDP1/DeepSpeed refused, and --device on every command.
GPU speed and the CUDA-only branches (channels_last, fused AdamW) are not exercised here."""

import collections
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedType
from conftest import assert_user_error, run_cli
from safetensors import safe_open
from vqgen.stages.core.device import check_device_name, resolve_device
from vqgen.stages.core.errors import UserError
from vqgen.stages.data.images import DataConfig
from vqgen.stages.data.sources import load_image_splits
from vqgen.stages.tokenizer.base import QuantizerConfig
from vqgen.stages.tokenizer.quantizer import VectorQuantizer
from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig
from vqgen.stages.training import checkpoint as ckpt
from vqgen.stages.training.tasks import TokenizerTask
from vqgen.stages.training.trainer import TrainConfig, Trainer

TINY_MODEL = VQVAEConfig(
    base_channels=8,
    num_res_blocks=0,
    quantizer=QuantizerConfig(codebook_size=16, code_dim=4, restart_every=2),
)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps its state in process-wide singletons; each test builds its own Accelerator."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def splits(image_folder):
    return load_image_splits(DataConfig(str(image_folder)))


def make_trainer(splits, run_dir: Path, **train) -> Trainer:
    torch.manual_seed(0)
    cfg = TrainConfig(
        **{"steps": 6, "batch_size": 8, "sample_every": 0, "log_every": 1, "mixed_precision": "no", **train}
    )
    return Trainer(TokenizerTask(VQVAE(replace(TINY_MODEL)), splits), cfg, run_dir)


# --- fp16: an overflow is the GradScaler's business, not a divergence ---------------------------------------
def install_grad_scaler(trainer: Trainer, monkeypatch) -> torch.amp.GradScaler:
    """What accelerate sets up for fp16 on a GPU, on the CPU: a GradScaler in the accelerator and its optimizer
    (accelerate's own fp16 needs a GPU)."""
    from accelerate.optimizer import AcceleratedOptimizer

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    acc = trainer.accelerator
    acc.scaler = scaler
    wrapped = AcceleratedOptimizer(trainer.optimizer.optimizer, scaler=scaler)
    acc._optimizers = [wrapped]
    trainer.optimizer = wrapped
    # accelerate unscales before clipping only when it runs fp16 itself
    monkeypatch.setattr(acc, "unscale_gradients", lambda optimizer=None: scaler.unscale_(wrapped.optimizer))
    return scaler


def test_fp16_overflow_is_skipped_by_the_scaler_not_rolled_back(splits, tmp_path, monkeypatch):
    trainer = make_trainer(splits, tmp_path, snapshot_every=1)
    scaler = install_grad_scaler(trainer, monkeypatch)
    task = trainer.task
    plain = task.compute_loss
    calls = []

    def overflow_once(model, batch):  # a finite loss whose scaled gradients overflow, at the third step
        loss, out, metrics = plain(model, batch)
        calls.append(1)
        return (loss * 1e36 if len(calls) == 3 else loss), out, metrics

    monkeypatch.setattr(task, "compute_loss", overflow_once)
    restored = []
    monkeypatch.setattr(trainer, "_restore_snapshot", lambda: restored.append(1))
    before = {k: v.clone() for k, v in trainer.unwrapped().state_dict().items()}
    trainer.fit()
    assert trainer.step == 6 and len(calls) == 6  # the overflowing step counts as a step: no retry
    assert trainer.skipped_steps == 1 and trainer.nonfinite_total == 0 and not restored
    assert scaler.get_scale() == 2.0**9  # lowered once by the skipped step
    assert trainer.history[-1]["skipped_steps"] == 1 and trainer.history[-1]["nonfinite_skipped"] == 0
    after = trainer.unwrapped().state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the other steps did train
    saved = json.loads((ckpt.list_checkpoints(tmp_path)[-1] / "state.json").read_text())
    assert saved["skipped_steps"] == 1 and saved["grad_scaler"]["scale"] == 2.0**9


def test_a_nonfinite_loss_is_still_divergence_and_rolled_back(splits, tmp_path, monkeypatch):
    trainer = make_trainer(splits, tmp_path, snapshot_every=1)
    install_grad_scaler(trainer, monkeypatch)
    plain, calls = trainer.task.compute_loss, []

    def nan_once(model, batch):
        loss, out, metrics = plain(model, batch)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 3 else loss), out, metrics

    monkeypatch.setattr(trainer.task, "compute_loss", nan_once)
    trainer.fit()
    assert trainer.step == 6 and len(calls) == 7  # the failed step is tried again after the rollback
    assert trainer.nonfinite_total == 1 and trainer.skipped_steps == 0 and trainer.lr_scale == 0.5


# --- bf16: the quantizer stays in fp32 ---------------------------------------------------------------------
def test_bf16_step_keeps_the_quantizer_in_fp32(splits, tmp_path, monkeypatch):
    seen = []
    nearest = VectorQuantizer.nearest

    def spy(self, flat):
        seen.append((flat.dtype, torch.is_autocast_enabled("cpu")))
        return nearest(self, flat)

    monkeypatch.setattr(VectorQuantizer, "nearest", spy)
    trainer = make_trainer(splits, tmp_path, steps=2, mixed_precision="bf16")
    assert trainer.accelerator.mixed_precision == "bf16"
    with trainer.accelerator.autocast():
        assert torch.is_autocast_enabled("cpu")  # the step really runs under bf16 autocast
    trainer.fit()
    q = trainer.unwrapped().quantizer
    assert seen and all(dtype == torch.float32 and not autocast for dtype, autocast in seen)
    assert q.codebook.dtype == torch.float32 and q.ema_sum.dtype == torch.float32
    assert all(torch.isfinite(v).all() for v in q.state_dict().values() if v.is_floating_point())
    # and a bf16 input outside the trainer comes out of the distances in fp32 as well
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(torch.randn(2, q.proj_in.in_channels, 7, 7, dtype=torch.bfloat16))
    assert out.z_q.dtype == torch.float32 and out.loss.dtype == torch.float32


# --- at most one host sync per optimizer step --------------------------------------------------------------
READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


class SyncCounter:
    """Counts the device-to-host reads of tensors (Tensor.item, tolist, float(), int(), bool()) made by vqgen,
    accelerate and torch.nn. On this CPU every tensor is on the host, so every such read counts as a sync, except
    torch.optim's reads of its own step counters: those live on the host on a GPU too (Adam keeps `step` on the CPU
    unless fused or capturable; fused AdamW, used on CUDA, reads nothing)."""

    def __init__(self, monkeypatch):
        self.count = 0
        self.where = collections.Counter()
        for name in READS:
            original = getattr(torch.Tensor, name)

            def counted(self_, *args, _original=original, _name=name, **kwargs):
                caller = sys._getframe(1).f_code.co_filename
                if f"torch{os.sep}optim{os.sep}" not in caller:
                    self.count += 1
                    self.where[f"{_name} {caller}:{sys._getframe(1).f_lineno}"] += 1
                return _original(self_, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("stage", ["tokenizer", "tokenizer, 2 micro-batches", "prior"])
def test_at_most_one_host_sync_per_step(splits, tmp_path, monkeypatch, stage):
    if stage.startswith("tokenizer"):
        accum = 2 if "micro" in stage else 1
        trainer = make_trainer(
            splits,
            tmp_path,
            steps=20,
            log_every=1000,
            checkpoint_every=1000,
            snapshot_every=0,
            grad_accum=accum,
        )
    else:
        from vqgen.stages.artifacts.codes import CodeSplits
        from vqgen.stages.core.build import build_prior
        from vqgen.stages.training.tasks import PriorTask

        meta = {
            "vocab_size": 16,
            "grid_height": 7,
            "grid_width": 7,
            "num_classes": 10,
            "tokenizer_fingerprint": "x",
        }
        gen = torch.Generator().manual_seed(0)
        codes = CodeSplits(
            torch.randint(0, 16, (64, 7, 7), generator=gen),
            torch.randint(0, 10, (64,), generator=gen),
            torch.randint(0, 16, (8, 7, 7), generator=gen),
            torch.randint(0, 10, (8,), generator=gen),
            meta,
        )
        prior = build_prior("gru", meta, {"embed_dim": "16", "hidden_size": "16", "num_layers": "1"})
        cfg = TrainConfig(
            steps=20,
            batch_size=8,
            sample_every=0,
            log_every=1000,
            checkpoint_every=1000,
            snapshot_every=0,
            mixed_precision="no",
        )
        trainer = Trainer(PriorTask(prior, codes), cfg, tmp_path)
    warm_up, measured = 2, 15
    for _ in range(warm_up):  # k-means initialisation reads the device once, on the first step
        assert trainer.train_step(trainer.step) is not None
        trainer.step += 1
    counter = SyncCounter(monkeypatch)
    for _ in range(measured):
        assert trainer.train_step(trainer.step) is not None
        trainer.step += 1
    monkeypatch.undo()
    assert counter.count <= measured, (
        f"{counter.count} host reads in {measured} steps: {counter.where.most_common(3)}"
    )


def test_metrics_are_read_back_at_log_steps(splits, tmp_path):
    trainer = make_trainer(splits, tmp_path, steps=6, log_every=3)
    history = trainer.fit()
    assert [h["step"] for h in history] == [3, 6]
    for h in history:
        assert all(isinstance(v, (int, float)) for v in h.values()), h
        assert {"loss", "psnr", "usage", "perplexity", "dead_codes", "grad_norm", "skipped_steps"} <= set(h)


# --- torch.compile ---------------------------------------------------------------------------------------
def test_compiled_run_saves_the_same_keys_as_an_eager_run(splits, tmp_path, monkeypatch):
    from vqgen.stages.artifacts.models import save_model

    monkeypatch.setenv("VQGEN_COMPILE_BACKEND", "eager")  # traces with dynamo, runs eagerly: seconds on a CPU
    keys = {}
    for compiled in (False, True):
        AcceleratorState._reset_state(True)
        run = tmp_path / f"compile-{compiled}"
        trainer = make_trainer(splits, run, steps=2, compile=compiled)
        if compiled:
            assert isinstance(trainer.model, torch._dynamo.eval_frame.OptimizedModule)
        trainer.fit()
        save_model(trainer.unwrapped(), run / "model")
        with safe_open(str(run / "model" / "model.safetensors"), "pt") as f:
            weights = set(f.keys())
        tensors, _ = ckpt.read_checkpoint(ckpt.list_checkpoints(run)[-1])
        keys[compiled] = (weights, set(tensors))
    assert keys[True] == keys[False]
    assert not any("_orig_mod" in k for part in keys[True] for k in part)


def test_generate_compile_falls_back_with_a_warning(monkeypatch):
    from vqgen.stages.core.build import build_prior
    from vqgen.stages.sampling.sampler import compile_sampling_step

    meta = {
        "vocab_size": 16,
        "grid_height": 3,
        "grid_width": 3,
        "num_classes": 0,
        "tokenizer_fingerprint": "x",
    }
    prior = build_prior("gru", meta, {"embed_dim": "8", "hidden_size": "8", "num_layers": "1"})
    expected = prior.sample(4, generator=torch.Generator().manual_seed(0))
    monkeypatch.setenv("VQGEN_COMPILE_BACKEND", "eager")
    assert compile_sampling_step(prior)
    assert torch.equal(prior.sample(4, generator=torch.Generator().manual_seed(0)), expected)
    del prior.next_logits  # back to the class's step

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    warnings = []
    compile_sampling_step(prior, warn=warnings.append)
    assert torch.equal(prior.sample(4, generator=torch.Generator().manual_seed(0)), expected)
    assert len(warnings) == 1 and "does not compile" in warnings[0] and "\n" not in warnings[0]


# --- precision and distribution from accelerate --------------------------------------------------------------
def test_mixed_precision_unset_reads_accelerate_and_a_flag_overrides(splits, tmp_path, monkeypatch):
    monkeypatch.setenv(
        "ACCELERATE_MIXED_PRECISION", "bf16"
    )  # what `accelerate launch --mixed_precision` sets
    trainer = make_trainer(splits, tmp_path / "a", mixed_precision=None)
    assert trainer.accelerator.mixed_precision == "bf16" and trainer.cfg.mixed_precision == "bf16"
    AcceleratorState._reset_state(True)
    trainer = make_trainer(splits, tmp_path / "b", mixed_precision="no")
    assert trainer.accelerator.mixed_precision == "no" and trainer.cfg.mixed_precision == "no"


@pytest.mark.parametrize(
    "kind, fsdp2, message",
    [
        (DistributedType.FSDP, False, "FSDP version 1 is not supported"),
        (DistributedType.DEEPSPEED, False, "DeepSpeed is not supported"),
        (DistributedType.FSDP, True, "FSDP: the tokenizer trains with DDP"),  # FSDP2 shards priors only
    ],
)
def test_fsdp1_deepspeed_and_a_sharded_tokenizer_are_refused_in_one_line(
    splits, tmp_path, monkeypatch, kind, fsdp2, message
):
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda self: kind))
    monkeypatch.setattr(Accelerator, "is_fsdp2", property(lambda self: fsdp2))
    with pytest.raises(UserError, match=message) as e:
        make_trainer(splits, tmp_path)
    assert "\n" not in str(e.value)


# --- --device ------------------------------------------------------------------------------------------------
def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert check_device_name(None) == "auto" and check_device_name("cuda:1") == "cuda:1"
    with pytest.raises(UserError, match="must be cpu, cuda, cuda:N, mps or auto"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type in ("cpu", "mps")
    for name in ("cuda", "cuda:0"):
        with pytest.raises(UserError, match="no CUDA device is available here"):
            resolve_device(name)


def cli(*args: str) -> int:
    """`vqgen ARGS` in this process (faster than a subprocess); returns the exit code."""
    from vqgen.cli import main

    argv, sys.argv = sys.argv, ["vqgen", *args]
    AcceleratorState._reset_state(True)
    try:
        main()
        return 0
    except SystemExit as exc:
        return exc.code or 0
    finally:
        sys.argv = argv


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, image_folder):
    """A tokenizer and a gru prior, 3 steps each, trained with --device cpu through the CLI."""
    from conftest import TINY_TOKENIZER_FLAGS

    run = tmp_path_factory.mktemp("device") / "run"
    code = cli(
        "tokenize",
        "--run",
        str(run),
        "--dataset",
        str(image_folder),
        *TINY_TOKENIZER_FLAGS,
        "--steps",
        "3",
        "--device",
        "cpu",
    )
    assert code == 0
    code = cli(
        "train-prior",
        "--prior",
        "gru",
        "--codes",
        str(run / "codes"),
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--sample-every",
        "0",
        "--prior-opt",
        "embed_dim=16",
        "--prior-opt",
        "hidden_size=16",
        "--device",
        "cpu",
    )
    assert code == 0
    return run


def test_device_cpu_on_every_command(tiny_run, tmp_path):
    saved = json.loads((tiny_run / "run_config.json").read_text())
    assert (
        saved["train"]["device"] == "cpu" and saved["train"]["mixed_precision"] == "no"
    )  # resolved, not null
    prior_saved = json.loads((tiny_run / "prior-gru" / "run_config.json").read_text())
    assert prior_saved["train"]["device"] == "cpu"
    code = cli(
        "generate",
        "--prior",
        str(tiny_run / "prior-gru"),
        "--n",
        "4",
        "--label",
        "3",
        "--out",
        str(tmp_path / "g.png"),
        "--device",
        "cpu",
    )
    assert code == 0 and (tmp_path / "g.png").is_file()
    code = cli(
        "push", str(tiny_run), "--repo-id", "me/tiny", "--dry-run", str(tmp_path / "pub"), "--device", "cpu"
    )
    assert code == 0 and (tmp_path / "pub" / "samples.png").is_file()


def test_evaluate_device_cpu(tiny_run):
    from vqgen.stages.commands.evaluate import run_evaluate
    from vqgen.stages.evaluation.settings import EvaluateConfig

    cfg = EvaluateConfig(
        run_dir=str(tiny_run),
        n_samples=20,
        features="classifier",
        device="cpu",
        classifier_epochs=1,
        classifier_width=4,
        batch_size=50,
    )
    run_evaluate(cfg, log=lambda line: None)
    assert '"device": "cpu"' in (tiny_run / "eval" / "metrics.json").read_text()


@pytest.mark.parametrize("command", ["tokenize", "train-prior", "generate", "evaluate", "push"])
def test_device_cuda_without_cuda_is_one_line(tiny_run, tmp_path, command, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = {
        "tokenize": ["tokenize", "--run", str(tmp_path / "new")],
        "train-prior": ["train-prior", "--codes", str(tiny_run / "codes"), "--out", str(tmp_path / "p")],
        "generate": ["generate", "--prior", str(tiny_run / "prior-gru"), "--out", str(tmp_path / "g.png")],
        "evaluate": ["evaluate", "--run", str(tiny_run), "--overwrite"],
        "push": ["push", str(tiny_run), "--repo-id", "me/tiny", "--dry-run", str(tmp_path / "pub")],
    }[command]
    capsys.readouterr()
    code = cli(*args, "--device", "cuda")
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "--device cuda" in lines[0] and "no CUDA device" in lines[0]
    assert (
        not (tmp_path / "new").exists() and not (tmp_path / "p").exists() and not (tmp_path / "pub").exists()
    )


def test_device_cuda_refusal_from_the_command_line(tmp_path):
    """The same refusal as a user meets it, in a subprocess (here CUDA is hidden from it)."""
    result = run_cli(
        "tokenize", "--run", str(tmp_path / "r"), "--device", "cuda", env={"CUDA_VISIBLE_DEVICES": ""}
    )
    assert_user_error(result, "--device cuda", "no CUDA device")
