"""From the command line's flags to the commands' typed configs: `--config FILE` as the options' defaults, the
shared training options gathered into one TrainConfig, on `--resume` the run's saved settings (the logic lives
in vqgen.stages.core.runconfig), and `tokenize`'s flags turned into a TokenizeConfig."""

import contextvars
import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from vqgen.command_line.options import COMMA_LISTS, FLAG_OF_FIELD, TRAIN_OPTIONS, Precision
from vqgen.stages.core.errors import UserError

_CONTEXT: contextvars.ContextVar = contextvars.ContextVar("vqgen_cli_context")  # the running command's


def load_config_file(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    """--config FILE: its values become the defaults of the command's options (flags still win); fields
    without an option are kept for `_finish`."""
    if value is None:
        return value
    from vqgen.stages.core.runconfig import file_values, read_config_file

    values = file_values(read_config_file(value), f"--config {value}", Path(value).parent)
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
        "--config",
        is_eager=True,
        callback=load_config_file,
        help="A YAML or JSON file of config fields (flat or nested as run_config.json); flags override it.",
    ),
]


def training_options(defaults, stage_options: dict | None = None):
    """Give a command the shared training options (TRAIN_OPTIONS, plus its stage's own `stage_options`) with the
    stage's `defaults` (a TrainConfig); the command receives them as one `train: TrainConfig`."""
    options = {**TRAIN_OPTIONS, **(stage_options or {})}

    def decorate(command):
        signature = inspect.signature(command)
        extra = []
        for name, (kind, help_text) in options.items():
            low, high = type(defaults).LIMITS.get(name, (None, None))
            limits = {"min": low, "max": high} if low is not None else {}
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


def not_given_from(train, defaults):
    """`train` with every option the running command was not given (on the command line or in --config) taken
    from `defaults`: for defaults that depend on another option, as train-prior's on --prior."""
    ctx = _CONTEXT.get()
    names = [f.name for f in dataclasses.fields(train) if f.name in ctx.params and given(f.name)]
    return dataclasses.replace(defaults, **{name: getattr(train, name) for name in names})


def saved_setting(saved: Path, name: str, default):
    """A field of a run's saved run_config.json (nested or flat), or `default` when there is none."""
    from vqgen.stages.core.runconfig import flat_file, read_config_file

    return flat_file(read_config_file(saved), str(saved)).get(name, default) if saved.is_file() else default


def finish(cfg, saved: Path):
    """The command's config with the --config fields that have no option, and on --resume the run's saved
    settings (`saved`, its run_config.json) with any change checked (vqgen.stages.core.runconfig)."""
    from vqgen.stages.core.runconfig import check_limits, resumed, set_fields

    ctx = _CONTEXT.get()
    file_only = ctx.meta.get("vqgen.config", {})
    cfg = set_fields(cfg, file_only, "--config")
    if cfg.resume:
        field_of = {flag: name for name, flag in FLAG_OF_FIELD.items()}
        named = {field_of.get(p.name, p.name) for p in ctx.command.params if given(p.name)}
        cfg = resumed(cfg, saved, named | set(file_only))
    check_limits(cfg)  # the same ranges whether a value came from a flag, a file or the saved run
    return cfg


def tokenize_config(
    train,
    *,
    run: Path,
    arch: str,
    data,
    model: dict[str, Any],
    quantizer: dict[str, Any],
    tokenizer: str | None,
    plugins: list[str],
    plugin_options: list[str],
    overwrite: bool,
    resume: bool,
    augment: str = "auto",
):
    """The TokenizeConfig that `vqgen tokenize`'s flags ask for: the architecture or preset `arch` with the given
    `model` and `quantizer` fields changed (None: the preset's value; `quantizer["levels"]` as the flag's text),
    and the `data` settings (a DataConfig, its image size and channels taken from the model)."""
    from vqgen.stages.commands.tokenize import TokenizeConfig
    from vqgen.stages.core.build import tokenizer_config
    from vqgen.stages.core.registry import tokenizer_preset
    from vqgen.stages.tokenizer.vqvae import downsample_for

    if resume and not given("arch"):  # the run's own architecture, as every other setting on --resume
        arch = saved_setting(Path(run) / "run_config.json", "arch", arch)
    levels = quantizer.get("levels")
    try:
        quantizer = {
            **quantizer,
            "levels": [int(v) for v in levels.split(",")] if levels is not None else None,
        }
    except ValueError:
        raise UserError(
            f"--fsq-levels takes comma-separated integers such as 8,5,5,5, got {levels!r}"
        ) from None
    kind = quantizer.get("kind")
    if quantizer.get("codebook_size") is not None and (kind or "vq") != "vq":
        raise UserError(
            f"--codebook-size applies to --quantizer vq; {kind} sets its own (fsq: --fsq-levels, lfq: 2**--code-dim)"
        )
    size = model.get("image_size")
    if tokenizer_preset(arch).name == "vqvae" and model.get("downsample") is None and size is not None:
        model = {**model, "downsample": downsample_for(size)}  # a grid that suits the image size
    model_config = tokenizer_config(arch, model, quantizer)
    data = dataclasses.replace(data, image_size=model_config.image_size, channels=model_config.channels)
    return TokenizeConfig(
        run_dir=str(run),
        data=data,
        arch=arch,
        model=model_config,
        train=train,
        tokenizer=tokenizer,
        plugins=plugins,
        plugin_options=plugin_options,
        augment=augment,
        overwrite=overwrite,
        resume=resume,
    )
