"""The commands that make a model: `tokenize` (stage one), `encode` (codes from an existing tokenizer) and
`train-prior` (stage two). Each parses its options, builds the command's typed config and calls its `run_*`."""

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from vqgen.command_line.app import rollback_note
from vqgen.command_line.config import ConfigFile, finish, not_given_from, tokenize_config, training_options
from vqgen.command_line.options import (
    PRIOR_TRAIN_OPTIONS,
    ArchOption,
    AugmentChoice,
    AugmentOption,
    BaseChannelsOption,
    BetaOption,
    ChannelsOption,
    CodebookInitOption,
    CodebookSizeOption,
    CodebookUpdateOption,
    CodeDimOption,
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
    ShuffleBufferOption,
    SplitOption,
    StreamingOption,
)
from vqgen.stages.core.errors import UserError
from vqgen.stages.training.config import PRIOR_TRAINING, TOKENIZER_TRAINING


def _value(choice: Optional[Enum]) -> Optional[str]:
    return choice.value if choice is not None else None


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
    augment: AugmentOption = AugmentChoice.auto,
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Stage one: train the tokenizer, evaluate it, and encode the dataset into code grids."""
    from vqgen.stages.commands.tokenize import run_tokenize

    data = data_config(
        dataset,
        split,
        heldout_split,
        image_column,
        label_column,
        revision,
        resize,
        streaming,
        shuffle_buffer,
        heldout_size,
        random_flip=random_flip,
        random_crop=random_crop,
    )
    model = dict(
        image_size=image_size,
        channels=channels,
        downsample=downsample,
        base_channels=base_channels,
        num_res_blocks=res_blocks,
    )
    quantizer_fields = dict(
        kind=quantizer,
        codebook_size=codebook_size,
        code_dim=code_dim,
        beta=beta,
        cosine=cosine,
        levels=fsq_levels,
        entropy_weight=entropy_weight,
        update=_value(codebook_update),
        init=_value(codebook_init),
    )
    cfg = tokenize_config(
        train,
        run=run,
        arch=arch,
        data=data,
        model=model,
        quantizer=quantizer_fields,
        tokenizer=tokenizer,
        plugins=plugin,
        plugin_options=plugin_opt,
        augment=augment.value,
        overwrite=overwrite,
        resume=resume,
    )
    results = run_tokenize(finish(cfg, run / "run_config.json"))
    if results:
        typer.echo(tokenize_summary(results, run))


def tokenize_summary(results: dict, run: Path) -> str:
    """The line `tokenize` ends with: the held-out scores and what was written."""
    return (
        f"tokenizer: PSNR {results['psnr']:.2f} dB, SSIM {results['ssim']:.3f}, "
        f"codebook usage {results['codebook_usage']:.1%}, perplexity {results['perplexity']:.1f} "
        f"(held-out, {results['eval_images']} images); wrote {run}/tokenizer, {run}/codes, {run}/metrics.json"
        + rollback_note(results)
    )


def data_config(
    dataset: str,
    split: str,
    heldout_split: Optional[str],
    image_column: str,
    label_column: str,
    revision: Optional[str],
    resize: Optional[str],
    streaming: bool,
    shuffle_buffer: int,
    heldout_size: int,
    random_flip: bool = False,
    random_crop: bool = False,
):
    """The DataConfig of the data options tokenize and encode share (an empty --label-column: no labels)."""
    from vqgen.stages.data.images import DataConfig

    return DataConfig(
        dataset,
        split,
        heldout_split,
        image_column,
        label_column or None,
        revision=revision,
        resize=resize,
        random_flip=random_flip,
        random_crop=random_crop,
        streaming=streaming,
        shuffle_buffer=shuffle_buffer,
        heldout_size=heldout_size,
    )


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
    size: Annotated[
        Optional[str],
        typer.Option(
            help="Size preset: B, L, XL, XXL, 1B, 3B (LlamaGen's; `vqgen priors --sizes`); --prior-opt wins."
        ),
    ] = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
) -> None:
    """Stage two: train an autoregressive prior on the tokenizer's code grids."""
    from vqgen.stages.commands.train_prior import PriorTrainConfig, prior_training, run_train_prior
    from vqgen.stages.core.options import split_assignments

    try:
        options = split_assignments(prior_opt, "--prior-opt")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cfg = PriorTrainConfig(
        codes=str(codes),
        prior=prior,
        out=str(out) if out else None,
        prior_options=options,
        size=size,
        train=not_given_from(train, prior_training(prior)),  # the prior's own defaults (the GRU's 56 epochs)
        overwrite=overwrite,
        resume=resume,
    )
    # where train-prior writes, as it decides
    folder = out if out else codes.resolve().parent / f"prior-{prior}"
    r = run_train_prior(finish(cfg, folder / "run_config.json"))
    if r:
        typer.echo(
            f"{prior}: validation NLL {r['val_bits_per_token']:.3f} bits/token, {r['val_bits_per_dim']:.4f} bits/dim "
            f"({r['parameters']:,} parameters, {r['train_seconds']:.0f} s)" + rollback_note(r)
        )


def encode(
    tokenizer: Annotated[
        str,
        typer.Option(help="The tokenizer: RUN/tokenizer (trained or imported), a run folder or a Hub id."),
    ],
    dataset: DatasetOption = "mnist5k",
    out: Annotated[
        Optional[Path],
        typer.Option(help="The codes folder to write (default: codes beside a local tokenizer)."),
    ] = None,
    split: SplitOption = "train",
    heldout_split: HeldoutSplitOption = None,
    image_column: ImageColumnOption = "image",
    label_column: LabelColumnOption = "label",
    revision: RevisionOption = None,
    resize: ResizeOption = None,
    streaming: StreamingOption = False,
    shuffle_buffer: ShuffleBufferOption = 1000,
    heldout_size: HeldoutSizeOption = 500,
    augment: AugmentOption = AugmentChoice.auto,
    batch_size: Annotated[int, typer.Option(min=1, max=65536, help="Images per encoder call.")] = 64,
    shard_size: Annotated[
        int, typer.Option(min=1, help="Images per shard file (each written whole; --resume skips them).")
    ] = 10000,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted encode (same options and processes).")
    ] = False,
) -> None:
    """Encode a dataset with an existing tokenizer into the codes train-prior reads (no training); under
    `accelerate launch` every process encodes its own shard."""
    from vqgen.stages.commands.encode import EncodeConfig, run_encode

    data = data_config(
        dataset,
        split,
        heldout_split,
        image_column,
        label_column,
        revision,
        resize,
        streaming,
        shuffle_buffer,
        heldout_size,
    )
    cfg = EncodeConfig(
        tokenizer,
        str(out) if out else None,
        data,
        augment.value,
        batch_size,
        shard_size,
        device,
        overwrite,
        resume,
    )
    r = run_encode(cfg)
    if "rows" in r:
        typer.echo(
            f"wrote {r['out']}: {r['rows']['train']:,} training and {r['rows']['validation']:,} validation rows "
            f"({r['images']:,} images encoded now, {r['images_per_s']:,.1f} images/s)"
        )
