"""What an evaluation is run with, and the data it runs on."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from vqgen.stages.core.errors import UserError
from vqgen.stages.data.eval_images import load_test_images
from vqgen.stages.data.images import EMBEDDED, DataConfig
from vqgen.stages.data.pixels import PixelSplit, label_array
from vqgen.stages.data.sources import load_image_splits


@dataclass
class EvaluateConfig:
    run_dir: str = "runs/demo"
    test_images: str | None = None  # folder of images (class subfolders = labels) or of MNIST idx files
    n_samples: int = 1000  # generated images per prior (and real training images for the floor)
    cfg_scale: float | None = None  # classifier-free guidance (None = each prior's own default, as generate)
    seed: int = 0  # sampling and the floor's choice of training images
    features: str = "auto"  # auto (Inception if it loads, else the classifier) | inception | classifier
    device: str = "auto"  # cpu | cuda | cuda:N | mps | auto (vqgen.stages.core.device)
    batch_size: int = 250
    classifier_epochs: int = 30
    classifier_width: int = 32
    # runs trained with --streaming: training samples read for the classifier and floor
    stream_reference: int = 5000
    pr_k: int = 3  # nearest neighbour that sets the precision/recall radii (Kynkäänniemi et al. use 3)
    overwrite: bool = False


@dataclass
class EvalData:
    train: "PixelSplit"  # (N, C, S, S) uint8, read when indexed: the run's training split
    train_labels: torch.Tensor  # (N,) long, -1 = unlabelled
    eval: "PixelSplit"  # (M, C, S, S) uint8, read when indexed: the evaluation split
    eval_labels: torch.Tensor
    eval_name: str  # where the evaluation split comes from, for the report
    dataset_tag: str  # names the classifier features: classifier-<tag>
    class_names: list[str]


def run_data_config(run: Path) -> DataConfig:
    """The data settings the run was made with (RUN/run_config.json), or a one-line error."""
    if not run.is_dir():
        raise UserError(f"--run {run}: no such run folder; create it with `cli.py tokenize --run {run}`")
    if not (run / "tokenizer" / "model.safetensors").is_file():
        raise UserError(
            f"--run {run}: no trained tokenizer in {run / 'tokenizer'}; run `cli.py tokenize` first"
        )
    try:
        data = json.loads((run / "run_config.json").read_text())["data"]
        fields = DataConfig.__dataclass_fields__
        data.setdefault("resize", "pad")  # runs made before --resize letterboxed every image
        return DataConfig(**{k: v for k, v in data.items() if k in fields})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--run {run}: cannot read the data settings in run_config.json ({exc})") from None


def load_eval_data(cfg: EvaluateConfig, data_cfg: DataConfig) -> EvalData:
    splits = load_image_splits(data_cfg)
    labels = lambda ds: torch.as_tensor(label_array(ds), dtype=torch.long)  # noqa: E731
    if data_cfg.streaming:  # the real training images: the stream's first ones, prepared once (memory-mapped)
        from vqgen.stages.data.streaming import reference_sample

        splits.train = reference_sample(splits.train, max(cfg.stream_reference, cfg.n_samples))
    train, train_labels = PixelSplit(splits.train), labels(splits.train)
    if cfg.test_images:
        images, image_labels = load_test_images(Path(cfg.test_images), data_cfg, splits.class_names)
        images = PixelSplit(images)
        name = f"test images {cfg.test_images}"
    else:
        images, image_labels = PixelSplit(splits.heldout), labels(splits.heldout)
        name = f"held-out split of {data_cfg.dataset}"
    tag = (
        EMBEDDED
        if data_cfg.dataset == EMBEDDED
        else Path(data_cfg.dataset.rstrip("/")).name.replace("/", "-")
    )
    return EvalData(train, train_labels, images, image_labels, name, tag, splits.class_names)
