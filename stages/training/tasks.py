"""The stages' training tasks: what the trainer needs from stage one (the tokenizer on images) and stage two (a
prior on code grids) (the `TrainTask` contract in vqgen.stages.training.trainer)."""

import math
from pathlib import Path

import torch
from vqgen.priors import Prior
from vqgen.stages.artifacts.codes import CodeSplits
from vqgen.stages.core.files import save_png
from vqgen.stages.data.images import DataConfig, ImageSplits, to_float
from vqgen.stages.data.pixels import augment, pixel_tensor, read_rows
from vqgen.stages.evaluation import metrics as M
from vqgen.stages.evaluation.priors import evaluate_prior
from vqgen.stages.evaluation.tokenizer import save_reconstruction_grid
from vqgen.stages.sampling.config import SamplingConfig
from vqgen.stages.sampling.sampler import class_grid_labels, decode_grid
from vqgen.stages.tokenizer import Tokenizer
from vqgen.stages.tokenizer.base import TokenizerConfig

IN_MEMORY_BYTES = 256 << 20  # training splits up to 256 MiB of uint8 pixels are held in memory


def model_config(model) -> TokenizerConfig:
    return getattr(model, "module", model).config


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


class PriorTask:
    """What the trainer needs from stage two (stages/trainer.py: TrainTask)."""

    stage = "prior"
    progress_keys = ("bits_per_token",)
    # the trainer keeps the weights that score lowest on the held-out codes
    best_metric = "val_bits_per_token"
    shardable = True  # FSDP may shard it (stages/training/sharding.py)

    def __init__(self, model: Prior, codes: CodeSplits, tokenizer=None, eval_batch_size: int = 256):
        self.model, self.codes, self.tokenizer = model, codes, tokenizer
        self.conditional = model.config.num_classes > 0
        self.eval_batch_size = eval_batch_size

    def num_examples(self) -> int:
        return self.codes.train_codes.shape[0]

    def get_batch(self, indices: torch.Tensor, device: torch.device):
        """(codes (B, H, W), labels (B,) or None); with augmented views the codes of every view, (V, B, H, W),
        of which `augment` draws one per image."""
        labels = self.codes.train_labels[indices].to(device) if self.conditional else None
        if self.codes.train_views is not None:
            return self.codes.train_views[:, indices].to(device), labels
        return self.codes.train_codes[indices].to(device), labels

    def augment(self, batch, seed: int, micro_batch: int):
        """One view per image, drawn from a generator seeded from (seed, micro-batch): exact on resume, and the
        global random stream (dropout, label dropout) is the same as without views."""
        if self.codes.train_views is None:
            return batch
        views, labels = batch  # (V, B, H, W)
        generator = torch.Generator().manual_seed((seed * 1_000_003 + micro_batch) % (2**63))
        pick = torch.randint(0, views.shape[0], (views.shape[1],), generator=generator).to(views.device)
        return views[pick, torch.arange(views.shape[1], device=views.device)], labels  # (B, H, W)

    def compute_loss(self, model, batch):
        codes, labels = batch
        out = model(codes, labels)
        return out.loss, out, {"bits_per_token": out.loss.detach() / math.log(2)}  # read back at log steps

    def validate(self, model: Prior) -> dict[str, float]:
        """The held-out NLL of the weights as they are now (every --eval-every steps)."""
        labels = self.codes.val_labels if self.conditional else None
        scores = evaluate_prior(model, self.codes.val_codes, labels, self.eval_batch_size, image_dims=1)
        return {"val_bits_per_token": scores["val_bits_per_token"]}

    def save_samples(self, model: Prior, step: int, run_dir: Path) -> None:
        if self.tokenizer is None:
            return
        labels = class_grid_labels(model.config.num_classes, per_class=8) if self.conditional else None
        n = labels.numel() if labels is not None else 64
        defaults = SamplingConfig().for_prior(model)  # the prior's own, as `generate` uses
        grids = model.sample(
            n, labels, defaults, generator=torch.Generator(device=model.device).manual_seed(0)
        )
        save_png(
            decode_grid(self.tokenizer, grids, nrow=8), Path(run_dir) / "samples" / f"samples_{step:07d}.png"
        )
