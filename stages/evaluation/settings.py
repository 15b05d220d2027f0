"""What an evaluation is run with, and the data it runs on."""

from dataclasses import dataclass

import torch
from vqgen.stages.data.pixels import PixelSplit


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
    stream_reference: int = (
        5000  # runs trained with --streaming: training samples read for the classifier and floor
    )
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
