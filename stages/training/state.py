"""What a checkpoint holds of a trainer, and how a trainer is put back in that state: the model, the optimizer,
every plugin's state (plain torch state, flattened), the RNG states, the step and learning-rate scale, the
non-finite and skipped-step counts, the data digest, the loss scaler, a stream's position and the weight average."""

from dataclasses import asdict
from pathlib import Path

import torch
from accelerate.utils import set_seed
from vqgen.stages.core.errors import UserError, first_line
from vqgen.stages.training import checkpoint as ckpt
from vqgen.stages.training import sharding


def checkpoint_state(trainer, data_state: list | None) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON metadata) of the trainer's state, as `ckpt.write_checkpoint` saves them. Sharded, every
    process calls it (the model, optimizer and weight average are gathered), and process 0's result is whole."""
    model = trainer.unwrapped()
    # full tensors, the optimizer's state keyed by parameter name (stages/training/sharding.py)
    if trainer.sharded:
        model_state = sharding.full_model_state(model)
        optimizer_state = sharding.full_optimizer_state(model, trainer.optimizer)
    else:
        model_state, optimizer_state = model.state_dict(), trainer.optimizer.state_dict()
    tensors = ckpt.add_prefix(model_state, "model")
    opt_tensors, opt_meta = ckpt.flatten_state(optimizer_state)
    rng_tensors, rng_meta = ckpt.rng_state()
    tensors.update(ckpt.add_prefix(opt_tensors, "optim"))
    tensors.update(ckpt.add_prefix(rng_tensors, "rng"))
    if trainer.ema is not None:
        ema_tensors, ema_updates = trainer.ema.state_dict()
        ema_tensors = {k: sharding.gather(v).cpu() for k, v in ema_tensors.items()}
        tensors.update(ckpt.add_prefix(ema_tensors, "ema"))
    plugin_meta = {}
    for plugin in trainer.plugins:
        p_tensors, p_meta = ckpt.flatten_state(plugin.state_dict())
        tensors.update(ckpt.add_prefix(p_tensors, f"plugin.{plugin.name}"))
        plugin_meta[plugin.name] = p_meta
    meta = {
        "lr_scale": trainer.lr_scale,
        "optimizer": opt_meta,
        "rng": rng_meta,
        "plugins": plugin_meta,
        "nonfinite_total": trainer.nonfinite_total,
        "train_config": asdict(trainer.cfg),
        "data_digest": trainer.data_digest,
        "skipped_steps": trainer.skipped_steps,
        "grad_scaler": trainer.accelerator.scaler.state_dict()
        if trainer.accelerator.scaler is not None
        else None,
        "num_processes": trainer.accelerator.num_processes,
        "engine": trainer.engine,
    }
    if data_state is not None:
        meta["data_state"] = data_state
    if trainer.best is not None:
        best_tensors, meta["best"] = trainer.best.state_dict()
        tensors.update(ckpt.add_prefix(best_tensors, "best"))
        meta["stopped_early"] = trainer.stopped_early
    if trainer.ema is not None:
        meta["ema_updates"] = ema_updates
    return tensors, meta


def restore_state(trainer, tensors: dict[str, torch.Tensor], meta: dict, path: Path) -> None:
    """Put the trainer back in the state `checkpoint_state` described (read from the checkpoint at `path`). A
    checkpoint that does not fit the model or the training settings of run_config.json (edited by hand) is one
    line."""
    check_engine(meta, trainer.engine, path)
    # no weight average before the settings: the likelier cause, named
    if trainer.ema is not None and "ema_updates" not in meta:
        raise UserError(
            f"--resume: {path} holds no weight average; the run was trained without --model-ema-decay"
        )
    _check_same_training(trainer.cfg, meta.get("train_config") or {}, path)
    model_state = ckpt.split_prefix(tensors, "model")
    try:
        optimizer_state = ckpt.unflatten_state(ckpt.split_prefix(tensors, "optim"), meta["optimizer"])
        if trainer.sharded:
            sharding.load_full_state(trainer.unwrapped(), trainer.optimizer, model_state, optimizer_state)
        else:
            trainer.unwrapped().load_state_dict(model_state)
            trainer.optimizer.load_state_dict(optimizer_state)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(
            f"--resume: {path} does not fit the model that run_config.json describes (edited by hand, or started "
            f"by a vqgen whose model defaults differ?): {first_line(exc)}; put run_config.json back as the run "
            "wrote it, or start a new run"
        ) from None
    for plugin in trainer.plugins:
        skeleton = meta["plugins"].get(plugin.name, {})  # {}: the run was started without this plugin
        plugin.load_state_dict(
            ckpt.unflatten_state(ckpt.split_prefix(tensors, f"plugin.{plugin.name}"), skeleton)
        )
    if trainer.accelerator.process_index == 0:
        ckpt.set_rng_state(ckpt.split_prefix(tensors, "rng"), meta["rng"])
    else:
        set_seed(trainer.cfg.seed + trainer.accelerator.process_index + meta["step"])
    if trainer.ema is not None:
        shadow = ckpt.split_prefix(tensors, "ema")
        own = trainer.ema.state_dict()[0]
        shadow = {k: sharding.shard_like(v, own[k]) if k in own else v for k, v in shadow.items()}
        trainer.ema.load_state_dict(shadow, meta["ema_updates"])
    trainer.step, trainer.lr_scale = meta["step"], meta["lr_scale"]
    trainer.nonfinite_total = meta.get("nonfinite_total", 0)
    trainer.data_digest = meta.get("data_digest", "")
    trainer.skipped_steps = meta.get("skipped_steps", 0)
    if trainer.accelerator.scaler is not None and meta.get("grad_scaler"):
        trainer.accelerator.scaler.load_state_dict(meta["grad_scaler"])
    # a run checkpointed before best weights were kept: none yet
    if trainer.best is not None and "best" in meta:
        trainer.best.load_state_dict(ckpt.split_prefix(tensors, "best"), meta["best"])
        trainer.stopped_early = meta["stopped_early"]
    if hasattr(trainer.feed, "load_state_dict"):
        if "data_state" not in meta:
            raise UserError(f"--resume: {path} holds no stream position; it was not a --streaming run")
        trainer.feed.load_state_dict(meta["data_state"][trainer.accelerator.process_index])


def _check_same_training(cfg, saved: dict, path: Path) -> None:
    """The settings the checkpoint was trained with against those run_config.json gives now: a difference in one
    that changes what is computed (not SAFE_ON_RESUME) means the file was edited by hand."""
    from vqgen.stages.core.runconfig import SAFE_ON_RESUME

    now = asdict(cfg)
    for name in sorted(set(saved) & set(now) - SAFE_ON_RESUME):
        if saved[name] != now[name]:
            raise UserError(
                f"--resume: {path} was trained with {name}={saved[name]!r}, but run_config.json now says "
                f"{now[name]!r} (edited by hand?); put it back, or start a new run"
            )


def check_engine(meta: dict, engine: str, path: Path) -> None:
    """A sharded checkpoint keys the optimizer's state by parameter name, a plain one by number: refuse to mix."""
    was = meta.get("engine", "plain")
    if (was == "plain") != (engine == "plain"):
        how = "with FSDP (--use_fsdp --fsdp_version 2)" if was != "plain" else "without FSDP"
        raise UserError(
            f"--resume: {path} was written by a {'sharded' if was != 'plain' else 'plain'} run; resume it {how}"
        )
