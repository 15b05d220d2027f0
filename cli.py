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

from vqgen.command_line.app import listing, rollback_note, run_app  # noqa: E402
from vqgen.command_line.config import ConfigFile, finish, tokenize_config, training_options  # noqa: E402
from vqgen.command_line.options import (  # noqa: E402
    PRIOR_TRAIN_OPTIONS,
    ArchOption,
    BaseChannelsOption,
    BetaOption,
    ChannelsOption,
    CodebookInitOption,
    CodebookSizeOption,
    CodebookUpdateOption,
    CodeDimOption,
    CodeViewsOption,
    CosineOption,
    DatasetOption,
    Device,
    DownsampleOption,
    EntropyWeightOption,
    FsqLevelsOption,
    HeldoutSizeOption,
    HeldoutSplitOption,
    ImageColumnOption,
    ImageSizeOption,
    LabelColumnOption,
    Overwrite,
    PluginNames,
    PluginOpts,
    QuantizerOption,
    RandomCropOption,
    RandomFlipOption,
    ResBlocksOption,
    ResizeOption,
    Resume,
    RevisionOption,
    Run,
    Seed,
    ShuffleBufferOption,
    SplitOption,
    StreamingOption,
)
from vqgen.stages.core.errors import UserError  # noqa: E402
from vqgen.stages.training.config import PRIOR_TRAINING, TOKENIZER_TRAINING  # noqa: E402

app = typer.Typer(
    help="vqgen: an image tokenizer (VQ-VAE, VQGAN) and swappable autoregressive priors, in one pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: an option's help wraps below it, readable at 80 columns
)


def _value(choice: Optional[Enum]) -> Optional[str]:
    return choice.value if choice is not None else None


