"""The tokenizer contract: what every architecture and every quantizer provides, in one file.

A quantizer (`Quantizer`) takes encoder features z (B, C, H, W) and returns a `QuantizerOutput`
(stages/tokenizer/quantizer.py): z_q (B, C, H, W) with straight-through gradients, codes (B, H, W) integers in
[0, K), a loss, the batch's perplexity and the number of dead codes. It has `codebook_size` (K), `lookup(codes)`
(codes -> decoder input, (B, C, H, W)), and for tests and tools `code_vectors(codes)` (codes -> (..., D) vectors
in its own space) and `nearest(flat)` ((N, D) vectors -> (N,) codes), with nearest(code_vectors(c)) == c.

A tokenizer (`Tokenizer`) is an encoder, a quantizer and a decoder, saved in the Hub layout through
PyTorchModelHubMixin. Everything downstream (codes, priors, generate, evaluate, push, the Pipeline) uses only
`encode`, `decode`, `fingerprint()`, `last_layer` and the config's `model_type`, `image_size`, `channels`,
`grid_size` and `quantizer.codebook_size`. Priors see nothing but K and the grid.

Quantizers are found by `QuantizerConfig.kind` through a lookup the host installs (its registry, with entry
points); without the host the built-ins (`BUILTIN_QUANTIZERS`) are found by import path.
"""

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

# name -> "module:Class"; the name is a QuantizerConfig's `kind`.
BUILTIN_QUANTIZERS = {
    "vq": "vqgen.stages.tokenizer.quantizer:VectorQuantizer",
    "fsq": "vqgen.stages.tokenizer.fsq:FSQ",
    "lfq": "vqgen.stages.tokenizer.lfq:LFQ",
}
# Config fields added after tokenizers were first published: hashed into the fingerprint only when they differ from
# their defaults, so a tokenizer saved before they existed keeps its fingerprint (and its priors keep working).
LATER_FIELDS = ("kind", "levels", "entropy_weight", "restart_share", "project")
# The same for a model config's own fields (VQGANConfig's mid_attention, an imported model's provenance).
LATER_MODEL_FIELDS = ("mid_attention", "provenance")


def _import(target: str) -> type:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _builtin_quantizer(kind: str) -> type:
    if kind not in BUILTIN_QUANTIZERS:
        raise ValueError(f"unknown quantizer {kind!r}; available: {', '.join(sorted(BUILTIN_QUANTIZERS))}")
    return _import(BUILTIN_QUANTIZERS[kind])


_quantizer_lookup: Callable[[str], type] = _builtin_quantizer


def use_quantizer_lookup(lookup: Callable[[str], type]) -> None:
    """Let the host find quantizers by name (its registry, entry points included)."""
    global _quantizer_lookup
    _quantizer_lookup = lookup


def build_quantizer(in_channels: int, config) -> "Quantizer":
    """The quantizer `config.kind` names, for encoder features of `in_channels` channels."""
    return _quantizer_lookup(config.kind)(in_channels, config)


class Quantizer(nn.Module):
    """Base class of every quantizer; see the module docstring for the contract."""

    def __init__(self) -> None:
        super().__init__()

    @staticmethod
    def size_of(config) -> int:
        """K for this config (fsq: prod(levels), lfq: 2**code_dim); ValueError for a config that makes no sane
        codebook. The host writes it into config.codebook_size, which everything downstream reads."""
        return config.codebook_size

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:  # (B, H, W) -> (B, C, H, W)
        raise NotImplementedError

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:  # (...) -> (..., D)
        raise NotImplementedError

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N,)
        raise NotImplementedError


def dead_code_mask(ema_count: torch.Tensor, threshold: float, share: float) -> torch.Tensor:
    """(K,) bool: codes whose EMA count of assigned vectors per step is below `threshold`, or below `share` of an
    even split of the step's vectors when that is lower. With more codes than a step has vectors (4,096 codes,
    batches of 64 x 7 x 7), an even split gives each code less than one vector a step, and a fixed threshold of 1
    would call most codes dead (and the VQ quantizer would restart them over and over)."""
    even = ema_count.sum() / ema_count.numel()
    return ema_count < torch.clamp(even * share, max=threshold)


