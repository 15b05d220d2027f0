"""Stage one: train (or load) the tokenizer, evaluate it on held-out images, encode the dataset to codes.

The architecture (`--arch`: vqvae, vqgan or a size preset such as vqgan-f16) and the quantizer (`--quantizer`: vq,
fsq, lfq) are found through the host's registries (vqgen.stages.core.registry), entry points included.

Run folder:
    RUN/tokenizer/        config.json + model.safetensors + README.md (the Hub layout)
    RUN/codes/            a datasets.DatasetDict (train, validation) of code grids + labels, and codes.json;
                          with --augment flip|ten-crop every view of each training image, as `vqgen encode
                          --augment` writes them (`image` and `view` columns), the held-out images in one view
    RUN/samples/          input-vs-reconstruction grids (PNG), one every --sample-every steps
    RUN/checkpoints/      training checkpoints for --resume
    RUN/metrics.json      PSNR, SSIM, MSE, codebook usage, perplexity, dead codes, images/s, wall time
    RUN/run_config.json   everything needed to repeat the run
"""

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from vqgen.stages.artifacts.codes import load_codes, save_codes
from vqgen.stages.artifacts.models import save_model
from vqgen.stages.artifacts.runs import locked_command, prepare_run_dir
from vqgen.stages.core.device import check_device_name, resolve_device
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.files import write_json
from vqgen.stages.core.registry import QUANTIZERS, TOKENIZERS
from vqgen.stages.core.runconfig import check_limits
from vqgen.stages.data.encode import splits_for_views
from vqgen.stages.data.images import DataConfig, ImageSplits, to_float
from vqgen.stages.data.pixels import iter_pixel_batches, pixel_tensor
from vqgen.stages.data.sources import load_image_splits
from vqgen.stages.data.views import check_augment, resolve_augment
from vqgen.stages.evaluation.tokenizer import evaluate_tokenizer, save_reconstruction_grid
from vqgen.stages.reporting.run_plots import code_counts, write_plots
from vqgen.stages.tokenizer import Tokenizer
from vqgen.stages.tokenizer.vqvae import VQVAEConfig
from vqgen.stages.training.config import TOKENIZER_TRAINING, TrainConfig
from vqgen.stages.training.distribution import new_accelerator
from vqgen.stages.training.plugins import build_plugins
from vqgen.stages.training.tasks import StreamingTokenizerTask, TokenizerTask
from vqgen.stages.training.trainer import Trainer


@dataclass
class TokenizeConfig:
    run_dir: str = "runs/demo"
    data: DataConfig = field(default_factory=DataConfig)
    arch: str = "vqvae"  # the architecture or size preset `model` started from (`python cli.py tokenizers`)
    # the architecture's dataclass config (its model_type names the architecture)
    model: Any = field(default_factory=VQVAEConfig)
    train: TrainConfig = field(default_factory=lambda: replace(TOKENIZER_TRAINING))
    tokenizer: str | None = None  # a trained tokenizer (folder or Hub id): skip training
    plugins: list[str] = field(default_factory=list)
    plugin_options: list[str] = field(default_factory=list)
    # also store each training image's views: flip | ten-crop | none; auto: flip for RGB, none for grey (data/views.py)
    augment: str = "auto"
    eval_batch_size: int = 500
    overwrite: bool = False
    resume: bool = False

    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {"eval_batch_size": (1, 65536)}


def resolve_tokenizer_config(cfg: TokenizeConfig) -> None:
    """Fit the model config to the data (image size, channels), set the quantizer's codebook size from its own
    options (fsq: prod(levels), lfq: 2**code_dim) and check it all; ValueError becomes a one-line UserError."""
    model = cfg.model
    model.image_size, model.channels = cfg.data.image_size, cfg.data.channels
    try:
        model.quantizer.codebook_size = QUANTIZERS.get(model.quantizer.kind).size_of(model.quantizer)
        model.validate()
    except ValueError as exc:
        raise UserError(f"{exc} (--arch {cfg.arch})") from None


def train_tokenizer(
    cfg: TokenizeConfig, splits: ImageSplits, run_dir: Path
) -> tuple[Tokenizer, Trainer, int]:
    """Train (or, with --resume, continue) the tokenizer; returns the model, the trainer and the starting step."""
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)  # the initial weights are part of the run: same seed, same run
    model = TOKENIZERS.get(cfg.model.model_type)(cfg.model)
    plugins = build_plugins(cfg.plugins, cfg.plugin_options, stage="tokenizer")
    task = (
        StreamingTokenizerTask(model, splits, cfg.data)
        if cfg.data.streaming
        else TokenizerTask(model, splits, data=cfg.data)
    )
    trainer = Trainer(task, cfg.train, run_dir, plugins)
    start_step = trainer.resume() if cfg.resume else 0
    if cfg.resume:
        trainer.accelerator.print(f"resuming from step {start_step}")
    trainer.fit()
    return trainer.final_model(), trainer, start_step


@dataclass
class StageOne:
    """The tokenizer stage one ends with (trained or given), where it runs, and how its training went."""

    model: Tokenizer
    accelerator: Any
    history: list[dict] = field(default_factory=list)
    train_images_per_s: float | None = None  # None: a given tokenizer (--tokenizer), not trained here
    rolled_back: int = 0  # steps rolled back for a non-finite loss


