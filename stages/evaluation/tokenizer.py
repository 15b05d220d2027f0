"""The one tokenizer evaluation: reconstruction quality, codebook health and speed over uint8 images, in batches.

Used by `tokenize` (on the held-out split, when training ends) and by `evaluate` (with features for the rFID).
"""

import time
from collections.abc import Iterable
from pathlib import Path

import torch
from vqgen.stages.core.files import image_grid, save_png
from vqgen.stages.data.images import to_float
from vqgen.stages.evaluation import fid
from vqgen.stages.evaluation import metrics as M

# images per forward pass and metric call: the peak memory (SSIM windows, gradients) is bounded

METRIC_CHUNK = 100
PER_IMAGE = {"psnr": M.psnr_per_image, "ssim": M.ssim_per_image, "l1": M.l1_per_image, "mse": M.mse_per_image}


@torch.no_grad()
def evaluate_tokenizer(
    tokenizer,
    pixels: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int = 500,
    space=None,
    real_feats=None,
) -> tuple[dict, torch.Tensor]:
    """Metrics over (N, C, S, S) uint8 images, a tensor or an iterable of uint8 batches (as
    vqgen.stages.data.pixels.iter_pixel_batches reads a split: memory then holds one batch of pixels), and their
    (N, h, w) codes. Metrics: PSNR, SSIM, L1, MSE (means over
    images), the sharpness ratios (reconstruction over input gradient magnitude: all pixels, and the inputs' edge
    pixels only), codebook usage, perplexity and dead codes, encode+decode images/s, and with a feature `space`
    the rFID against `real_feats` (None without)."""
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    k = tokenizer.config.quantizer.codebook_size
    counts = torch.zeros(k, dtype=torch.long)
    sums = dict.fromkeys(PER_IMAGE, 0.0)
    grad_sums, edge_sums = torch.zeros(2), torch.zeros(2)
    codes, recon_feats, seconds = [], [], 0.0
    batches = (
        (pixels[i : i + batch_size] for i in range(0, pixels.shape[0], batch_size))
        if isinstance(pixels, torch.Tensor)
        else pixels
    )
    n = 0
    for x in (chunk for batch in batches for chunk in batch.split(METRIC_CHUNK)):
        x = to_float(x.to(device))
        n += x.shape[0]
        start = time.perf_counter()
        c = tokenizer.encode(x)
        recon = tokenizer.decode(c)
        seconds += time.perf_counter() - start
        counts += torch.bincount(c.flatten().cpu(), minlength=k)
        codes.append(c.cpu())
        for name, per_image in PER_IMAGE.items():
            sums[name] += float(per_image(recon, x).sum())
        grad_sums += torch.stack([M.gradient_magnitude(recon).sum(), M.gradient_magnitude(x).sum()]).cpu()
        edge_sums += M.edge_gradient_sums(recon, x).cpu()
        if space is not None:
            recon_feats.append(fid.extract_features(space, recon, batch_size))
    results = {name: total / n for name, total in sums.items()}
    results.update(
        sharpness_ratio=float(grad_sums[0] / grad_sums[1].clamp_min(1e-12)),
        edge_sharpness_ratio=float(edge_sums[0] / edge_sums[1].clamp_min(1e-12)),
        **M.codebook_stats(counts),
        eval_images=n,
        images_per_s=n / max(seconds, 1e-9),
        rfid=fid.frechet_distance(real_feats, torch.cat(recon_feats)) if space is not None else None,
    )
    return results, torch.cat(codes)


@torch.no_grad()
def save_reconstruction_grid(model, images: torch.Tensor, path: Path) -> None:
    """Top row(s): inputs; bottom row(s): reconstructions."""
    model.eval()
    device = next(model.parameters()).device
    recon = model.decode(model.encode(images.to(device))).cpu()
    n = images.shape[0]
    save_png(image_grid(torch.cat([images, recon]), nrow=min(n, 8) if n > 8 else n), path)
