"""Sampling code grids from a prior in seeded chunks, and decoding them with its tokenizer."""

from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from vqgen.priors import Prior
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.files import image_grid
from vqgen.stages.sampling.config import SamplingConfig


def class_grid_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """(num_classes * per_class,) labels, one class per grid row: 0 0 0 ... 1 1 1 ..."""
    return torch.arange(num_classes).repeat_interleave(per_class)


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


def resolve_labels(prior: Prior, n: int, labels: list[int] | None) -> torch.Tensor | None:
    """The (n,) labels to sample, or None for an unconditional prior. No labels: a row per class (or the classes
    in turn when n is smaller than their number); one label: that class for all; else exactly n labels."""
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    k = prior.config.num_classes
    if not labels:
        if k == 0:
            return None
        return class_grid_labels(k, max(1, n // k))[:n] if n >= k else torch.arange(n) % k
    if k == 0:
        raise UserError("--label given, but this prior is unconditional (it was trained without labels)")
    bad = [lab for lab in labels if not 0 <= lab < k]
    if bad:
        raise UserError(f"--label {bad[0]} is outside the trained classes 0..{k - 1}")
    if len(labels) == 1:
        return torch.full((n,), labels[0], dtype=torch.long)
    if len(labels) != n:
        raise UserError(f"give one --label, or exactly --n {n} of them (got {len(labels)})")
    return torch.tensor(labels, dtype=torch.long)


def chunk_generator(seed: int, chunk: int, device: torch.device) -> torch.Generator:
    """The generator of chunk `chunk`: an independent stream per (seed, chunk), through numpy's SeedSequence."""
    state = np.random.SeedSequence([seed % 2**64, chunk]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def sample_chunk(
    prior: Prior,
    c: int,
    n: int,
    batch_size: int,
    labels: torch.Tensor | None,
    sampling: SamplingConfig,
    seed: int,
) -> torch.Tensor:
    """Chunk c of `n` grids split into chunks of `batch_size`: (b, H, W) codes, always the same for (seed, c)."""
    lo, hi = c * batch_size, min((c + 1) * batch_size, n)
    lab = labels[lo:hi] if labels is not None else None
    s = sampling.for_prior(prior)
    generator = chunk_generator(seed, c, prior.device)
    try:
        return prior.sample(hi - lo, lab, s, generator=generator)
    except ValueError as exc:  # the prior's plain error (non-finite logits, labels it cannot take): one line
        raise UserError(str(exc)) from None


def sample_chunks(
    prior: Prior,
    n: int,
    batch_size: int,
    labels: torch.Tensor | None,
    sampling: SamplingConfig,
    seed: int,
    chunks: list[int] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(chunk index, (b, H, W) codes) for the given chunks (default: all) of `n` grids."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    for c in chunks if chunks is not None else range((n + batch_size - 1) // batch_size):
        yield c, sample_chunk(prior, c, n, batch_size, labels, sampling, seed)


@torch.inference_mode()
def decode(tokenizer, codes: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(B, H, W) codes -> (B, C, S, S) images in [-1, 1], on the CPU."""
    device = next(tokenizer.parameters()).device
    parts = [
        tokenizer.decode(codes[i : i + batch_size].to(device)).cpu() for i in range(0, len(codes), batch_size)
    ]
    return torch.cat(parts)


def decode_grid(tokenizer, codes: torch.Tensor, nrow: int) -> Image.Image:
    """(B, H, W) codes -> one PNG-ready grid image, `nrow` images per row."""
    return image_grid(decode(tokenizer, codes), nrow=nrow)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, C, S, S) in [-1, 1] -> B PIL images."""
    return [image_grid(image[None], nrow=1, pad=0) for image in images]


def compile_sampling_step(prior: Prior, warn=print, backend: str | None = None) -> bool:
    """`--compile` for sampling: torch.compile the prior's per-token step (`next_logits`, called once per raster
    position) with $VQGEN_COMPILE_BACKEND (default inductor). A step that does not compile (at the first call, when
    torch traces it) falls back to the eager step for the whole run, with one warning line; the samples are the
    prior's either way. Returns whether the compiled step is installed."""
    from vqgen.stages.core.device import compile_backend
    from vqgen.stages.core.errors import one_line

    eager = prior.next_logits
    try:
        compiled = torch.compile(eager, backend=backend or compile_backend(), dynamic=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the compiler means: sample eagerly
        warn(f"warning: --compile: the sampling step does not compile ({one_line(exc)}); sampling without it")
        return False
    failed = False

    def step(state, prev):
        nonlocal failed
        if not failed:
            try:
                return compiled(state, prev)
            except Exception as exc:  # noqa: BLE001
                failed = True
                warn(
                    f"warning: --compile: the sampling step does not compile ({one_line(exc)}); sampling without it"
                )
        return eager(state, prev)

    prior.next_logits = step  # an instance attribute: Prior.sample calls self.next_logits
    return True