class UsageTracker(nn.Module):
    """Running code usage for quantizers without a codebook to maintain: an EMA of per-step assignment counts
    (as VectorQuantizer keeps), so dead codes and perplexity are reported the same way for every quantizer."""

    def __init__(self, codebook_size: int, decay: float, threshold: float, share: float):
        super().__init__()
        self.decay, self.threshold, self.share = decay, threshold, share
        self.register_buffer(
            "ema_count", torch.ones(codebook_size)
        )  # saved, as VectorQuantizer's: exact resume

    def forward(self, codes: torch.Tensor, training: bool) -> tuple[torch.Tensor, int]:
        """(perplexity of this batch, dead codes) for (N,) codes; the EMA moves in training only."""
        counts = torch.bincount(codes.flatten(), minlength=self.ema_count.numel()).float()
        if training:
            with torch.no_grad():
                self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return perplexity, int(dead_code_mask(self.ema_count, self.threshold, self.share).sum())


def straight_through(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Forward: q; backward: the identity to x (Bengio et al. 2013, arXiv:1308.3432)."""
    return x + (q - x).detach()


@dataclass
class TokenizerOutput:
    recon: torch.Tensor  # (B, C, S, S) reconstruction in [-1, 1] (unclamped)
    codes: torch.Tensor  # (B, S/f, S/f)
    recon_loss: torch.Tensor  # mean squared error
    vq_loss: torch.Tensor  # quantizer loss (commitment, codebook, entropy terms)
    perplexity: torch.Tensor
    dead_codes: (
        torch.Tensor | int
    )  # codes currently dead: a 0-d tensor for vq (no device read in the forward)


class Tokenizer(nn.Module, PyTorchModelHubMixin, library_name="vqgen", tags=["vqgen", "image-tokenizer"]):
    """Base class of every tokenizer architecture: subclasses build `encoder`, `quantizer` and `decoder` in
    __init__(config) and name their size presets in `PRESETS` (name -> config)."""

    PRESETS: ClassVar[dict] = {}
    encoder: nn.Module
    quantizer: Quantizer
    decoder: nn.Module

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        q = self.quantizer(self.encoder(images))
        recon = self.decoder(q.z_q)
        return TokenizerOutput(recon, q.codes, F.mse_loss(recon, images), q.loss, q.perplexity, q.dead_codes)

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's last weight: where VQGAN's adaptive GAN weight compares gradient norms."""
        return self.decoder.conv_out.weight

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images in [-1, 1] -> (B, S/f, S/f) codes."""
        return self.quantizer(self.encoder(images)).codes

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, S/f, S/f) codes -> (B, C, S, S) images in [-1, 1]."""
        return self.decoder(self.quantizer.lookup(codes)).clamp(-1, 1)

    def fingerprint(self) -> str:
        """A short hash of the weights and config: priors record it to refuse a mismatched tokenizer."""
        h = hashlib.sha256(repr(sorted(fingerprint_fields(self.config).items())).encode())
        for name, tensor in sorted(self.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def fingerprint_fields(config) -> dict:
    """asdict(config) without the LATER_MODEL_FIELDS, and the LATER_FIELDS of its quantizer, that still hold their
    defaults."""

    def defaults(obj) -> dict:
        return {
            f.name: f.default_factory() if callable(f.default_factory) else f.default for f in fields(obj)
        }

    data, top = asdict(config), defaults(config)
    data = {k: v for k, v in data.items() if k not in LATER_MODEL_FIELDS or v != top[k]}
    q = defaults(config.quantizer)
    data["quantizer"] = {k: v for k, v in data["quantizer"].items() if k not in LATER_FIELDS or v != q[k]}
    return data


@torch.no_grad()
def count_size(cls: type, config) -> tuple[int, int]:
    """(parameters, FLOPs of encode + decode for one image at config.image_size), measured on the meta device:
    nothing is allocated or computed (torch.utils.flop_counter counts matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    g = config.grid_size
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        model = cls(config).eval()
        model.encoder(torch.empty(1, config.channels, config.image_size, config.image_size))
        model.decoder(model.quantizer.lookup(torch.zeros(1, g, g, dtype=torch.long)))
    return sum(p.numel() for p in model.parameters()), int(counter.get_total_flops())
