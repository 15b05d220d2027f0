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
    "model_ema_decay": (
        float,
        "Keep an exponential moving average of the weights with this decay (0 = off); the saved model is it.",
        0.0,
    ),
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
    "log_with": (Optional[str], "accelerate tracker: tensorboard, wandb or trackio.", None),
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
# Training options of `train-prior` only: stage two has a held-out split to score during training.
PRIOR_TRAIN_OPTIONS: dict[str, tuple[type, str, float | None]] = {
    "eval_every": (
        int,
        "Measure the held-out NLL every N steps (metrics.json's history; a warning when the prior overfits). "
        "0: only at the end.",
        0,
    ),
}
# Largest sane values: beyond them a run is a typo (a learning rate of 1e5) or cannot be allocated.
TRAIN_MAXIMA = {
    "steps": 10**9,
    "batch_size": 2**20,
    "lr": 1.0,
    "weight_decay": 10.0,
    "grad_accum": 2**16,
    "model_ema_decay": 0.99999,
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


def training_options(defaults, stage_options: dict | None = None):
    """Give a command the shared training options (TRAIN_OPTIONS, plus its stage's own `stage_options`) with the
    stage's `defaults` (a TrainConfig); the command receives them as one `train: TrainConfig`."""
    options = {**TRAIN_OPTIONS, **(stage_options or {})}

    def decorate(command):
        signature = inspect.signature(command)
        extra = []
        for name, (kind, help_text, low) in options.items():
            limits = {"min": low, "max": TRAIN_MAXIMA.get(name)} if low is not None else {}
            flag = typer.Option(f"--{name.replace('_', '-')}", help=help_text, **limits)
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
            values = {name: kwargs.pop(name) for name in options}
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


def run_app(app: typer.Typer) -> None:
    """Run the CLI: user mistakes become one line on stderr and exit code 2, a stopped training run exit code 1,
    an interruption exit code 130 with a word on what was kept; a traceback only for a bug of ours."""
    import sys

    from vqgen.stages.core.errors import TrainingStopped, UserError, redact

    interrupted = "interrupted: finished work (checkpoints, images) is kept; rerun the command with --resume"
    try:
        code = app(standalone_mode=False)
    except UserError as exc:
        typer.echo(f"error: {redact(str(exc))}", err=True)
        sys.exit(2)
    except TrainingStopped as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo(interrupted, err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except OSError as exc:  # a full disk or a read-only folder: one line; any other OSError is a bug of ours
        from vqgen.stages.core.errors import environment_error

        message = environment_error(exc)
        if message is None:
            raise
        typer.echo(f"error: {message}", err=True)
        sys.exit(2)
    except Exception as exc:
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click: bad option names or values
            ctx = getattr(exc, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
            sys.exit(exc.exit_code)
        raise
    if code == 130:  # typer answers Ctrl-C (KeyboardInterrupt) with this exit code instead of raising
        typer.echo(interrupted, err=True)
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)


def listing(kind: str) -> str:
    """The text of `vqgen priors | plugins | quantizers | tokenizers`: every entry of a registry and where it comes
    from; tokenizers with each architecture's and preset's parameters and FLOPs per image."""
    from vqgen.stages.core import registry

    if kind != "tokenizer":
        entries = getattr(
            registry, {"prior": "PRIORS", "plugin": "PLUGINS", "quantizer": "QUANTIZERS"}[kind]
        ).entries()
        return "\n".join(f"{e.name:<14} {e.source:<36} {e.target}" for e in entries)
    from vqgen.stages.tokenizer.base import count_size

    sources = {e.name: e for e in registry.TOKENIZERS.entries()}
    lines = [
        f"{'name':<14} {'arch':<8} {'image':>7} {'grid':>6} {'codes':>7} {'params':>8} {'GFLOPs':>8}  source"
    ]
    for p in registry.tokenizer_presets():
        c, entry = p.config, sources[p.arch]
        try:
            params, flops = count_size(registry.TOKENIZERS.get(p.arch), c)
            size = f"{params / 1e6:>7.2f}M {flops / 1e9:>8.2f}"
        except Exception:  # a third-party model that cannot be built on the meta device: list it all the same
            size = f"{'?':>8} {'?':>8}"
        lines.append(
            f"{p.name:<14} {p.arch:<8} {c.image_size:>4} px {c.grid_size:>3}^2 {c.quantizer.codebook_size:>7} "
            f"{size}  {entry.source} ({entry.target})"
        )
    return "\n".join(lines)


# --- the options of `tokenize`'s model and data (None: the architecture preset's value) ------------------------
class CodebookUpdate(str, Enum):
    ema = "ema"
    grad = "grad"


class CodebookInit(str, Enum):
    kmeans = "kmeans"
    sample = "sample"
    random = "random"


DatasetOption = Annotated[
    str, typer.Option(help="'mnist5k' (embedded), a folder of images, or a Hub dataset id.")
]

SplitOption = Annotated[str, typer.Option(help="Hub datasets: training split.")]

HeldoutSplitOption = Annotated[
    Optional[str], typer.Option(help="Hub datasets: held-out split (default: hold out 10%).")
]

ImageColumnOption = Annotated[str, typer.Option(help="Hub datasets: image column.")]

LabelColumnOption = Annotated[str, typer.Option(help="Hub datasets: label column ('' for none).")]

RevisionOption = Annotated[Optional[str], typer.Option(help="Hub datasets: branch, tag or commit.")]

ArchOption = Annotated[
    str,
    typer.Option(
        help="Tokenizer architecture or size preset: vqvae, vqgan, vqgan-f8, vqgan-f16, ... "
        "(`cli.py tokenizers` lists them)."
    ),
]

QuantizerOption = Annotated[
    Optional[str],
    typer.Option(help="Quantizer: vq (codebook), fsq (finite scalar), lfq (lookup-free binary)."),
]

ImageSizeOption = Annotated[
    Optional[int],
    typer.Option(
        min=4, max=4096, help="Images are fitted and padded to this square size [default: the arch's]."
    ),
]

ChannelsOption = Annotated[
    Optional[int], typer.Option(min=1, max=3, help="1 = grey, 3 = RGB [default: the arch's].")
]

ResizeOption = Annotated[
    Optional[str],
    typer.Option(
        help="center-crop (resize the short side, crop the centre) or pad (fit and pad with black); "
        "default: center-crop for RGB folders and Hub data, pad for grey images and mnist5k."
    ),
]

RandomFlipOption = Annotated[
    bool, typer.Option("--random-flip", help="Augment training batches with left-right flips.")
]

RandomCropOption = Annotated[
    bool,
    typer.Option("--random-crop", help="Augment training batches with random crops (reflect-pad S/8)."),
]

StreamingOption = Annotated[
    bool,
    typer.Option(
        "--streaming", help="Train straight from a Hub dataset or local WebDataset .tar / parquet files."
    ),
]

ShuffleBufferOption = Annotated[
    int, typer.Option(min=1, max=10**7, help="--streaming: samples per shuffled block.")
]

HeldoutSizeOption = Annotated[
    int,
    typer.Option(
        min=1,
        max=10**7,
        help="--streaming: held-out samples (first of --heldout-split, else of the stream).",
    ),
]

CodebookSizeOption = Annotated[Optional[int], typer.Option(min=2, max=2**20, help="Number of codes (vq).")]

CodeDimOption = Annotated[
    Optional[int],
    typer.Option(min=1, max=4096, help="Codebook vector size (vq); bits per code (lfq: K = 2**code_dim)."),
]

FsqLevelsOption = Annotated[
    Optional[str],
    typer.Option(help="fsq: values per dimension, comma-separated, e.g. 8,5,5,5 (K = product)."),
]

EntropyWeightOption = Annotated[
    Optional[float], typer.Option(min=0.0, max=100.0, help="lfq: weight of the entropy penalty.")
]

DownsampleOption = Annotated[
    Optional[int],
    typer.Option(
        min=1,
        max=256,
        help="vqvae: spatial downsampling factor (a power of two); default 4 up to 64 px, 8 up to 128, 16 above.",
    ),
]

BaseChannelsOption = Annotated[Optional[int], typer.Option(min=1, max=4096, help="Width of the first level.")]

ResBlocksOption = Annotated[
    Optional[int],
    typer.Option(min=0, max=64, help="Residual blocks (vqvae: on the code grid; vqgan: per level)."),
]

CodebookUpdateOption = Annotated[
    Optional[CodebookUpdate], typer.Option(help="vq: EMA or gradient codebook updates.")
]

CodebookInitOption = Annotated[Optional[CodebookInit], typer.Option(help="vq: codebook initialisation.")]

CosineOption = Annotated[
    Optional[bool], typer.Option("--cosine/--no-cosine", help="vq: l2-normalised codes.")
]

BetaOption = Annotated[Optional[float], typer.Option(min=0.0, max=100.0, help="Commitment loss weight.")]


def rollback_note(results: dict) -> str:
    """The end of a training command's summary line: how many steps were rolled back for a non-finite loss."""
    n = results.get("nonfinite_rolled_back") or 0
    return f"; warning: {n} step(s) had a non-finite loss and were rolled back" if n else ""
