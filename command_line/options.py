"""The command line's options, declared once: the shared ones, the training options of `tokenize` and
`train-prior` (a table turned into options by vqgen.command_line.config.training_options), and `tokenize`'s model
and data options (None: the architecture preset's value)."""

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


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


class AugmentChoice(str, Enum):
    auto = "auto"
    none = "none"
    flip = "flip"
    ten_crop = "ten-crop"


AugmentOption = Annotated[
    AugmentChoice,
    typer.Option(
        help="Also store the codes of each training image's augmented views: flip (2), ten-crop (10); "
        "auto: flip for RGB images, none for grey ones."
    ),
]
PluginNames = Annotated[
    list[str], typer.Option("--plugin", help="Enable a training plugin (repeatable), e.g. gan.")
]
PluginOpts = Annotated[
    list[str], typer.Option("--plugin-opt", help="Plugin option NAME.OPTION=VALUE (repeatable).")
]

# The training options `tokenize` and `train-prior` share, declared once: (type, help). Their defaults and ranges
# are each stage's (vqgen.stages.training.config: TrainConfig.LIMITS); every other TrainConfig field is set with
# --config.
TRAIN_OPTIONS: dict[str, tuple[type, str]] = {
    "steps": (int, "Optimizer steps."),
    "batch_size": (int, "Examples per process per micro-batch."),
    "lr": (float, "Peak learning rate (AdamW, warm-up then cosine)."),
    "weight_decay": (float, "AdamW weight decay."),
    "grad_accum": (int, "Micro-batches per optimizer step."),
    "model_ema_decay": (
        float,
        "Keep an exponential moving average of the weights with this decay (0 = off); the saved model is it.",
    ),
    "mixed_precision": (
        Optional[Precision],
        "Mixed precision; default: accelerate's own setting (`accelerate config`, `accelerate launch "
        "--mixed_precision`), else no.",
    ),
    "device": (str, "cpu, cuda, cuda:N, mps or auto (accelerate's choice: GPU when there is one)."),
    "compile": (bool, "torch.compile the model ($VQGEN_COMPILE_BACKEND, default inductor)."),
    "seed": (int, "Random seed (data order, initialisation, sampling)."),
    "sample_every": (int, "Save a sample grid every N steps (0: only at the end)."),
    "checkpoint_every": (int, "Save a checkpoint every N steps."),
    "log_with": (Optional[str], "accelerate tracker: tensorboard, wandb or trackio."),
    "record_data_order": (bool, "Debug: write every step's dataset indices to RUN/data_order.txt."),
    "max_nonfinite": (int, "Stop after this many non-finite losses in a row (each is skipped, rolled back)."),
    "num_workers": (
        Optional[int],
        "DataLoader worker processes reading image batches (default: min(4, cores - 1); 0 on 2 cores).",
    ),
}
# Training options of `train-prior` only: stage two has a held-out split to score during training.
PRIOR_TRAIN_OPTIONS: dict[str, tuple[type, str]] = {
    "steps": (int, "Optimizer steps; 0: --epochs passes over the training codes (at least 500 steps)."),
    "epochs": (
        float,
        "With --steps 0: passes over the training codes (a prior may declare its own: the GRU's is 56; "
        "`vqgen priors` lists them).",
    ),
    "weight_decay": (float, "AdamW weight decay (a prior may declare its own: the GRU's is 0.1)."),
    "eval_every": (
        int,
        "Score the held-out codes every N steps and at the end (metrics.json's history); the weights with the "
        "lowest held-out NLL are the ones saved. 0: only at the end, the last weights saved.",
    ),
    "patience": (
        int,
        "Stop once N held-out scorings in a row brought no lower NLL (0: never; needs --eval-every).",
    ),
    "keep_last": (bool, "Save the last weights instead of those with the lowest held-out NLL."),
}
# Config field names whose command-line option is spelled otherwise.
FLAG_OF_FIELD = {
    "run_dir": "run", "num_res_blocks": "res_blocks", "update": "codebook_update", "init": "codebook_init",
    "plugins": "plugin", "plugin_options": "plugin_opt", "prior_options": "prior_opt", "kind": "quantizer",
    "levels": "fsq_levels",
}  # fmt: skip
COMMA_LISTS = {"fsq_levels"}  # options that take a list as one comma-separated value: --fsq-levels 8,5,5,5


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
