"""Image quality metrics and plots, in plain torch (no torchvision).

Images are float tensors (B, C, H, W) in [-1, 1]; metrics are computed on the [0, 1] scale, per image, then
averaged over images.
"""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from vqgen.stages.core.files import save_png


def mse_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared error on the [0, 1] scale."""
    return ((x.clamp(-1, 1) - y.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)


def l1_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) mean absolute error on the [0, 1] scale."""
    return ((x.clamp(-1, 1) - y.clamp(-1, 1)) / 2).abs().flatten(1).mean(1)


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
    return gradient_map(x).flatten(1).mean(1)


def gradient_map(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [-1, 1] -> (B, C, H - 1, W - 1) finite-difference gradient magnitude in [0, 1] units."""
    x = (x.clamp(-1, 1) + 1) / 2
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return torch.sqrt(dx[..., :-1, :] ** 2 + dy[..., :, :-1] ** 2 + 1e-12)


def edge_gradient_sums(recon: torch.Tensor, ref: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """(2,) summed gradient magnitude of `recon` and of `ref` over the edge pixels of `ref` (its gradient above
    `threshold`). Their ratio is a sharpness measure that, unlike the mean over all pixels, ignores faint noise
    in flat regions: a blurred edge has a lower gradient where the original's edge is."""
    g_ref = gradient_map(ref)
    edges = g_ref > threshold
    return torch.stack([gradient_map(recon)[edges].sum(), g_ref[edges].sum()])


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


def scatter_plot(points: list[tuple[float, float, str]], xlabel: str, ylabel: str, path: Path) -> None:
    """A labelled scatter plot of (x, y, name) points as a PNG: with matplotlib when it is installed (the `plot`
    extra), otherwise drawn with PIL, so that no plotting library is required."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        save_png(_pil_scatter(points, xlabel, ylabel), path)
        return
    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for x, y, name in points:
        ax.scatter([x], [y])
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


def _pil_scatter(points: list[tuple[float, float, str]], xlabel: str, ylabel: str) -> Image.Image:
    """The same plot drawn with PIL: a frame, five ticks per axis, a dot and a name per point."""
    from PIL import ImageDraw

    w, h, left, right, top, bottom = 640, 440, 80, 30, 40, 60
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)

    def span(values: list[float]) -> tuple[float, float]:
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.15 or abs(hi) * 0.1 or 1.0
        return lo - pad, hi + pad

    (x0, x1), (y0, y1) = span([p[0] for p in points]), span([p[1] for p in points])
    px = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)  # noqa: E731
    py = lambda y: h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)  # noqa: E731
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * (i + 0.5) / 5, y0 + (y1 - y0) * (i + 0.5) / 5
        draw.line([px(xv), h - bottom, px(xv), h - bottom + 5], fill="black")
        draw.text((px(xv) - 20, h - bottom + 8), f"{xv:,.4g}", fill="black")
        draw.line([left - 5, py(yv), left, py(yv)], fill="black")
        draw.text((4, py(yv) - 6), f"{yv:.4g}", fill="black")
    for x, y, name in points:
        cx, cy = px(x), py(y)
        draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=(31, 119, 180))
        draw.text((cx + 8, cy - 14), name, fill="black")
    draw.text((left, h - 22), xlabel, fill="black")
    draw.text((left, 12), ylabel, fill="black")
    return image
