"""Distribution metrics between sets of images in a feature space: Fréchet distance, precision and recall.

Feature spaces:
- `inception-v3`: the 2048-d pool features of the Inception network that FID is defined with, through torchmetrics
  (which fetches torch-fidelity's weights). Optional: used only when it imports and its weights load.
- `classifier-<dataset>`: the penultimate layer of the small CNN of stages/classifier.py trained on the run's own
  training split, as for MNIST FID in TF-GAN's examples. Always available offline; its distances are on another
  scale than Inception FIDs, so every report names the features it used.

Fréchet distance (Heusel et al. 2017, arXiv:1706.08500) between Gaussians fitted to two feature sets:
    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).
Precision and recall (Kynkäänniemi et al. 2019, arXiv:1904.06991): each set's manifold is the union of balls
around its points with radius = the distance to the k-th nearest neighbour within the set; precision is the fraction
of generated points inside the real manifold, recall the fraction of real points inside the generated one.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from vqgen.stages.core.errors import UserError, first_line
from vqgen.stages.data.images import to_float

INCEPTION = "inception-v3"


@dataclass
class FeatureSpace:
    name: str  # "inception-v3" or "classifier-<dataset>": reported next to every distance
    dim: int
    extract: Callable[[torch.Tensor], torch.Tensor]  # (B, C, S, S) in [-1, 1] on the device -> (B, dim)
    device: torch.device


@torch.no_grad()
def extract_features(space: FeatureSpace, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """(N, C, S, S) images, uint8 pixels or floats in [-1, 1], on any device -> (N, dim) float64 CPU features."""
    as_float = to_float if images.dtype == torch.uint8 else lambda x: x.float()
    out = [
        space.extract(as_float(images[i : i + batch_size].to(space.device))).double().cpu()
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, space.dim, dtype=torch.float64)


def classifier_space(classifier, name: str, device: torch.device) -> FeatureSpace:
    """The penultimate layer of a vqgen.stages.evaluation.classifier.Classifier as a feature space."""
    classifier = classifier.to(device).eval()
    return FeatureSpace(name, classifier.config.feature_dim, classifier.features, torch.device(device))


def inception_space(device: torch.device) -> FeatureSpace:
    """torchmetrics' FID Inception v3 (2048-d pool features); raises if torchmetrics, torch-fidelity or the weights
    are unavailable. Images are repeated to three channels and given as uint8, which the network resizes to 299."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"]).to(device)

    def extract(images: torch.Tensor) -> torch.Tensor:
        rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        return net(((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))

    return FeatureSpace(INCEPTION, 2048, extract, torch.device(device))


def choose_space(
    mode: str, device: torch.device, classifier, classifier_name: str, log: Callable[[str], None] = print
) -> FeatureSpace | None:
    """The feature space for `mode` (auto | inception | classifier). `auto` tries Inception and falls back to the
    classifier with one line saying why; None when neither is available (an unlabelled dataset offline)."""
    if mode not in ("auto", "inception", "classifier"):
        raise UserError(f"--features must be auto, inception or classifier, got {mode!r}")
    if mode in ("auto", "inception"):
        try:
            return inception_space(device)
        except Exception as exc:  # not installed, offline, corrupt download: all mean "not available here"
            reason = first_line(exc)
            if mode == "inception":
                raise UserError(
                    f"--features inception: Inception weights could not be loaded ({reason}); install "
                    "torchmetrics[image] with network access, or use --features classifier"
                ) from None
            fallback = (
                classifier_name if classifier is not None else "no features (the dataset has no labels)"
            )
            log(f"features: Inception v3 unavailable ({reason}); falling back to {fallback}")
    if classifier is None:
        if mode == "classifier":
            raise UserError("--features classifier needs a labelled dataset to train the classifier on")
        return None
    return classifier_space(classifier, classifier_name, device)


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    x = features.double()
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / max(x.shape[0] - 1, 1)


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition."""
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)).

    Tr((S_a S_b)^(1/2)) = the sum of square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), a symmetric PSD
    matrix similar to S_a S_b, so only symmetric eigendecompositions are needed (no scipy)."""
    root_a = _psd_sqrt(cov_a)
    inner = root_a @ cov_b @ root_a
    tr_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu_a - mu_b
    return float(diff @ diff + cov_a.trace() + cov_b.trace() - 2 * tr_sqrt)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to (N, D) and (M, D) feature sets."""
    return max(0.0, frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b)))


def knn_radii(x: torch.Tensor, k: int = 3, chunk: int = 1024) -> torch.Tensor:
    """(N,) distance from each row of (N, D) x to its k-th nearest neighbour in x, itself excluded."""
    if x.shape[0] <= k:
        raise ValueError(f"need more than k={k} points for k-NN radii, got {x.shape[0]}")
    # k + 1: the zero distance to itself comes first
    return torch.cat(
        [torch.cdist(x[i : i + chunk], x).kthvalue(k + 1, dim=1).values for i in range(0, x.shape[0], chunk)]
    )


def inside_manifold(
    queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """(Q,) bool: is each query within radii[j] of some points[j]?"""
    return torch.cat(
        [
            (torch.cdist(queries[i : i + chunk], points) <= radii[None]).any(1)
            for i in range(0, queries.shape[0], chunk)
        ]
    )


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of (M, D) generated features against (N, D) real
    ones, with k-NN radii (k = 3 as in the paper)."""
    real, fake = real.double(), fake.double()
    precision = inside_manifold(fake, real, knn_radii(real, k)).double().mean()
    recall = inside_manifold(real, fake, knn_radii(fake, k)).double().mean()
    return float(precision), float(recall)
