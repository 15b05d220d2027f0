"""vqgen command line: thin typed commands that parse options and delegate to vqgen.stages.

    python cli.py tokenize --run runs/demo            # stage one on the embedded MNIST digits
    python cli.py train-prior --prior gru --codes runs/demo/codes
    python cli.py generate --prior runs/demo/prior-gru --label 7
    python cli.py priors | plugins | tokenizers | quantizers   # what is installed, and from where

A user's mistake prints one line and exits with code 2; an interrupted run keeps its checkpoint.
"""

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


def _run_from_clone() -> None:
    """`python cli.py ...` in a clone: load this folder as the package `vqgen` (and only under that name: the
    folder leaves sys.path, so `stages` or `priors` never shadow a user's modules), then run its CLI."""
    import importlib.util

    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    spec = importlib.util.spec_from_file_location(
        "vqgen", here / "__init__.py", submodule_search_locations=[str(here)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["vqgen"] = package
    spec.loader.exec_module(package)
    from vqgen.cli import main as package_main

    package_main()
    raise SystemExit(0)


if __name__ == "__main__" and not __package__:
    _run_from_clone()

from vqgen.stages.core.cli_options import (  # noqa: E402
    ConfigFile,
    Device,
    Overwrite,
    PluginNames,
    PluginOpts,
    Resume,
    Run,
    Seed,
    finish,
    training_options,
)
from vqgen.stages.core.errors import UserError, redact  # noqa: E402
from vqgen.stages.sampling.config import DEFAULT_CFG_SCALE  # noqa: E402
from vqgen.stages.training.config import PRIOR_TRAINING, TOKENIZER_TRAINING  # noqa: E402

app = typer.Typer(
    help="vqgen: an image tokenizer (VQ-VAE, VQGAN) and swappable autoregressive priors, in one pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class CodebookUpdate(str, Enum):
    ema = "ema"
    grad = "grad"


class CodebookInit(str, Enum):
    kmeans = "kmeans"
    sample = "sample"
    random = "random"


@app.command()
@training_options(TOKENIZER_TRAINING)
def tokenize(
    train,
    config: ConfigFile = None,
    run: Run = Path("runs/demo"),
    dataset: Annotated[
        str, typer.Option(help="'mnist5k' (embedded), a folder of images, or a Hub dataset id.")
    ] = "mnist5k",
    split: Annotated[str, typer.Option(help="Hub datasets: training split.")] = "train",
    heldout_split: Annotated[
        Optional[str], typer.Option(help="Hub datasets: held-out split (default: hold out 10%).")
    ] = None,
    image_column: Annotated[str, typer.Option(help="Hub datasets: image column.")] = "image",
    label_column: Annotated[str, typer.Option(help="Hub datasets: label column ('' for none).")] = "label",
    revision: Annotated[Optional[str], typer.Option(help="Hub datasets: branch, tag or commit.")] = None,
    arch: Annotated[
        str,
        typer.Option(
            help="Tokenizer architecture or size preset: vqvae, vqgan, vqgan-f8, vqgan-f16, ... "
            "(`cli.py tokenizers` lists them)."
        ),
    ] = "vqvae",
    quantizer: Annotated[
        Optional[str],
        typer.Option(help="Quantizer: vq (codebook), fsq (finite scalar), lfq (lookup-free binary)."),
    ] = None,
    image_size: Annotated[
        Optional[int],
        typer.Option(
            min=4, max=4096, help="Images are fitted and padded to this square size [default: the arch's]."
        ),
    ] = None,
    channels: Annotated[
        Optional[int], typer.Option(min=1, max=3, help="1 = grey, 3 = RGB [default: the arch's].")
    ] = None,
    resize: Annotated[
        Optional[str],
        typer.Option(
            help="center-crop (resize the short side, crop the centre) or pad (fit and pad with black); "
            "default: center-crop for RGB folders and Hub data, pad for grey images and mnist5k."
        ),
    ] = None,
    random_flip: Annotated[
        bool, typer.Option("--random-flip", help="Augment training batches with left-right flips.")
    ] = False,
    random_crop: Annotated[
        bool,
        typer.Option("--random-crop", help="Augment training batches with random crops (reflect-pad S/8)."),
    ] = False,
    streaming: Annotated[
        bool,
        typer.Option(
            "--streaming", help="Train straight from a Hub dataset or local WebDataset .tar / parquet files."
        ),
    ] = False,
    shuffle_buffer: Annotated[
        int, typer.Option(min=1, max=10**7, help="--streaming: samples per shuffled block.")
    ] = 1000,
    heldout_size: Annotated[
        int,
        typer.Option(
            min=1,
            max=10**7,
            help="--streaming: held-out samples (first of --heldout-split, else of the stream).",
        ),
    ] = 500,
    tokenizer: Annotated[
        Optional[str], typer.Option(help="Use this trained tokenizer (folder or Hub id); no training.")
    ] = None,
    codebook_size: Annotated[
        Optional[int], typer.Option(min=2, max=2**20, help="Number of codes (vq).")
    ] = None,
    code_dim: Annotated[
        Optional[int],
        typer.Option(
            min=1, max=4096, help="Codebook vector size (vq); bits per code (lfq: K = 2**code_dim)."
        ),
    ] = None,
    fsq_levels: Annotated[
        Optional[str],
        typer.Option(help="fsq: values per dimension, comma-separated, e.g. 8,5,5,5 (K = product)."),
    ] = None,
    entropy_weight: Annotated[
        Optional[float], typer.Option(min=0.0, max=100.0, help="lfq: weight of the entropy penalty.")
    ] = None,
    downsample: Annotated[
        Optional[int],
        typer.Option(min=1, max=256, help="vqvae: spatial downsampling factor (a power of two)."),
    ] = None,
    base_channels: Annotated[
        Optional[int], typer.Option(min=1, max=4096, help="Width of the first level.")
    ] = None,
    res_blocks: Annotated[
        Optional[int],
        typer.Option(min=0, max=64, help="Residual blocks (vqvae: on the code grid; vqgan: per level)."),
    ] = None,
    codebook_update: Annotated[
        Optional[CodebookUpdate], typer.Option(help="vq: EMA or gradient codebook updates.")
    ] = None,
    codebook_init: Annotated[
        Optional[CodebookInit], typer.Option(help="vq: codebook initialisation.")
    ] = None,
    cosine: Annotated[
        Optional[bool], typer.Option("--cosine/--no-cosine", help="vq: l2-normalised codes.")
    ] = None,
    beta: Annotated[Optional[float], typer.Option(min=0.0, max=100.0, help="Commitment loss weight.")] = None,
    plugin: PluginNames = [],  # noqa: B006
    plugin_opt: PluginOpts = [],  # noqa: B006
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Stage one: train the tokenizer, evaluate it, and encode the dataset into code grids."""
    from vqgen.stages.commands.tokenize import TokenizeConfig, run_tokenize, tokenizer_config
    from vqgen.stages.core.cli_options import given, saved_setting
    from vqgen.stages.data.images import DataConfig

    if resume and not given("arch"):  # the run's own architecture, as every other setting on --resume
        arch = saved_setting(run / "run_config.json", "arch", arch)
    try:
        levels = [int(v) for v in fsq_levels.split(",")] if fsq_levels is not None else None
    except ValueError:
        raise UserError(
            f"--fsq-levels takes comma-separated integers such as 8,5,5,5, got {fsq_levels!r}"
        ) from None
    kind = quantizer
    if codebook_size is not None and (kind or "vq") != "vq":
        raise UserError(
            f"--codebook-size applies to --quantizer vq; {kind} sets its own (fsq: --fsq-levels, lfq: 2**--code-dim)"
        )
    model = tokenizer_config(
        arch,
        dict(
            image_size=image_size,
            channels=channels,
            downsample=downsample,
            base_channels=base_channels,
            num_res_blocks=res_blocks,
        ),
        dict(
            kind=kind,
            codebook_size=codebook_size,
            code_dim=code_dim,
            beta=beta,
            cosine=cosine,
            levels=levels,
            entropy_weight=entropy_weight,
            update=codebook_update.value if codebook_update else None,
            init=codebook_init.value if codebook_init else None,
        ),
    )
    data = DataConfig(
        dataset,
        split,
        heldout_split,
        image_column,
        label_column or None,
        model.image_size,
        model.channels,
        revision=revision, resize=resize, random_flip=random_flip, random_crop=random_crop,
        streaming=streaming, shuffle_buffer=shuffle_buffer, heldout_size=heldout_size,
    )  # fmt: skip
    cfg = TokenizeConfig(
        run_dir=str(run), data=data, arch=arch, model=model, train=train,
        tokenizer=tokenizer, plugins=plugin, plugin_options=plugin_opt, overwrite=overwrite, resume=resume,
    )  # fmt: skip
    results = run_tokenize(finish(cfg, run / "run_config.json"))
    if results:
        typer.echo(
            f"tokenizer: PSNR {results['psnr']:.2f} dB, SSIM {results['ssim']:.3f}, "
            f"codebook usage {results['codebook_usage']:.1%}, perplexity {results['perplexity']:.1f} "
            f"(held-out, {results['eval_images']} images); wrote {run}/tokenizer, {run}/codes, {run}/metrics.json"
        )


@app.command("train-prior")
@training_options(PRIOR_TRAINING)
def train_prior(
    train,
    config: ConfigFile = None,
    prior: Annotated[
        str, typer.Option(help="Prior to train: gru, pixelcnn, transformer, or an installed plugin prior.")
    ] = "gru",
    codes: Annotated[Path, typer.Option(help="The codes folder written by `tokenize`.")] = Path(
        "runs/demo/codes"
    ),
    out: Annotated[
        Optional[Path], typer.Option(help="Output folder (default: prior-NAME beside the codes).")
    ] = None,
    prior_opt: Annotated[
        list[str], typer.Option("--prior-opt", help="Prior config field OPTION=VALUE (repeatable).")
    ] = [],  # noqa: B006
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Stage two: train an autoregressive prior on the tokenizer's code grids."""
    from vqgen.stages.commands.train_prior import PriorTrainConfig, run_train_prior
    from vqgen.stages.core.options import split_assignments

    try:
        options = split_assignments(prior_opt, "--prior-opt")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cfg = PriorTrainConfig(
        codes=str(codes), prior=prior, out=str(out) if out else None, prior_options=options,
        train=train,
        overwrite=overwrite, resume=resume,
    )  # fmt: skip
    folder = (
        out if out else codes.resolve().parent / f"prior-{prior}"
    )  # where train-prior writes, as it decides
    r = run_train_prior(finish(cfg, folder / "run_config.json"))
    if r:
        typer.echo(
            f"{prior}: validation NLL {r['val_bits_per_token']:.3f} bits/token, {r['val_bits_per_dim']:.4f} bits/dim "
            f"({r['parameters']:,} parameters, {r['train_seconds']:.0f} s)"
        )


@app.command()
def generate(
    prior: Annotated[
        Optional[Path],
        typer.Option(help="A prior folder (default runs/demo/prior-gru); with --from, a prior's name."),
    ] = None,
    source: Annotated[
        Optional[str],
        typer.Option("--from", help="Hub id (user/name), published folder or run folder: tokenizer + prior."),
    ] = None,
    revision: Annotated[
        Optional[str], typer.Option(help="With --from a Hub id: branch, tag, commit.")
    ] = None,
    tokenizer: Annotated[
        Optional[str], typer.Option(help="Tokenizer folder (default: `tokenizer` beside the prior).")
    ] = None,
    label: Annotated[
        list[int], typer.Option("--label", help="Class to sample (repeatable; default: a row per class).")
    ] = [],  # noqa: B006
    n: Annotated[int, typer.Option("--n", min=1, max=10**8, help="Number of images.")] = 100,
    temperature: Annotated[float, typer.Option(help="Softmax temperature (> 0).")] = 1.0,
    top_k: Annotated[Optional[int], typer.Option(min=1, help="Keep the k most likely codes.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling mass in (0, 1].")] = None,
    cfg_scale: Annotated[
        Optional[float],
        typer.Option(
            help=f"Classifier-free guidance (1 = off). Default: {DEFAULT_CFG_SCALE:g} for a conditional prior."
        ),
    ] = None,
    cfg_schedule: Annotated[
        str, typer.Option(help="Guidance over the positions: constant, linear (ramps up) or power.")
    ] = "constant",
    cfg_power: Annotated[
        float, typer.Option(min=0.0, max=100.0, help="Exponent of the power schedule.")
    ] = 1.0,
    cfg_interval: Annotated[
        tuple[float, float],
        typer.Option(help="Guide only positions whose fraction of the grid lies in [LO, HI)."),
    ] = (0.0, 1.0),
    seed: Seed = 0,
    out: Annotated[
        Optional[Path], typer.Option(help="Grid PNG (default: PRIOR/generated.png); images go beside it.")
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1, max=65536, help="Images sampled, decoded and written per chunk (memory stays bounded)."
        ),
    ] = 100,
    device: Device = "auto",
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the prior's per-token step (falls back to eager, with a warning).",
        ),
    ] = False,
    overwrite: Overwrite = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted generation with the same options.")
    ] = False,
) -> None:
    """Sample code grids from a prior and decode them into a PNG grid and individual images."""
    from vqgen.stages.commands.generate import GenerateConfig, run_generate

    prior_dir = str(prior or "runs/demo/prior-gru")
    if source:  # both models from one place; the grid goes to ./generated.png unless --out says otherwise
        from vqgen.stages.artifacts.published import generate_sources

        prior_dir, tokenizer = generate_sources(source, str(prior) if prior else None, tokenizer, revision)
        out = out or Path("generated.png")
    elif revision:
        raise UserError("--revision applies to --from only")
    from vqgen.stages.sampling.config import SamplingConfig

    cfg = GenerateConfig(
        prior=prior_dir, tokenizer=tokenizer, labels=label or None, n=n,
        sampling=SamplingConfig(temperature, top_k, top_p, cfg_scale, cfg_schedule, cfg_power, cfg_interval), seed=seed, out=str(out) if out else None,
        overwrite=overwrite, batch_size=batch_size, resume=resume, device=device, compile=compile,
    )  # fmt: skip
    r = run_generate(cfg)
    speed = f", {r['tokens_per_s']:,.0f} tokens/s sampling" if r["sampled"] else ""
    typer.echo(f"wrote {r['out']} and {r['n']} images in {r['folder']} ({r['sampled']} sampled now{speed})")


