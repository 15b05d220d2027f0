"""Stage one: train (or load) the tokenizer, evaluate it on held-out images, encode the dataset to codes.

The architecture (`--arch`: vqvae, vqgan or a size preset such as vqgan-f16) and the quantizer (`--quantizer`: vq,
fsq, lfq) are found through the host's registries (vqgen.stages.core.registry), entry points included.

Run folder:
    RUN/tokenizer/        config.json + model.safetensors + README.md (the Hub layout)
    RUN/codes/            a datasets.DatasetDict (train, validation) of code grids + labels, and vqgen.json
    RUN/samples/          input-vs-reconstruction grids (PNG), one every --sample-every steps
    RUN/checkpoints/      training checkpoints for --resume
    RUN/metrics.json      PSNR, SSIM, MSE, codebook usage, perplexity, dead codes, images/s, wall time
    RUN/run_config.json   everything needed to repeat the run
"""

import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from vqgen.stages.artifacts.codes import load_codes, write_codes
from vqgen.stages.artifacts.models import save_model
from vqgen.stages.artifacts.runs import locked_command, prepare_run_dir
from vqgen.stages.core.device import check_device_name, resolve_device, training_accelerator_kwargs
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.files import write_json
from vqgen.stages.core.registry import QUANTIZERS, TOKENIZERS, tokenizer_preset
from vqgen.stages.data.images import RESIZE_MODES, DataConfig, ImageSplits, load_image_splits, to_float
from vqgen.stages.data.pixels import augment, iter_pixel_batches, label_array, pixel_tensor, read_rows
from vqgen.stages.evaluation import metrics as M
from vqgen.stages.evaluation.tokenizer import evaluate_tokenizer, save_reconstruction_grid
from vqgen.stages.reporting.run_plots import code_counts, write_plots
from vqgen.stages.tokenizer import Tokenizer
from vqgen.stages.tokenizer.model import TokenizerConfig, downsample_for
from vqgen.stages.training.config import TOKENIZER_TRAINING, TrainConfig
from vqgen.stages.training.plugins import build_plugins
from vqgen.stages.training.trainer import Trainer

IN_MEMORY_BYTES = 256 << 20  # training splits up to 256 MiB of uint8 pixels are held in memory


@dataclass
class TokenizeConfig:
    run_dir: str = "runs/demo"
    data: DataConfig = field(default_factory=DataConfig)
    arch: str = "vqvae"  # the architecture or size preset `model` started from (`python cli.py tokenizers`)
    # the architecture's dataclass config (its model_type names the architecture)
    model: Any = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=lambda: replace(TOKENIZER_TRAINING))
    tokenizer: str | None = None  # a trained tokenizer (folder or Hub id): skip training
    plugins: list[str] = field(default_factory=list)
    plugin_options: list[str] = field(default_factory=list)
    eval_batch_size: int = 500
    overwrite: bool = False
    resume: bool = False


