"""Two ways a prior trained on a small dataset fails that a Fréchet distance hides: near-blank samples, and samples
that copy a training image. Both are measured in pixels, in the tokenizer's output space: a sample is decoded codes,
so it is set against the tokenizer's reconstructions of real images (a prior that returns a training image's code
grid verbatim decodes to exactly that image's reconstruction: distance 0), never against the raw images, which no
decoded sample can come closer to than the tokenizer's own error.

- **Near-blank**: an image whose pixel spread (the standard deviation over its pixels, per channel, on the [0, 1]
  scale, averaged over channels: 0 for a uniform colour) is below BLANK_FRACTION of the median spread of the
  reconstructed training images. The same share of the reconstructed held-out images is the reference.
- **Copy**: an image whose nearest reconstructed training image (RMS pixel distance on [0, 1], images first
  averaged down to at most COMPARE_SIZE px) is closer than COPY_QUANTILE of the reconstructed held-out images' own
  nearest distances to the training set: closer than 99% of new real images come. Held-out images score about
  COPY_QUANTILE by construction (more where the dataset holds near-duplicates); a memorising prior scores more.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BLANK_FRACTION = 0.25  # of the median reconstructed training image's pixel spread
COPY_QUANTILE = 0.01  # of the held-out images' nearest-training distances
COMPARE_SIZE = 32  # images are averaged down to at most this many pixels a side before distances are taken
REFERENCE_IMAGES = 5000  # training images (a seeded random choice beyond this) that samples are compared with


def pixel_spread(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1] -> (B,) standard deviation over each channel's pixels on the [0, 1] scale,
    averaged over channels."""
    x = (images.float().clamp(-1, 1) + 1) / 2
    return x.flatten(2).std(2).mean(1)


def near_blank_share(images: torch.Tensor, threshold: float) -> float:
    """The share of images whose pixel spread is below `threshold` (blank_threshold)."""
    return float((pixel_spread(images) < threshold).float().mean())


def blank_threshold(real: torch.Tensor) -> float:
    """The spread under which an image counts as near-blank: BLANK_FRACTION of the real images' median."""
    return BLANK_FRACTION * float(pixel_spread(real).median())


def compact(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> (B, D) on [0, 1], averaged down to at most COMPARE_SIZE px a side."""
    x = (images.float().clamp(-1, 1) + 1) / 2
    size = min(COMPARE_SIZE, x.shape[-1])
    return F.adaptive_avg_pool2d(x, size).flatten(1)


def nearest_train_distance(
    images: torch.Tensor, train: torch.Tensor, chunk: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D) compact images against (N, D) compact training images -> (B,) RMS distance to the nearest training
    image and (B,) its index, over chunks of `chunk` training images."""
    best = torch.full((len(images),), float("inf"))
    index = torch.zeros(len(images), dtype=torch.long)
    for lo in range(0, len(train), chunk):
        d = torch.cdist(images.double(), train[lo : lo + chunk].double()).float()  # (B, chunk)
        value, at = d.min(1)
        closer = value < best
        best, index = torch.where(closer, value, best), torch.where(closer, at + lo, index)
    return best / images.shape[1] ** 0.5, index


@dataclass
class SampleReference:
    """What samples are checked against: the compact reconstructed training images and the two thresholds."""

    train: torch.Tensor  # (N, D) compact reconstructed training images
    blank_threshold: float
    copy_threshold: float
    summary: dict  # the thresholds and the evaluation split's own figures (metrics.json's `sample_checks`)


def sample_reference(train_recon: torch.Tensor, heldout_recon: torch.Tensor) -> SampleReference:
    """The reference from reconstructed training and held-out images ((N, C, H, W) and (M, C, H, W) in [-1, 1])."""
    train = compact(train_recon)
    distance, _ = nearest_train_distance(compact(heldout_recon), train)
    blank = blank_threshold(train_recon)
    copy = float(distance.quantile(COPY_QUANTILE))
    summary = {
        "train_images": len(train),
        "eval_images": len(heldout_recon),
        "blank_threshold": blank,
        "copy_threshold": copy,
        "eval_near_blank_share": near_blank_share(heldout_recon, blank),
        "eval_nearest_train_rms_median": float(distance.median()),
        "eval_nearest_train_rms_min": float(distance.min()),
    }
    return SampleReference(train, blank, copy, summary)


def check_samples(spread: torch.Tensor, compact_samples: torch.Tensor, ref: SampleReference) -> dict:
    """Near-blank share, copy share and nearest-training distances (median, min) of decoded samples, given their
    (B,) pixel_spread and (B, D) compact form (taken chunk by chunk as they are sampled)."""
    distance, _ = nearest_train_distance(compact_samples, ref.train)
    return {
        "near_blank_share": float((spread < ref.blank_threshold).float().mean()),
        "copy_share": float((distance < ref.copy_threshold).float().mean()),
        "nearest_train_rms_median": float(distance.median()),
        "nearest_train_rms_min": float(distance.min()),
    }


@torch.no_grad()
def run_reference(
    tokenizer, train, heldout_codes: torch.Tensor, batch_size: int, seed: int
) -> SampleReference:
    """The reference of an evaluation: up to REFERENCE_IMAGES training images (`train`, a PixelSplit; a seeded
    choice when there are more) encoded and decoded by `tokenizer`, and the held-out images' codes decoded."""
    from vqgen.stages.data.images import to_float
    from vqgen.stages.sampling.sampler import decode

    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:REFERENCE_IMAGES]
    device = next(tokenizer.parameters()).device
    recon = []
    for lo in range(0, len(pick), batch_size):
        pixels = train[pick[lo : lo + batch_size].sort().values]
        recon.append(tokenizer.decode(tokenizer.encode(to_float(pixels.to(device)))).cpu())
    return sample_reference(torch.cat(recon), decode(tokenizer, heldout_codes, batch_size))
