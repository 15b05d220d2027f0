"""The VQGAN tokenizer family (Esser et al. 2021, arXiv:2012.09841), sized as LlamaGen's VQ-8 and VQ-16
(Sun et al. 2024, arXiv:2406.06525; github.com/FoundationVision/LlamaGen, tokenizer/tokenizer_image/vq_model.py).

Encoder: conv_in -> per level (widths base_channels * ch_mult[i]): GroupNorm + SiLU residual blocks, self-attention
in the `attn_levels` lowest-resolution levels, a stride-2 convolution between levels -> a middle block (residual,
attention, residual) -> GroupNorm, SiLU, conv to `latent_channels`. The decoder mirrors it with one more residual
block per level (`decoder_extra_blocks`) and nearest-neighbour upsampling. The quantizer (vq, fsq, lfq) sits between.
An image (B, C, S, S) becomes a code grid (B, S/f, S/f) with f = 2**(len(ch_mult) - 1).

Attention is placed by level rather than by pixel size (taming's `attn_resolutions`), so a preset keeps its
attention at the lowest resolution whatever image size it is trained at.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from vqgen.stages.tokenizer.base import QuantizerConfig, Tokenizer, TokenizerConfig, build_quantizer


@dataclass
class VQGANConfig(TokenizerConfig):
    model_type: str = "vqgan"
    base_channels: int = 64  # width of the first level
    # width multiplier per level; f = 2**(levels-1)
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1  # residual blocks per level in the encoder
    decoder_extra_blocks: int = 1  # the decoder has num_res_blocks + this many per level (a deeper decoder)
    # self-attention in this many lowest-resolution levels (the middle block always has it)
    attn_levels: int = 1
    norm_groups: int = 32  # GroupNorm groups (the largest divisor of a width up to this)
    mid_attention: bool = True  # self-attention in the middle blocks (diffusers' mid_block_add_attention)
    # where an imported model came from (`vqgen import`): format, source, file, sha256, licence; None if trained here
    provenance: dict | None = None

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def downsample_origin(self) -> str:
        return f" (len(ch_mult) = {len(self.ch_mult)} levels)"

    def validate(self) -> None:
        """Raise ValueError with a one-line message for an impossible configuration."""
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ValueError(f"ch_mult must be a non-empty list of positive multipliers, got {self.ch_mult}")
        super().validate()
        if min(self.base_channels, self.latent_channels, self.norm_groups) < 1:
            raise ValueError("base_channels, latent_channels and norm_groups must be at least 1")


def norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(ch, groups), ch, eps=1e-6)


class ResBlock(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))), with a 1x1 shortcut when the width changes."""

    def __init__(self, ch_in: int, ch_out: int, groups: int):
        super().__init__()
        self.block = nn.Sequential(
            norm(ch_in, groups),
            nn.SiLU(),
            nn.Conv2d(ch_in, ch_out, 3, padding=1),
            norm(ch_out, groups),
            nn.SiLU(),
            nn.Conv2d(ch_out, ch_out, 3, padding=1),
        )
        self.shortcut = nn.Conv2d(ch_in, ch_out, 1) if ch_in != ch_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions of a feature map."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # 3 x (B, H*W, C)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H*W, C)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as taming: halves H and W exactly


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # doubles H and W


def level(ch_in: int, ch_out: int, blocks: int, attn: bool, groups: int) -> list[nn.Module]:
    """`blocks` residual blocks, each followed by self-attention when `attn`."""
    layers: list[nn.Module] = []
    for i in range(blocks):
        layers.append(ResBlock(ch_in if i == 0 else ch_out, ch_out, groups))
        layers += [AttnBlock(ch_out, groups)] if attn else []
    return layers


def middle(ch: int, groups: int, attn: bool = True) -> list[nn.Module]:
    return [ResBlock(ch, ch, groups), *([AttnBlock(ch, groups)] if attn else []), ResBlock(ch, ch, groups)]


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        g, n = cfg.norm_groups, len(cfg.ch_mult)
        widths = [cfg.base_channels * m for m in cfg.ch_mult]
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, cfg.base_channels, 3, padding=1)]
        ch = cfg.base_channels
        for i, w in enumerate(widths):
            layers += level(ch, w, cfg.num_res_blocks, i >= n - cfg.attn_levels, g)
            ch = w if cfg.num_res_blocks else ch
            layers += [Downsample(ch)] if i < n - 1 else []
        layers += middle(ch, g, cfg.mid_attention) + [
            norm(ch, g),
            nn.SiLU(),
            nn.Conv2d(ch, cfg.latent_channels, 3, padding=1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, latent, S/f, S/f)


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        g, n = cfg.norm_groups, len(cfg.ch_mult)
        ch = cfg.base_channels * cfg.ch_mult[-1]
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.latent_channels, ch, 3, padding=1),
            *middle(ch, g, cfg.mid_attention),
        ]
        for i in reversed(range(n)):
            w = cfg.base_channels * cfg.ch_mult[i]
            blocks = cfg.num_res_blocks + cfg.decoder_extra_blocks
            layers += level(ch, w, blocks, i >= n - cfg.attn_levels, g)
            ch = w if blocks else ch
            layers += [Upsample(ch)] if i > 0 else []
        layers += [norm(ch, g), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(ch, cfg.channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.net(z))  # (B, C, S, S)


def _llamagen(ch_mult: list[int]) -> VQGANConfig:
    """LlamaGen's VQ-8 / VQ-16 at 256 px: width 128, 2 residual blocks, 256 latent channels, 16,384 l2-normalised
    8-dimensional codes."""
    q = QuantizerConfig(codebook_size=16384, code_dim=8, cosine=True)
    return VQGANConfig(
        image_size=256,
        channels=3,
        base_channels=128,
        ch_mult=ch_mult,
        num_res_blocks=2,
        latent_channels=256,
        quantizer=q,
    )


class VQGAN(Tokenizer, tags=["vqgen", "vqgan", "image-tokenizer"]):
    PRESETS = {
        "vqgan-f8": _llamagen([1, 2, 2, 4]),
        "vqgan-f16": _llamagen([1, 1, 2, 2, 4]),
        "vqgan-tiny": VQGANConfig(  # for tests: seconds on a CPU
            image_size=16,
            base_channels=8,
            ch_mult=[1, 2, 2],
            latent_channels=8,
            quantizer=QuantizerConfig(codebook_size=16, code_dim=4),
        ),
    }

    def __init__(self, config: VQGANConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = build_quantizer(config.latent_channels, config.quantizer)
        self.decoder = Decoder(config)