class TokenizerTask:
    """What the trainer needs from stage one (stages/trainer.py: TrainTask)."""

    stage = "tokenizer"
    progress_keys = ("psnr", "usage", "perplexity")
    channels_last = True  # the trainer converts the model (and get_batch the images) to NHWC on CUDA

    def __init__(
        self,
        model: Tokenizer,
        splits: ImageSplits,
        in_memory_bytes: int = IN_MEMORY_BYTES,
        data: DataConfig | None = None,
    ):
        self.model = model
        ds = splits.train
        c, s = model.config.channels, model.config.image_size
        # Small datasets are held in memory as uint8; large ones are read batch by batch from the memory-mapped
        # arrow files that `datasets` prepared, so memory stays bounded whatever the dataset size.
        self.pixels = pixel_tensor(ds) if len(ds) * c * s * s <= in_memory_bytes else None
        self.dataset = ds.select_columns(["pixels"])
        self.preview = to_float(pixel_tensor(splits.heldout.select(range(min(16, len(splits.heldout))))))
        self.flip, self.crop = (data.random_flip, data.random_crop) if data is not None else (False, False)

    def num_examples(self) -> int:
        return len(self.dataset)

    def rows(self, indices: list[int] | torch.Tensor) -> torch.Tensor:
        """The uint8 pixels (B, C, S, S) of these rows (called in DataLoader workers with --num-workers)."""
        if self.pixels is not None:
            return self.pixels[indices]
        # the sampler's indices live on the host: a list of them for Arrow is no device read
        return read_rows(self.dataset, indices.tolist() if torch.is_tensor(indices) else indices)

    def prepare(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        images = to_float(rows.to(device, non_blocking=True))
        if torch.device(device).type == "cuda":  # the convolutions' fast layout on a GPU
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def get_batch(self, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        return self.prepare(self.rows(indices), device)

    def augment(self, batch: torch.Tensor, seed: int, micro_batch: int) -> torch.Tensor:
        """--random-flip / --random-crop, drawn from a generator seeded from (seed, micro-batch): exact on resume."""
        if not (self.flip or self.crop):
            return batch
        generator = torch.Generator().manual_seed((seed * 1_000_003 + micro_batch) % (2**63))
        return augment(batch, self.flip, self.crop, generator)

    def compute_loss(self, model, batch):
        """The loss and the step's metrics, all tensors on the device: nothing is read back here (the trainer
        reads the metrics at its log steps only)."""
        out = model(batch)
        loss = out.recon_loss + out.vq_loss
        with torch.no_grad():
            k = model_config(model).quantizer.codebook_size
            hit = torch.zeros(k, device=out.codes.device).index_fill_(0, out.codes.reshape(-1), 1.0)
            metrics = {
                "recon_loss": out.recon_loss.detach(),
                "vq_loss": out.vq_loss.detach(),
                "psnr": M.psnr_per_image(out.recon.detach().float(), batch.float()).mean(),
                "usage": hit.mean(),
                "perplexity": out.perplexity.detach(),
                "dead_codes": torch.as_tensor(out.dead_codes).detach(),
            }
        return loss, out, metrics

    def save_samples(self, model: Tokenizer, step: int, run_dir: Path) -> None:
        save_reconstruction_grid(model, self.preview, Path(run_dir) / "samples" / f"recon_{step:07d}.png")


def tokenizer_config(arch: str, model: dict[str, Any], quantizer: dict[str, Any]) -> Any:
    """The config of architecture or preset `arch` with the given fields changed (None: keep the preset's).
    A field the architecture does not have is a UserError naming it."""
    preset = tokenizer_preset(arch)
    config = preset.config
    for values, target in ((model, config), (quantizer, config.quantizer)):
        values = {k: v for k, v in values.items() if v is not None}
        known = {f.name for f in fields(target)}
        for name in sorted(set(values) - known):
            flag = "--" + {"num_res_blocks": "res-blocks"}.get(name, name.replace("_", "-"))
            raise UserError(f"{flag} does not apply to --arch {arch} (a {preset.arch} tokenizer)")
        for name, value in values.items():
            setattr(target, name, value)
    return config


def config_from_flags(f: dict, train: TrainConfig) -> TokenizeConfig:
    """The TokenizeConfig that `vqgen tokenize`'s flags (`f`, by parameter name; None = the preset's value) ask
    for: the architecture or preset with the given model and quantizer fields changed, and the data settings."""
    from vqgen.stages.core.cli_options import given, saved_setting

    arch = f["arch"]
    if f["resume"] and not given("arch"):  # the run's own architecture, as every other setting on --resume
        arch = saved_setting(Path(f["run"]) / "run_config.json", "arch", arch)
    try:
        levels = [int(v) for v in f["fsq_levels"].split(",")] if f["fsq_levels"] is not None else None
    except ValueError:
        raise UserError(
            f"--fsq-levels takes comma-separated integers such as 8,5,5,5, got {f['fsq_levels']!r}"
        ) from None
    kind = f["quantizer"]
    if f["codebook_size"] is not None and (kind or "vq") != "vq":
        raise UserError(
            f"--codebook-size applies to --quantizer vq; {kind} sets its own (fsq: --fsq-levels, lfq: 2**--code-dim)"
        )
    model_fields = dict(
        image_size=f["image_size"], channels=f["channels"], downsample=f["downsample"],
        base_channels=f["base_channels"], num_res_blocks=f["res_blocks"],
    )  # fmt: skip
    quantizer_fields = dict(
        kind=kind, codebook_size=f["codebook_size"], code_dim=f["code_dim"], beta=f["beta"], cosine=f["cosine"],
        levels=levels, entropy_weight=f["entropy_weight"], update=f["codebook_update"], init=f["codebook_init"],
    )  # fmt: skip
    if tokenizer_preset(arch).name == "vqvae" and f["downsample"] is None and f["image_size"] is not None:
        model_fields["downsample"] = downsample_for(f["image_size"])  # a grid that suits the image size
    model = tokenizer_config(arch, model_fields, quantizer_fields)
    data = DataConfig(
        f["dataset"], f["split"], f["heldout_split"], f["image_column"], f["label_column"] or None,
        model.image_size, model.channels, revision=f["revision"], resize=f["resize"],
        random_flip=f["random_flip"], random_crop=f["random_crop"], streaming=f["streaming"],
        shuffle_buffer=f["shuffle_buffer"], heldout_size=f["heldout_size"],
    )  # fmt: skip
    return TokenizeConfig(
        run_dir=str(f["run"]), data=data, arch=arch, model=model, train=train, tokenizer=f["tokenizer"],
        plugins=f["plugin"], plugin_options=f["plugin_opt"], overwrite=f["overwrite"], resume=f["resume"],
    )  # fmt: skip


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


class StreamingTokenizerTask(TokenizerTask):
    """Stage one trained from a stream (--streaming): batches come from a StreamReader, whose position the trainer
    saves in every checkpoint, instead of from indices of a prepared split."""

    def __init__(self, model: Tokenizer, splits: ImageSplits, data: DataConfig):
        self.model, self.stream = model, splits.train
        self.preview = to_float(pixel_tensor(splits.heldout.select(range(min(16, len(splits.heldout))))))
        self.flip, self.crop = data.random_flip, data.random_crop

    def stream_feed(self, rank: int, world: int, batch_size: int, seed: int):
        from vqgen.stages.data.streaming import StreamReader

        return StreamReader(self.stream, rank, world, batch_size, seed)


def model_config(model) -> TokenizerConfig:
    return getattr(model, "module", model).config


@torch.no_grad()
def encode_split(model: Tokenizer, ds, batch_size: int, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (N, h, w) and labels (N,) for a prepared split; each process encodes its own contiguous shard."""
    from accelerate.utils import gather_object

    model.eval()
    if hasattr(ds, "batches"):  # a stream (--streaming): one pass over each process's shards, in stream order
        return encode_stream(model, ds, batch_size, accelerator)
    n, rank, world = len(ds), accelerator.process_index, accelerator.num_processes
    lo, hi = n * rank // world, n * (rank + 1) // world
    codes = [
        model.encode(to_float(pixels.to(accelerator.device))).cpu().to(torch.int32)
        for pixels in iter_pixel_batches(ds, batch_size, lo, hi)
    ]
    local = (
        torch.cat(codes)
        if codes
        else torch.empty(0, model.config.grid_size, model.config.grid_size, dtype=torch.int32)
    )
    parts = gather_object([local]) if world > 1 else [local]
    return torch.cat(parts), torch.as_tensor(label_array(ds))


def encode_stream(
    model: Tokenizer, stream, batch_size: int, accelerator
) -> tuple[torch.Tensor, torch.Tensor]:
    from accelerate.utils import gather_object

    rank, world = accelerator.process_index, accelerator.num_processes
    codes, labels = [], []
    for pixels, label in stream.batches(batch_size, rank, world):
        codes.append(model.encode(to_float(pixels.to(accelerator.device))).cpu().to(torch.int32))
        labels.append(label)
    g = model.config.grid_size
    local = (
        (torch.cat(codes) if codes else torch.empty(0, g, g, dtype=torch.int32)),
        (torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)),
    )
    parts = gather_object([local]) if world > 1 else [local]
    return torch.cat([c for c, _ in parts]), torch.cat([lab for _, lab in parts])


def save_codes(run_dir: Path, model: Tokenizer, splits: ImageSplits, batch_size: int, accelerator) -> dict:
    """Encode both splits and write them as the run's codes dataset (vqgen.stages.artifacts.codes)."""
    encoded = {
        name: encode_split(model, ds, batch_size, accelerator)
        for name, ds in (("train", splits.train), ("validation", splits.heldout))
    }
    g = model.config.grid_size
    meta = {
        "tokenizer": "../tokenizer",
        "tokenizer_fingerprint": model.fingerprint(),
        "vocab_size": model.config.quantizer.codebook_size,
        "grid_height": g,
        "grid_width": g,
        "num_classes": splits.num_classes,
        "class_names": splits.class_names,
    }
    if accelerator.is_main_process:
        write_codes(Path(run_dir) / "codes", encoded, meta)
    return meta


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


@locked_command  # RUN stays locked while the command runs (stages/artifacts/runs.py)
def run_tokenize(cfg: TokenizeConfig) -> dict:
    """The whole of stage one; returns the metrics written to RUN/metrics.json."""
    from accelerate import Accelerator

    check_device_name(cfg.train.device)
    if cfg.train.device != "auto":
        resolve_device(cfg.train.device)  # a device that is not here: refused before any data is read
    resolve_tokenizer_config(cfg)
    if cfg.data.resize is not None and cfg.data.resize not in RESIZE_MODES:
        raise UserError(f"--resize must be {' or '.join(RESIZE_MODES)}, got {cfg.data.resize!r}")
    if cfg.train.num_workers is not None and cfg.train.num_workers < 0:
        raise UserError(f"--num-workers must be 0 or more, got {cfg.train.num_workers}")
    cfg.data.resize = cfg.data.resize_mode()  # recorded as resolved in run_config.json
    run_dir = prepare_run_dir(Path(cfg.run_dir), overwrite=cfg.overwrite, resume=cfg.resume)
    started = time.perf_counter()
    splits = load_image_splits(cfg.data)
    if cfg.tokenizer:
        from vqgen.stages.artifacts.models import load_tokenizer

        accelerator = Accelerator(**training_accelerator_kwargs(cfg.train.device))
        model, history = load_tokenizer(cfg.tokenizer), []
        takes = (model.config.image_size, model.config.channels)
        if takes != (cfg.data.image_size, cfg.data.channels):
            raise UserError(
                f"--tokenizer {cfg.tokenizer} takes {takes[0]} px images with {takes[1]} channel(s); pass "
                f"--image-size {takes[0]} --channels {takes[1]}"
            )
        train_images_per_s, rolled_back = None, 0
        model.to(accelerator.device)
    else:
        train_started = time.perf_counter()
        model, trainer, start_step = train_tokenizer(cfg, splits, run_dir)
        accelerator, history = trainer.accelerator, trainer.history
        rolled_back = trainer.nonfinite_total
        images = (
            (trainer.step - start_step)
            * cfg.train.batch_size
            * cfg.train.grad_accum
            * accelerator.num_processes
        )
        train_images_per_s = images / max(time.perf_counter() - train_started, 1e-9)
    results = {}
    if accelerator.is_main_process:
        save_model(model, run_dir / "tokenizer")  # each file renamed into place: never half-written
        save_reconstruction_grid(
            model,
            to_float(pixel_tensor(splits.heldout.select(range(min(16, len(splits.heldout)))))),
            run_dir / "samples" / "recon_final.png",
        )
        results, _ = evaluate_tokenizer(model, iter_pixel_batches(splits.heldout, cfg.eval_batch_size))
    meta = save_codes(run_dir, model, splits, cfg.eval_batch_size, accelerator)
    if accelerator.is_main_process:
        results.update(
            train_images_per_s=train_images_per_s,
            nonfinite_rolled_back=rolled_back,
            wall_seconds=time.perf_counter() - started,
            skipped_images=splits.skipped,
            grid=[meta["grid_height"], meta["grid_width"]],
            fingerprint=meta["tokenizer_fingerprint"],
            eval_split="held-out",
        )
        write_json({"tokenizer": results, "history": history}, run_dir / "metrics.json")
        codes = load_codes(run_dir / "codes").train_codes
        write_plots(run_dir, history, results, code_counts(codes, meta["vocab_size"]))
        write_json(asdict(cfg), run_dir / "run_config.json")
    accelerator.wait_for_everyone()
    return results
