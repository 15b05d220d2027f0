"""A small CNN classifier for the evaluation of generated images: does a sample show the class it was asked for?

Trained once on a labelled split (random shifts and small rotations as augmentation) and cached as
config.json + model.safetensors. Its penultimate layer also serves as the feature space for Fréchet distances on
datasets where Inception features are unavailable or meaningless (as for MNIST FID in TF-GAN's examples).
"""

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from vqgen.stages.core.files import write_json
from vqgen.stages.core.progress import progress
from vqgen.stages.data.images import to_float
from vqgen.stages.evaluation.settings import EvalData, EvaluateConfig


@dataclass
class ClassifierConfig:
    num_classes: int = 10
    channels: int = 1
    image_size: int = 28
    width: int = 32  # channels of the first block; doubled in the second
    feature_dim: int = 128  # penultimate layer, used as the feature space for Fréchet distances


class Classifier(
    nn.Module, PyTorchModelHubMixin, library_name="vqgen", tags=["vqgen", "evaluation-classifier"]
):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w = config.width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.body = nn.Sequential(
            block(config.channels, w), block(w, 2 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.features_head = nn.Sequential(nn.Dropout(0.3), nn.Linear(2 * w, config.feature_dim), nn.ReLU())
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [-1, 1] -> (B, feature_dim)."""
        return self.features_head(self.body(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (B, num_classes) logits


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation (+-12 degrees), scale (0.9-1.1) and shift (+-2 px) of a (B, C, S, S) batch."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(12)
    scale = 0.9 + 0.2 * torch.rand(b, generator=generator)
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * (2 * 2 / x.shape[-1])
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1  # pad with black (-1)


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return to_float(images) if images.dtype == torch.uint8 else images


class _Rows:
    """Some rows of a split (uint8, indexed like a tensor), read when indexed."""

    def __init__(self, split, rows: torch.Tensor):
        self.split, self.rows = split, rows
        self.shape = torch.Size((len(rows), *split.shape[1:]))

    def __getitem__(self, key) -> torch.Tensor:
        return self.split[self.rows[key]]


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, config: ClassifierConfig, epochs: int = 30, seed: int = 0
) -> Classifier:
    """Train on (N, C, S, S) images, in [-1, 1] or uint8 read batch by batch (a split indexed like a tensor), with
    (N,) labels; deterministic for a seed."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Classifier(config)
    steps_per_epoch = math.ceil(images.shape[0] / 128)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in progress(range(epochs), desc="classifier", unit="epoch"):
        order = torch.randperm(images.shape[0], generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * 128 : (i + 1) * 128]
            batch = _as_float(images[idx])
            loss = F.cross_entropy(model(augment(batch, gen)), labels[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = sum(
        int((model(_as_float(images[i : i + batch_size])).argmax(1) == labels[i : i + batch_size]).sum())
        for i in range(0, images.shape[0], batch_size)
    )
    return correct / images.shape[0]


def load_or_train(
    path: Path, images: torch.Tensor, labels: torch.Tensor, config: ClassifierConfig, epochs: int = 30
) -> Classifier:
    """The classifier cached at `path`, trained and saved there first if it is not."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        from vqgen.stages.artifacts.models import load_model

        return load_model(Classifier, path, "classifier")  # safetensors only, config.json checked
    model = train_classifier(images, labels, config, epochs=epochs)
    from vqgen.stages.artifacts.models import save_model

    save_model(model, path)  # each file renamed into place; a full disk is one line
    return model


def eval_classifier(
    run: Path, data: EvalData, cfg: EvaluateConfig, log: Callable[[str], None]
) -> tuple[Classifier | None, dict]:
    """The run's classifier, trained on its labelled training images once and cached in RUN/eval-classifier
    (retrained when the cache was made with other settings); None for an unlabelled dataset."""
    keep = data.train_labels >= 0
    if len(data.class_names) < 2 or int(keep.sum()) < 2:
        return None, {}
    path = run / "eval-classifier"
    settings = {
        "dataset": data.dataset_tag,
        "epochs": cfg.classifier_epochs,
        "width": cfg.classifier_width,
        "train_images": int(keep.sum()),
        "num_classes": len(data.class_names),
    }
    info_file = path / "training.json"
    cached = json.loads(info_file.read_text()) if info_file.is_file() else None
    if cached != settings:
        if path.exists():
            log(f"classifier: the cache in {path} was made with other settings; retraining")
            shutil.rmtree(path)
        log(f"classifier: training on {settings['train_images']} images ({cfg.classifier_epochs} epochs)...")
    config = ClassifierConfig(
        num_classes=len(data.class_names),
        channels=data.train.shape[1],
        image_size=data.train.shape[-1],
        width=cfg.classifier_width,
    )
    start = time.perf_counter()
    model = load_or_train(
        path,
        _Rows(data.train, keep.nonzero().flatten()),
        data.train_labels[keep],
        config,
        cfg.classifier_epochs,
    )
    if cached != settings:
        write_json(settings, info_file)
    labelled = data.eval_labels >= 0
    eval_acc = (
        accuracy(model, _Rows(data.eval, labelled.nonzero().flatten()), data.eval_labels[labelled])
        if labelled.any()
        else None
    )
    info = {**settings, "path": str(path), "seconds": time.perf_counter() - start, "eval_accuracy": eval_acc}
    return model, info