def check_tokenize(cfg: TokenizeConfig) -> None:
    """What is refused before any data is read: the device, the model config, every range and choice."""
    check_device_name(cfg.train.device)
    if cfg.train.device != "auto":
        resolve_device(cfg.train.device)  # a device that is not here: refused before any data is read
    resolve_tokenizer_config(cfg)
    check_augment(cfg.augment, cfg.data.image_size)
    check_limits(cfg)  # every range and choice (--resize), as the command line checks them
    if cfg.train.num_workers is not None and cfg.train.num_workers < 0:
        raise UserError(f"--num-workers must be 0 or more, got {cfg.train.num_workers}")
    if cfg.train.steps == 0 and not cfg.tokenizer:  # only train-prior has --epochs to follow the data with
        raise UserError(
            "--steps must be at least 1 for tokenize (0 follows the data in train-prior only); see --help"
        )


def given_tokenizer(cfg: TokenizeConfig) -> StageOne:
    """--tokenizer: a trained tokenizer, which must take the data's image size and channels."""
    from vqgen.stages.artifacts.models import load_tokenizer

    accelerator = new_accelerator(cfg.train.device)
    model = load_tokenizer(cfg.tokenizer)
    takes = (model.config.image_size, model.config.channels)
    if takes != (cfg.data.image_size, cfg.data.channels):
        raise UserError(
            f"--tokenizer {cfg.tokenizer} takes {takes[0]} px images with {takes[1]} channel(s); pass "
            f"--image-size {takes[0]} --channels {takes[1]}"
        )
    model.to(accelerator.device)
    return StageOne(model, accelerator)


def trained_tokenizer(cfg: TokenizeConfig, splits: ImageSplits, run_dir: Path) -> StageOne:
    """The tokenizer trained here (or continued with --resume), with its training speed in images/s."""
    started = time.perf_counter()
    model, trainer, start_step = train_tokenizer(cfg, splits, run_dir)
    accelerator = trainer.accelerator
    images = (
        (trainer.step - start_step) * cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes
    )
    images_per_s = images / max(time.perf_counter() - started, 1e-9)
    return StageOne(model, accelerator, trainer.history, images_per_s, trainer.nonfinite_total)


def score_tokenizer(model: Tokenizer, splits: ImageSplits, run_dir: Path, batch_size: int) -> dict:
    """Process 0: the tokenizer saved as RUN/tokenizer, its final reconstruction grid, its held-out scores."""
    save_model(model, run_dir / "tokenizer")  # each file renamed into place: never half-written
    save_reconstruction_grid(
        model,
        to_float(pixel_tensor(splits.heldout.select(range(min(16, len(splits.heldout)))))),
        run_dir / "samples" / "recon_final.png",
    )
    results, _ = evaluate_tokenizer(model, iter_pixel_batches(splits.heldout, batch_size))
    return results


def write_run_files(cfg: TokenizeConfig, run_dir: Path, results: dict, history: list, meta: dict) -> None:
    """Process 0: RUN/metrics.json, the plots and RUN/run_config.json."""
    write_json({"tokenizer": results, "history": history}, run_dir / "metrics.json")
    codes = load_codes(run_dir / "codes").train_codes
    write_plots(run_dir, history, results, code_counts(codes, meta["vocab_size"]))
    write_json({**asdict(cfg), "run_dir": "."}, run_dir / "run_config.json")  # a run is its folder: movable


@locked_command  # RUN stays locked while the command runs (stages/artifacts/runs.py)
def run_tokenize(cfg: TokenizeConfig) -> dict:
    """The whole of stage one; returns the metrics written to RUN/metrics.json."""
    check_tokenize(cfg)
    cfg.data.resize = cfg.data.resize_mode()  # recorded as resolved in run_config.json
    cfg.augment = resolve_augment(cfg.augment, cfg.data.channels)  # likewise
    run_dir = prepare_run_dir(Path(cfg.run_dir), overwrite=cfg.overwrite, resume=cfg.resume)
    started = time.perf_counter()
    splits = load_image_splits(cfg.data)
    one = given_tokenizer(cfg) if cfg.tokenizer else trained_tokenizer(cfg, splits, run_dir)
    main_process = one.accelerator.is_main_process
    results = score_tokenizer(one.model, splits, run_dir, cfg.eval_batch_size) if main_process else {}
    views = splits_for_views(splits, cfg.data, cfg.augment)
    meta = save_codes(run_dir, one.model, views, cfg.eval_batch_size, one.accelerator, cfg.augment)
    if main_process:
        results.update(
            train_images_per_s=one.train_images_per_s,
            nonfinite_rolled_back=one.rolled_back,
            wall_seconds=time.perf_counter() - started,
            skipped_images=splits.skipped,
            grid=[meta["grid_height"], meta["grid_width"]],
            fingerprint=meta["tokenizer_fingerprint"],
            eval_split="held-out",
        )
        write_run_files(cfg, run_dir, results, one.history, meta)
    one.accelerator.wait_for_everyone()
    return results