@app.command()
def push(
    run: Annotated[
        Path, typer.Argument(help="Run folder (tokenizer/ + prior folders) or a prior folder in one.")
    ],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub repo to create or update: USER/NAME.")],
    prior: Annotated[
        Optional[str], typer.Option(help="Which prior, when the run holds several (gru or prior-gru).")
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    revision: Annotated[
        Optional[str], typer.Option(help="Branch to push to (created if missing; default main).")
    ] = None,
    dry_run: Annotated[
        Optional[Path],
        typer.Option("--dry-run", help="Write the folder that would be uploaded here; upload nothing."),
    ] = None,
    with_training_state: Annotated[
        bool, typer.Option("--with-training-state", help="Also publish the newest training checkpoints.")
    ] = False,
    license: Annotated[str, typer.Option(help="Licence id for the model card.")] = "apache-2.0",
    device: Device = "auto",
) -> None:
    """Publish a run's tokenizer, prior and model card as one Hugging Face Hub repo (token: HF_TOKEN or login)."""
    from vqgen.stages.commands.push import PushConfig, run_push

    cfg = PushConfig(
        run=str(run), repo_id=repo_id, prior=prior, private=private, revision=revision,
        dry_run=str(dry_run) if dry_run else None, with_training_state=with_training_state, license=license,
        device=device,
    )  # fmt: skip
    r = run_push(cfg)
    if r["uploaded"]:
        typer.echo(
            f"pushed {len(r['files'])} files to {r['url']} ({r['revision']}, commit {r['commit'][:12]})"
        )
    else:
        typer.echo(f"dry run: wrote the {len(r['files'])} files that would be uploaded to {r['folder']}")


class FeatureChoice(str, Enum):
    auto = "auto"
    inception = "inception"
    classifier = "classifier"


@app.command()
def evaluate(
    run: Annotated[
        Optional[Path], typer.Option("--run", help="Run folder to evaluate (default runs/demo).")
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Compare priors side by side: the FOLDERS given (runs or RUN/prior-*), or the priors of --run.",
        ),
    ] = False,
    folders: Annotated[
        Optional[list[Path]], typer.Argument(help="With --compare: run or prior folders.", show_default=False)
    ] = None,
    test_images: Annotated[
        Optional[Path],
        typer.Option(help="Evaluate on this folder of images or MNIST idx files, not the held-out split."),
    ] = None,
    n_samples: Annotated[int, typer.Option(min=1, max=10**7, help="Images sampled per prior.")] = 1000,
    cfg_scale: Annotated[
        float,
        typer.Option(
            min=-100.0, max=100.0, help="Classifier-free guidance for class-conditional priors (as generate)."
        ),
    ] = DEFAULT_CFG_SCALE,
    seed: Seed = 0,
    features: Annotated[
        FeatureChoice, typer.Option(help="FID features: Inception if it loads (auto), else the classifier.")
    ] = FeatureChoice.auto,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(min=1, max=65536, help="Images or samples per batch.")] = 250,
    classifier_epochs: Annotated[
        int, typer.Option(min=1, max=10000, help="Training epochs of the feature classifier.")
    ] = 30,
    classifier_width: Annotated[
        int, typer.Option(min=1, max=4096, help="Width of the feature classifier.")
    ] = 32,
    out: Annotated[
        Optional[Path], typer.Option(help="--compare: output folder (default RUN/eval for one run).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing evaluation (and comparison).")
    ] = False,
) -> None:
    """Evaluate a run: tokenizer reconstruction and rFID, and every prior's NLL, gFID, precision/recall and class
    accuracy; writes RUN/eval/metrics.json and report.md. With --compare, one table and a quality-vs-speed plot."""
    from vqgen.stages.commands.evaluate import CompareConfig, EvaluateConfig, run_compare, run_evaluate

    if folders and not compare:
        raise UserError("folders given without --compare; evaluate one run with --run RUN")
    if folders and run is not None:
        raise UserError("give either --run RUN --compare or --compare FOLDER..., not both")
    if out is not None and not compare:
        raise UserError("--out is for --compare; an evaluation is written to RUN/eval")
    cfg = EvaluateConfig(
        run_dir=str(run or Path("runs/demo")), test_images=str(test_images) if test_images else None,
        n_samples=n_samples, cfg_scale=cfg_scale, seed=seed, features=features.value, device=device,
        batch_size=batch_size, classifier_epochs=classifier_epochs, classifier_width=classifier_width,
        overwrite=overwrite,
    )  # fmt: skip
    if compare:
        paths = [str(f) for f in folders] if folders else [cfg.run_dir]
        run_compare(CompareConfig(paths=paths, out=str(out) if out else None, evaluate=cfg), log=typer.echo)
    else:
        run_evaluate(cfg, log=typer.echo)


