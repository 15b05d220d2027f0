"""Sampling: a prior draws code grids, the tokenizer it was trained on decodes them into images.

Writes a PNG grid (`--out`) and every image on its own in a folder beside it (`<out stem>/00000_label7.png`).
A prior paired with the wrong tokenizer (codebook size, grid shape or fingerprint) is refused.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from priors import Prior, load_prior
from stages import metrics as M
from stages.errors import UserError
from stages.hub import load_tokenizer


@dataclass
class GenerateConfig:
    prior: str = "runs/demo/prior-gru"  # prior folder (or Hub id)
    tokenizer: str | None = None  # default: the `tokenizer` folder beside the prior
    labels: list[int] | None = None  # one label for all, or one per sample; None = a row per class
    n: int = 100
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float = 3.0  # classifier-free guidance for conditional priors (1 = off)
    seed: int = 0
    batch_size: int = 100
    out: str | None = None  # grid PNG; default <prior>/generated.png
    overwrite: bool = False


def class_grid_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """(num_classes * per_class,) labels, one class per grid row: 0 0 0 ... 1 1 1 ..."""
    return torch.arange(num_classes).repeat_interleave(per_class)


@torch.no_grad()
def decode_grid(tokenizer, grids: torch.Tensor, nrow: int) -> Image.Image:
    images = tokenizer.decode(grids.to(next(tokenizer.parameters()).device)).cpu()
    return M.image_grid(images, nrow=nrow)


def check_pair(prior: Prior, tokenizer) -> None:
    """Refuse a prior and tokenizer that do not belong together."""
    pc, tc = prior.config, tokenizer.config
    if pc.vocab_size != tc.quantizer.codebook_size:
        raise UserError(
            f"the prior models {pc.vocab_size} codes but the tokenizer has {tc.quantizer.codebook_size}; "
            "pass the tokenizer the prior was trained on (--tokenizer)"
        )
    if (pc.grid_height, pc.grid_width) != (tc.grid_size, tc.grid_size):
        raise UserError(
            f"the prior's grid {pc.grid_height}x{pc.grid_width} does not match the tokenizer's {tc.grid_size}x{tc.grid_size}"
        )
    if pc.tokenizer_fingerprint and pc.tokenizer_fingerprint != tokenizer.fingerprint():
        raise UserError(
            f"the prior was trained on tokenizer {pc.tokenizer_fingerprint}, not on this one ({tokenizer.fingerprint()}); "
            "pass the tokenizer the prior was trained on (--tokenizer)"
        )


def validate(cfg: GenerateConfig, prior: Prior) -> torch.Tensor | None:
    """Check sampling options; return the (n,) labels to sample, or None for unconditional sampling."""
    if cfg.n < 1:
        raise UserError(f"--n must be at least 1, got {cfg.n}")
    if cfg.temperature <= 0:
        raise UserError(f"--temperature must be > 0, got {cfg.temperature}")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {cfg.top_k}")
    if cfg.top_p is not None and not 0 < cfg.top_p <= 1:
        raise UserError(f"--top-p must lie in (0, 1], got {cfg.top_p}")
    k = prior.config.num_classes
    if not cfg.labels:
        if k == 0:
            return None
        per_class = max(1, cfg.n // k)
        return class_grid_labels(k, per_class)[: cfg.n] if cfg.n >= k else torch.arange(cfg.n) % k
    if k == 0:
        raise UserError("--label given, but this prior is unconditional (it was trained without labels)")
    bad = [lab for lab in cfg.labels if not 0 <= lab < k]
    if bad:
        raise UserError(f"--label {bad[0]} is outside the trained classes 0..{k - 1}")
    if len(cfg.labels) == 1:
        return torch.full((cfg.n,), cfg.labels[0], dtype=torch.long)
    if len(cfg.labels) != cfg.n:
        raise UserError(f"give one --label, or exactly --n {cfg.n} of them (got {len(cfg.labels)})")
    return torch.tensor(cfg.labels, dtype=torch.long)


def run_generate(cfg: GenerateConfig) -> dict:
    prior = load_prior(cfg.prior)
    tok_path = cfg.tokenizer or str(Path(cfg.prior).parent / "tokenizer")
    tokenizer = load_tokenizer(tok_path)
    check_pair(prior, tokenizer)
    labels = validate(cfg, prior)
    n = cfg.n if labels is None else labels.numel()
    out = Path(cfg.out) if cfg.out else Path(cfg.prior) / "generated.png"
    folder = out.with_suffix("")
    if (out.exists() or folder.exists()) and not cfg.overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    prior.eval()
    tokenizer.eval()
    generator = torch.Generator(device=prior.device).manual_seed(cfg.seed)
    grids, start = [], time.perf_counter()
    for i in range(0, n, cfg.batch_size):
        lab = labels[i : i + cfg.batch_size] if labels is not None else None
        b = lab.numel() if lab is not None else min(cfg.batch_size, n - i)
        grids.append(
            prior.sample(b, lab, cfg.temperature, cfg.top_k, cfg.top_p, cfg.cfg_scale, generator).cpu()
        )
    seconds = time.perf_counter() - start
    grids = torch.cat(grids)
    images = torch.cat([tokenizer.decode(grids[i : i + 256]) for i in range(0, n, 256)])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            name = f"{i:05d}" + (f"_label{int(labels[i])}" if labels is not None else "") + ".png"
            M.save_png(M.image_grid(image[None], nrow=1, pad=0), folder / name)
        per_row = (
            (n // prior.config.num_classes)
            if labels is not None and not cfg.labels and n >= prior.config.num_classes
            else min(n, 10)
        )
        M.save_png(M.image_grid(images, nrow=max(1, per_row)), out)
    except OSError as exc:
        raise UserError(f"cannot write samples to {out}: {exc.strerror or exc}") from None
    return {
        "n": n, "out": str(out), "folder": str(folder), "seconds": seconds,
        "tokens_per_s": n * prior.config.seq_len / seconds, "labels": labels, "grids": grids, "images": images,
    }  # fmt: skip
