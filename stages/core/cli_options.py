"""The command line's shared options, declared once: the training options of `tokenize` and `train-prior`,
`--config FILE`, and what `--resume` keeps (used by vqgen.cli; the logic lives in vqgen.stages.core.runconfig)."""

import contextvars
import dataclasses
import functools
import inspect
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

_CONTEXT: contextvars.ContextVar = contextvars.ContextVar("vqgen_cli_context")  # the running command's


class Precision(str, Enum):
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


Run = Annotated[
    Path, typer.Option("--run", help="Run folder: checkpoints, samples, metrics and outputs go here.")
]
MAX_SEED = 2**32 - 1  # numpy and torch seeds are 32-bit on some paths: one range everywhere
Seed = Annotated[
    int, typer.Option(min=0, max=MAX_SEED, help="Random seed (data order, initialisation, sampling).")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --run.")]
Resume = Annotated[
    bool,
    typer.Option("--resume", help="Continue the run from its newest checkpoint, with its saved settings."),
]
Device = Annotated[
    str,
    typer.Option("--device", help="cpu, cuda, cuda:N, mps or auto (a GPU when there is one, else the CPU)."),
]
PluginNames = Annotated[
    list[str], typer.Option("--plugin", help="Enable a training plugin (repeatable), e.g. gan.")
]
PluginOpts = Annotated[
    list[str], typer.Option("--plugin-opt", help="Plugin option NAME.OPTION=VALUE (repeatable).")
]

# The training options `tokenize` and `train-prior` share, declared once: (type, help, smallest value).
# Their defaults are each stage's (vqgen.stages.training.config); every other TrainConfig field is set with --config.
TRAIN_OPTIONS: dict[str, tuple[type, str, float | None]] = {
    "steps": (int, "Optimizer steps.", 1),
    "batch_size": (int, "Examples per process per micro-batch.", 1),
    "lr": (float, "Peak learning rate (AdamW, warm-up then cosine).", 0.0),
    "weight_decay": (float, "AdamW weight decay.", 0.0),
    "grad_accum": (int, "Micro-batches per optimizer step.", 1),
    "mixed_precision": (
        Optional[Precision],
        "Mixed precision; default: accelerate's own setting (`accelerate config`, `accelerate launch "
        "--mixed_precision`), else no.",
        None,
    ),
    "device": (str, "cpu, cuda, cuda:N, mps or auto (accelerate's choice: GPU when there is one).", None),
    "compile": (bool, "torch.compile the model ($VQGEN_COMPILE_BACKEND, default inductor).", None),
    "seed": (int, "Random seed (data order, initialisation, sampling).", 0),
    "sample_every": (int, "Save a sample grid every N steps (0: only at the end).", 0),
    "checkpoint_every": (int, "Save a checkpoint every N steps.", 1),
    "log_with": (Optional[str], "accelerate tracker: tensorboard or wandb.", None),
    "record_data_order": (bool, "Debug: write every step's dataset indices to RUN/data_order.txt.", None),
    "max_nonfinite": (
        int,
        "Stop after this many non-finite losses in a row (each is skipped, rolled back).",
        1,
    ),
    "num_workers": (
        Optional[int],
        "DataLoader worker processes reading image batches (default: min(4, cores - 1); 0 on 2 cores).",
        None,
    ),
}
# Largest sane values: beyond them a run is a typo (a learning rate of 1e5) or cannot be allocated.
TRAIN_MAXIMA = {
    "steps": 10**9,
    "batch_size": 2**20,
    "lr": 1.0,
    "weight_decay": 10.0,
    "grad_accum": 2**16,
    "seed": MAX_SEED,
}

# Config field names whose command-line option is spelled otherwise.
FLAG_OF_FIELD = {
    "run_dir": "run", "num_res_blocks": "res_blocks", "update": "codebook_update", "init": "codebook_init",
    "plugins": "plugin", "plugin_options": "plugin_opt", "prior_options": "prior_opt", "kind": "quantizer",
    "levels": "fsq_levels",
}  # fmt: skip
COMMA_LISTS = {"fsq_levels"}  # options that take a list as one comma-separated value: --fsq-levels 8,5,5,5


def load_config_file(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    """--config FILE: its values become the defaults of the command's options (flags still win); fields
    without an option are kept for `_finish`."""
    if value is None:
        return value
    from vqgen.stages.core.runconfig import flat_file, read_config_file

    values = flat_file(read_config_file(value), f"--config {value}")
    params = {p.name for p in ctx.command.params}
    defaults = {}
    for name, v in values.items():
        flag = FLAG_OF_FIELD.get(name, name)
        if flag in params:
            defaults[flag] = [f"{k}={x}" for k, x in v.items()] if isinstance(v, dict) else v
            if flag in COMMA_LISTS and isinstance(v, list):
                defaults[flag] = ",".join(map(str, v))
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["vqgen.config"] = {k: v for k, v in values.items() if FLAG_OF_FIELD.get(k, k) not in params}
    return value


ConfigFile = Annotated[
    Optional[Path],
    typer.Option(
        "--config", is_eager=True, callback=load_config_file,
        help="A YAML or JSON file of config fields (flat or nested as run_config.json); flags override it.",
    ),
]  # fmt: skip


def training_options(defaults):
    """Give a command the shared training options (TRAIN_OPTIONS) with the stage's `defaults` (a TrainConfig);
    the command receives them as one `train: TrainConfig`."""

    def decorate(command):
        signature = inspect.signature(command)
        extra = []
        for name, (kind, help_text, low) in TRAIN_OPTIONS.items():
            flag = (
                typer.Option(f"--{name.replace('_', '-')}", help=help_text, min=low)
                if low is not None
                else (typer.Option(f"--{name.replace('_', '-')}", help=help_text))
            )
            default = getattr(defaults, name)
            default = Precision(default) if kind is Optional[Precision] and default is not None else default
            extra.append(
                inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, flag]
                )
            )

        @functools.wraps(command)
        def with_train(**kwargs):
            _CONTEXT.set(kwargs.pop("vqgen_context"))
            values = {name: kwargs.pop(name) for name in TRAIN_OPTIONS}
            precision = values["mixed_precision"]
            values["mixed_precision"] = precision.value if precision is not None else None
            return command(**kwargs, train=dataclasses.replace(defaults, **values))

        params = [p for p in signature.parameters.values() if p.name != "train"]
        extra.append(
            inspect.Parameter("vqgen_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        )
        with_train.__signature__ = signature.replace(parameters=params + extra)
        with_train.__annotations__ = {**{p.name: p.annotation for p in params + extra}}
        return with_train

    return decorate


def given(name: str) -> bool:
    """Whether the running command's option `name` was given (on the command line or in --config)."""
    ctx = _CONTEXT.get()
    return getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "DEFAULT_MAP")


def saved_setting(saved: Path, name: str, default):
    """A field of a run's saved run_config.json (nested or flat), or `default` when there is none."""
    from vqgen.stages.core.runconfig import flat_file, read_config_file

    return flat_file(read_config_file(saved), str(saved)).get(name, default) if saved.is_file() else default


def finish(cfg, saved: Path):
    """The command's config with the --config fields that have no option, and on --resume the run's saved
    settings (`saved`, its run_config.json) with any change checked (vqgen.stages.core.runconfig)."""
    from vqgen.stages.core.runconfig import resumed, set_fields

    ctx = _CONTEXT.get()
    file_only = ctx.meta.get("vqgen.config", {})
    cfg = set_fields(cfg, file_only, "--config")
    if not cfg.resume:
        return cfg
    field_of = {flag: name for name, flag in FLAG_OF_FIELD.items()}
    named = {field_of.get(p.name, p.name) for p in ctx.command.params if given(p.name)}
    return resumed(cfg, saved, named | set(file_only))