@app.command()
@training_options(TOKENIZER_TRAINING)
def tokenize(
    train,
    config: ConfigFile = None,
    run: Run = Path("runs/demo"),
    dataset: DatasetOption = "mnist5k",
    split: SplitOption = "train",
    heldout_split: HeldoutSplitOption = None,
    image_column: ImageColumnOption = "image",
    label_column: LabelColumnOption = "label",
    revision: RevisionOption = None,
    arch: ArchOption = "vqvae",
    quantizer: QuantizerOption = None,
    image_size: ImageSizeOption = None,
    channels: ChannelsOption = None,
    resize: ResizeOption = None,
    random_flip: RandomFlipOption = False,
    random_crop: RandomCropOption = False,
    code_views: CodeViewsOption = None,
    streaming: StreamingOption = False,
    shuffle_buffer: ShuffleBufferOption = 1000,
    heldout_size: HeldoutSizeOption = 500,
    tokenizer: Annotated[
        Optional[str], typer.Option(help="Use this trained tokenizer (folder or Hub id); no training.")
    ] = None,
    codebook_size: CodebookSizeOption = None,
    code_dim: CodeDimOption = None,
    fsq_levels: FsqLevelsOption = None,
    entropy_weight: EntropyWeightOption = None,
    downsample: DownsampleOption = None,
    base_channels: BaseChannelsOption = None,
    res_blocks: ResBlocksOption = None,
    codebook_update: CodebookUpdateOption = None,
    codebook_init: CodebookInitOption = None,
    cosine: CosineOption = None,
    beta: BetaOption = None,
    plugin: PluginNames = [],  # noqa: B006
    plugin_opt: PluginOpts = [],  # noqa: B006
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Stage one: train the tokenizer, evaluate it, and encode the dataset into code grids."""
    from vqgen.stages.commands.tokenize import run_tokenize
    from vqgen.stages.data.images import DataConfig

    data = DataConfig(
        dataset, split, heldout_split, image_column, label_column or None, revision=revision, resize=resize,
        random_flip=random_flip, random_crop=random_crop, streaming=streaming, shuffle_buffer=shuffle_buffer,
        heldout_size=heldout_size,
    )  # fmt: skip
    model = dict(
        image_size=image_size, channels=channels, downsample=downsample, base_channels=base_channels,
        num_res_blocks=res_blocks,
    )  # fmt: skip
    quantizer_fields = dict(
        kind=quantizer, codebook_size=codebook_size, code_dim=code_dim, beta=beta, cosine=cosine,
        levels=fsq_levels, entropy_weight=entropy_weight, update=_value(codebook_update), init=_value(codebook_init),
    )  # fmt: skip
    cfg = tokenize_config(
        train, run=run, arch=arch, data=data, model=model, quantizer=quantizer_fields, tokenizer=tokenizer,
        plugins=plugin, plugin_options=plugin_opt, overwrite=overwrite, resume=resume, code_views=code_views,
    )  # fmt: skip
    results = run_tokenize(finish(cfg, run / "run_config.json"))
    if results:
        typer.echo(
            f"tokenizer: PSNR {results['psnr']:.2f} dB, SSIM {results['ssim']:.3f}, "
            f"codebook usage {results['codebook_usage']:.1%}, perplexity {results['perplexity']:.1f} "
            f"(held-out, {results['eval_images']} images); wrote {run}/tokenizer, {run}/codes, {run}/metrics.json"
            + rollback_note(results)
        )


@app.command("train-prior")
@training_options(PRIOR_TRAINING, PRIOR_TRAIN_OPTIONS)
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
            f"({r['parameters']:,} parameters, {r['train_seconds']:.0f} s)" + rollback_note(r)
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
    temperature: Annotated[
        Optional[float],
        typer.Option(help="Softmax temperature (> 0). Default: the prior's own (its config)."),
    ] = None,
    top_k: Annotated[Optional[int], typer.Option(min=1, help="Keep the k most likely codes.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling mass in (0, 1].")] = None,
    cfg_scale: Annotated[
        Optional[float],
        typer.Option(
            help="Classifier-free guidance (1 = off). Default: the prior's own for a conditional prior (its config)."
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
        Optional[float],
        typer.Option(
            min=-100.0,
            max=100.0,
            help="Classifier-free guidance for class-conditional priors (default: each prior's own, as generate).",
        ),
    ] = None,
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


@app.command("import")
def import_(
    fmt: Annotated[
        str,
        typer.Argument(
            metavar="FORMAT", help="llamagen-vq, taming, diffusers, or an installed import format."
        ),
    ],
    source: Annotated[
        str, typer.Argument(help="A local checkpoint file or folder, or a Hub id (user/name).")
    ],
    run: Annotated[
        Path, typer.Option("--run", help="Run folder to write RUN/tokenizer (or RUN/prior-NAME) into.")
    ],
    model: Annotated[
        Optional[str], typer.Option(help="The original's size preset: VQ-16, VQ-8 (llamagen-vq), GPT-B, ...")
    ] = None,
    codebook_size: Annotated[Optional[int], typer.Option(min=2, help="llamagen-vq: codes (16384).")] = None,
    codebook_embed_dim: Annotated[
        Optional[int], typer.Option(min=1, help="llamagen-vq: code dimensions (8).")
    ] = None,
    image_size: Annotated[
        Optional[int], typer.Option(min=1, help="Image size the tokenizer takes (256; the grid follows).")
    ] = None,
    model_config: Annotated[
        Optional[Path],
        typer.Option(help="taming: the model's yaml config (configs/*.yaml beside last.ckpt)."),
    ] = None,
    subfolder: Annotated[
        Optional[str], typer.Option(help="diffusers: the VQModel's folder inside a pipeline (vqvae).")
    ] = None,
    filename: Annotated[
        Optional[str], typer.Option(help="The checkpoint file inside a Hub repo or folder (vq_ds16_c2i.pt).")
    ] = None,
    revision: Annotated[Optional[str], typer.Option(help="Hub: branch, tag or commit.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing folder in --run.")
    ] = False,
    device: Device = "cpu",
) -> None:
    """Import a released model (LlamaGen, taming-transformers, diffusers) as a vqgen tokenizer or prior in RUN."""
    from vqgen.stages.commands.interop import ImportConfig, run_import

    options = dict(
        model=model, codebook_size=codebook_size, codebook_embed_dim=codebook_embed_dim, image_size=image_size,
        model_config=str(model_config) if model_config else None, subfolder=subfolder, filename=filename,
        revision=revision,
    )  # fmt: skip
    r = run_import(ImportConfig(fmt, source, str(run), overwrite, device, options))
    typer.echo(f"imported {r['summary']}; wrote {r['folder']} ({r['seconds']:.1f} s)")


@app.command()
def export(
    tokenizer: Annotated[
        str, typer.Argument(help="A vqgen tokenizer: RUN/tokenizer, a run folder or a Hub id.")
    ],
    fmt: Annotated[str, typer.Option("--format", help="The layout to write: diffusers (a VQModel folder).")],
    out: Annotated[Path, typer.Option("--out", help="The folder to write.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out folder.")] = False,
) -> None:
    """Export a vqgen tokenizer for another library: `--format diffusers` writes a folder that
    diffusers.VQModel.from_pretrained loads."""
    from vqgen.stages.commands.interop import ExportConfig, run_export

    r = run_export(ExportConfig(tokenizer, fmt, str(out), overwrite))
    typer.echo(f"wrote {r['folder']} ({', '.join(r['files'])})")


@app.command()
def priors() -> None:
    """List every available prior and where it comes from."""
    typer.echo(listing("prior"))


@app.command()
def tokenizers() -> None:
    """List every tokenizer architecture and size preset: parameters, FLOPs per image and where it comes from."""
    typer.echo(listing("tokenizer"))


@app.command()
def quantizers() -> None:
    """List every available quantizer and where it comes from."""
    typer.echo(listing("quantizer"))


@app.command()
def plugins() -> None:
    """List every available training plugin and where it comes from."""
    typer.echo(listing("plugin"))


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2 (vqgen.command_line.app)."""
    from vqgen.stages.artifacts.hub import use_short_hub_timeouts

    use_short_hub_timeouts()  # before huggingface_hub is imported
    run_app(app)


if __name__ == "__main__":
    main()