def _list(registry) -> None:
    for entry in registry.entries():
        typer.echo(f"{entry.name:<14} {entry.source:<36} {entry.target}")


@app.command()
def priors() -> None:
    """List every available prior and where it comes from."""
    from vqgen.stages.core.registry import PRIORS

    _list(PRIORS)


@app.command()
def tokenizers() -> None:
    """List every tokenizer architecture and size preset: parameters, FLOPs per image and where it comes from."""
    from vqgen.stages.core.registry import TOKENIZERS, tokenizer_presets
    from vqgen.stages.tokenizer.base import count_size

    sources = {e.name: e for e in TOKENIZERS.entries()}
    typer.echo(
        f"{'name':<14} {'arch':<8} {'image':>7} {'grid':>6} {'codes':>7} {'params':>8} {'GFLOPs':>8}  source"
    )
    for p in tokenizer_presets():
        c, entry = p.config, sources[p.arch]
        try:
            params, flops = count_size(TOKENIZERS.get(p.arch), c)
            size = f"{params / 1e6:>7.2f}M {flops / 1e9:>8.2f}"
        except Exception:  # a third-party model that cannot be built on the meta device: list it all the same
            size = f"{'?':>8} {'?':>8}"
        typer.echo(
            f"{p.name:<14} {p.arch:<8} {c.image_size:>4} px {c.grid_size:>3}^2 {c.quantizer.codebook_size:>7} "
            f"{size}  {entry.source} ({entry.target})"
        )


@app.command()
def quantizers() -> None:
    """List every available quantizer and where it comes from."""
    from vqgen.stages.core.registry import QUANTIZERS

    _list(QUANTIZERS)


@app.command()
def plugins() -> None:
    """List every available training plugin and where it comes from."""
    from vqgen.stages.core.registry import PLUGINS

    _list(PLUGINS)


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2."""
    from vqgen.stages.artifacts.hub import use_short_hub_timeouts

    use_short_hub_timeouts()
    from vqgen.stages.training.trainer import TrainingStopped

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


if __name__ == "__main__":
    main()
