"""Image quality metrics and sample grids, in plain torch (no torchvision).

Images are float tensors (B, C, H, W) in [-1, 1]; metrics are computed on the [0, 1] scale, per image, then
averaged over images.
"""

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image


def mse_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared error on the [0, 1] scale."""
    return ((x.clamp(-1, 1) - y.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)


def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) peak signal-to-noise ratio in dB on the [0, 1] scale (identical images are capped at 100 dB)."""
    return 10 * torch.log10(1.0 / mse_per_image(x, y).clamp(min=1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()  # (size, size)


def ssim_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) structural similarity (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03,
    on the [0, 1] scale, valid region only, averaged over channels."""
    x = (x.clamp(-1, 1).double() + 1) / 2
    y = (y.clamp(-1, 1).double() + 1) / 2
    c = x.shape[1]
    size = min(11, x.shape[-1], x.shape[-2])
    win = _gaussian_window(size).double().to(x.device).expand(c, 1, size, size)
    filt = lambda t: F.conv2d(t, win, groups=c)  # noqa: E731
    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim_map.flatten(1).mean(1).float()


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """(B,) mean finite-difference gradient magnitude: a sharpness measure (blurry reconstructions score lower)."""
    x = (x.clamp(-1, 1) + 1) / 2
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return torch.sqrt(dx[..., :-1, :] ** 2 + dy[..., :, :-1] ** 2 + 1e-12).flatten(1).mean(1)


def codebook_stats(counts: torch.Tensor) -> dict[str, float]:
    """Usage (fraction of codes used at least once), perplexity and dead codes from a (K,) histogram."""
    total = counts.sum().clamp(min=1)
    probs = counts.float() / total
    entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum()
    used = int((counts > 0).sum())
    return {
        "codebook_usage": used / counts.numel(),
        "perplexity": float(math.exp(float(entropy))),
        "dead_codes": counts.numel() - used,
    }


def image_grid(images: torch.Tensor, nrow: int, pad: int = 2) -> Image.Image:
    """(B, C, H, W) in [-1, 1] -> a PIL grid image with `nrow` images per row."""
    images = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    b, c, h, w = images.shape
    rows = math.ceil(b / nrow)
    grid = torch.zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad, dtype=torch.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    arr = grid.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")


def save_png(image: Image.Image, path: Path) -> None:
    """Write a PNG atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def write_json(data: dict, path: Path) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
