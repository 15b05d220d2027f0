"""The command line's running and reporting: user mistakes as one line and exit code 2, the registry listings,
and the end of a training command's summary line."""

import typer


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
        from vqgen.stages.core.errors import environment_error
        from vqgen.stages.training.data_order import worker_died

        if environment_error(exc) is not None:  # a full disk met by a library that raises its own type
            typer.echo(f"error: {environment_error(exc)}", err=True)
            sys.exit(2)
        # torch raises a dead DataLoader worker from its SIGCHLD handler wherever the main process is: also
        # outside the training loop that turns it into this line (while it closes the feed, say)
        died = worker_died(exc, workers=False)
        if died is not None:
            typer.echo(f"error: {died}", err=True)
            sys.exit(2)
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


def prior_training_note(name: str) -> str:
    """`  (trains with epochs=56.0, weight_decay=0.1)`: the training defaults prior `name` declares as its own; ''
    when none, or when it does not load (`vqgen priors` lists it all the same)."""
    from vqgen.stages.core.build import prior_config_class
    from vqgen.stages.core.registry import PRIORS

    try:
        own = prior_config_class(PRIORS.get(name)).training
    except Exception:
        return ""
    return f"  (trains with {', '.join(f'{k}={v}' for k, v in own.items())})" if own else ""


def listing(kind: str) -> str:
    """The text of `vqgen priors | plugins | quantizers | tokenizers`: every entry of a registry and where it comes
    from; tokenizers with each architecture's and preset's parameters and FLOPs per image."""
    from vqgen.stages.core import registry

    if kind != "tokenizer":
        entries = getattr(
            registry, {"prior": "PRIORS", "plugin": "PLUGINS", "quantizer": "QUANTIZERS"}[kind]
        ).entries()
        lines = [f"{e.name:<14} {e.source:<36} {e.target}" for e in entries]
        if kind == "prior":  # the training defaults a prior declares over train-prior's shared ones
            lines = [line + prior_training_note(e.name) for line, e in zip(lines, entries)]
        return "\n".join(lines)
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


def format_listing() -> str:
    """The text of `vqgen formats`: every import format (`vqgen import`) and export format (`vqgen export`), each
    with where it comes from."""
    from vqgen.stages.interop.base import EXPORT_FORMATS, IMPORT_FORMATS

    lines = []
    for verb, registry in (("import", IMPORT_FORMATS), ("export", EXPORT_FORMATS)):
        lines += [f"{verb:<7} {e.name:<14} {e.source:<36} {e.target}" for e in registry.entries()]
    return "\n".join(lines)


def size_listing(vocab_size: int, grid: int, num_classes: int) -> str:
    """The text of `vqgen priors --sizes`: every size preset of every prior that has them (`train-prior --size`),
    with its parameters and forward FLOPs per token at this vocabulary, grid and number of classes, counted on
    fake tensors (priors.base.count_size: nothing allocated)."""
    import typing

    from vqgen.priors.base import count_size
    from vqgen.stages.core import registry

    lines = [
        f"{'prior':<12} {'size':<5} {'layers':>6} {'heads':>5} {'width':>6} {'params':>9} {'GFLOPs/token':>12}",
    ]
    for entry in registry.PRIORS.entries():
        cls = registry.PRIORS.get(entry.name)
        config_class = typing.get_type_hints(cls.__init__)["config"]
        for size, fields_ in config_class.sizes().items():
            config = config_class(
                vocab_size=vocab_size, grid_height=grid, grid_width=grid, num_classes=num_classes, **fields_
            )
            params, flops = count_size(cls, config)
            lines.append(
                f"{entry.name:<12} {size:<5} {fields_.get('num_layers', '-'):>6} {fields_.get('num_heads', '-'):>5} "
                f"{fields_.get('hidden_size', '-'):>6} {params / 1e6:>8.1f}M {flops / 1e9:>12.3f}"
            )
    lines.append(
        f"at {vocab_size} codes, a {grid}x{grid} grid and {num_classes} classes; forward FLOPs (training: about 3x); "
        "`train-prior --prior NAME --size SIZE`"
    )
    return "\n".join(lines)


def rollback_note(results: dict) -> str:
    """The end of a training command's summary line: how many steps were rolled back for a non-finite loss."""
    n = results.get("nonfinite_rolled_back") or 0
    return f"; warning: {n} step(s) had a non-finite loss and were rolled back" if n else ""
