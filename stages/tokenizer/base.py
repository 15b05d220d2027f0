"""The tokenizer contract: what every architecture and every quantizer provides, in one file.

A quantizer (`Quantizer`, configured by a `QuantizerConfig`) takes encoder features z (B, C, H, W) and returns a
`QuantizerOutput`: z_q (B, C, H, W) with straight-through gradients, codes (B, H, W) integers in
[0, K), a loss, the batch's perplexity and the number of dead codes. It has `codebook_size` (K), `lookup(codes)`
(codes -> decoder input, (B, C, H, W)), and for tests and tools `code_vectors(codes)` (codes -> (..., D) vectors
in its own space) and `nearest(flat)` ((N, D) vectors -> (N,) codes), with nearest(code_vectors(c)) == c.

Quantizers without a codebook (fsq, lfq) share `CodebookFreeQuantizer`: a projection to a few values per position,
rounded on a fixed grid, and usage counted by a `UsageTracker`.

A tokenizer (`Tokenizer`, configured by a subclass of `TokenizerConfig`) is an encoder, a quantizer and a decoder,
saved in the Hub layout through
PyTorchModelHubMixin. Everything downstream (codes, priors, generate, evaluate, push, the Pipeline) uses only
`encode`, `decode`, `fingerprint()`, `last_layer` and the config's `model_type`, `image_size`, `channels`,
`grid_size` and `quantizer.codebook_size`. Priors see nothing but K and the grid.

Quantizers are found by `QuantizerConfig.kind` through a lookup the host installs (its registry, with entry
points); without the host the built-ins (`BUILTIN_QUANTIZERS`) are found by import path.
"""

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
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
# The same for a model config's own fields (VQGANConfig's mid_attention).
LATER_MODEL_FIELDS = ("mid_attention",)
# Config fields that describe the model but not what it computes: never hashed (the same weights imported from two
# paths are one tokenizer)
METADATA_FIELDS = ("provenance",)


@dataclass
class QuantizerConfig:
    kind: str = "vq"  # the quantizer: "vq" (this file), "fsq" (fsq.py), "lfq" (lfq.py) or an installed one
    codebook_size: int = 512  # K; for fsq the product of `levels`, for lfq 2**code_dim
    # size of a codebook vector; < the encoder's channels means a low-dimensional projection
    code_dim: int = 16
    beta: float = 0.25  # commitment weight, applied to the encoder term ||z_e - sg(z_q)||^2
    # "ema": codebook follows running means of its assigned vectors; "grad": codebook loss
    update: str = "ema"
    ema_decay: float = 0.9
    cosine: bool = False  # l2-normalise vectors and codes, so distance = cosine distance
    init: str = "kmeans"  # "kmeans" | "sample" (random encoder outputs) | "random" (uniform noise)
    kmeans_iters: int = 10
    # a code whose EMA count of assigned vectors per step falls below this is dead ...
    restart_threshold: float = 1.0
    # ... and is restarted from a recent encoder output every this many steps (0 = never)
    restart_every: int = 10
    # ... or, in a codebook larger than a step's vectors can fill, below this share of an even split of them
    # (4,096 codes and 3,136 vectors a step: 0.15; 512 codes: the 1.0 above): `dead_mask`
    restart_share: float = 0.2
    # fsq: values per dimension, K = prod(levels) (fsq.py)
    levels: list[int] = field(default_factory=lambda: [8, 8, 8])
    entropy_weight: float = 0.1  # lfq: weight of the entropy penalty (per-sample minus codebook entropy)
    # vq: 1x1 projections in and out even when code_dim equals the encoder's width (taming's and diffusers'
    # quant_conv / post_quant_conv, which they keep at equal width)
    project: bool = False


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor  # (B, C, H, W) straight-through quantized features
    codes: torch.Tensor  # (B, H, W) code indices
    loss: torch.Tensor  # commitment (+ codebook, for update="grad") loss
    perplexity: torch.Tensor  # exp(entropy) of this batch's code histogram
    dead_codes: torch.Tensor | int = field(default=0)  # codes now dead (EMA usage below threshold); a tensor


@dataclass
class TokenizerConfig:
    """Fields every architecture's config has; an architecture's own config subclasses this, adds its fields and
    gives `downsample` (a field or a property): the code grid is image_size / downsample on a side."""

    model_type: str = ""  # registry name; each subclass sets its own default
    image_size: int = 28  # input images are (channels, image_size, image_size)
    channels: int = 1  # 1 = grey, 3 = RGB
    latent_channels: int = 64  # encoder output width before the quantizer's projection
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.quantizer, dict):  # config.json holds it as a nested dict
            self.quantizer = QuantizerConfig(**self.quantizer)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.downsample

    def downsample_origin(self) -> str:
        """Where the downsampling factor comes from, for the message of an image size it does not divide."""
        return ""

    def validate(self) -> None:
        """Raise ValueError with a one-line message for an impossible configuration."""
        if self.image_size % self.downsample:
            raise ValueError(
                f"image size {self.image_size} is not divisible by the downsampling factor {self.downsample}"
                f"{self.downsample_origin()}; pick an image size that is a multiple of {self.downsample}"
            )
        if self.quantizer.codebook_size < 2:
            raise ValueError(f"codebook size must be at least 2, got {self.quantizer.codebook_size}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")


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


class CodebookFreeQuantizer(Quantizer):
    """A quantizer without a codebook (fsq, lfq): features projected to `dim` values per position, rounded on a
    fixed grid (`code_vectors` gives a code's values, `nearest` a code's index), projected back for the decoder;
    usage counted as VectorQuantizer counts it. `size_of(config)` must equal config.codebook_size."""

    def __init__(self, in_channels: int, config, dim: int):
        super().__init__()
        k = self.size_of(config)
        if config.codebook_size != k:
            raise ValueError(
                f"{config.kind}: these options make {k} codes, but codebook_size is {config.codebook_size}"
            )
        self.config = config
        self.proj_in = nn.Conv2d(in_channels, dim, 1)
        self.proj_out = nn.Conv2d(dim, in_channels, 1)
        self.usage = UsageTracker(k, config.ema_decay, config.restart_threshold, config.restart_share)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        q = self.code_vectors(codes)  # (B, H, W, d)
        # (B, C, H, W)
        return self.proj_out(q.to(self.proj_out.weight.dtype).permute(0, 3, 1, 2).contiguous())


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
        # saved, as VectorQuantizer's: exact resume
        self.register_buffer("ema_count", torch.ones(codebook_size))

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
    # codes currently dead: a 0-d tensor for vq (no device read in the forward)
    dead_codes: torch.Tensor | int


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
    """asdict(config) without its METADATA_FIELDS, and without the LATER_MODEL_FIELDS and its quantizer's
    LATER_FIELDS that still hold their defaults."""

    def defaults(obj) -> dict:
        return {
            f.name: f.default_factory() if callable(f.default_factory) else f.default for f in fields(obj)
        }

    data, top = asdict(config), defaults(config)
    data = {
        k: v
        for k, v in data.items()
        if k not in METADATA_FIELDS and (k not in LATER_MODEL_FIELDS or v != top[k])
    }
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
