"""The stage-one tokenizer: a convolutional VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937).

Encoder: stride-2 convolutions x levels -> residual blocks on the code grid -> latent conv.
Decoder: the mirror image, with stride-2 transposed convolutions. The quantizer (`config.quantizer.kind`: vq, fsq,
lfq) sits between them. An image (B, C, S, S) becomes a code grid (B, S/f, S/f) with f = `downsample`.
The contract it fulfils is stages/tokenizer/base.py; the larger VQGAN family is stages/tokenizer/vqgan.py.

Saved and loaded in the Hub layout (config.json + model.safetensors + README.md) through PyTorchModelHubMixin.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from vqgen.stages.tokenizer.base import Tokenizer, TokenizerConfig, build_quantizer


def downsample_for(image_size: int) -> int:
    """The downsampling factor `tokenize` gives a VQ-VAE when none is asked for: f4 up to 64 px (7x7 codes at
    28 px, 8x8 at 32, 16x16 at 64), f8 up to 128 px and f16 above (16x16 at 128 and 256, as LlamaGen's VQ-16), so
    that larger images do not give grids of thousands of tokens; lowered until it divides the image size."""
    factor = 4 if image_size <= 64 else 8 if image_size <= 128 else 16
    while factor > 1 and image_size % factor:
        factor //= 2
    return factor


@dataclass
class VQVAEConfig(TokenizerConfig):
    model_type: str = "vqvae"
    # spatial reduction factor, a power of two: the code grid is image_size / downsample (tokenize: downsample_for)
    downsample: int = 4
    base_channels: int = 32  # width after the first downsampling; doubled at every further level
    max_channels: int = 128
    num_res_blocks: int = 2  # residual blocks on the code grid, in the encoder and in the decoder

    @property
    def levels(self) -> int:
        return int(math.log2(self.downsample))

    def validate(self) -> None:
        """Raise ValueError with a one-line message for an impossible configuration."""
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of two, got {self.downsample}")
        super().validate()


class ResBlock(nn.Module):
    """The VQ-VAE residual block: x + conv1x1(act(conv3x3(act(x)))), with a bottleneck of half the width."""

    def __init__(self, ch: int):
        super().__init__()
        hidden = max(ch // 2, 1)
        self.block = nn.Sequential(
            nn.SiLU(), nn.Conv2d(ch, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, ch, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _widths(cfg: VQVAEConfig) -> list[int]:
    """Channel width at each downsampled level, highest resolution first (`levels` entries)."""
    return [min(cfg.base_channels * 2**i, cfg.max_channels) for i in range(cfg.levels)]


class Encoder(nn.Module):
    """Strided 4x4 convolutions down to the code grid, then residual blocks there, where they are cheapest."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        widths = _widths(cfg)
        layers: list[nn.Module] = []
        ch = cfg.channels
        for i, w in enumerate(widths):
            layers.append(nn.Conv2d(ch, w, 4, stride=2, padding=1))  # halves H and W
            layers += [] if i == len(widths) - 1 else [nn.SiLU()]
            ch = w
        layers += [ResBlock(ch) for _ in range(cfg.num_res_blocks)]
        layers += [nn.SiLU(), nn.Conv2d(ch, cfg.latent_channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, latent, S/f, S/f)


class Decoder(nn.Module):
    """The encoder's mirror: residual blocks on the code grid, then 4x4 transposed convolutions up."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        widths = _widths(cfg)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)]
        layers += [ResBlock(widths[0]) for _ in range(cfg.num_res_blocks)]
        layers.append(nn.SiLU())
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, stride=2, padding=1), nn.SiLU()]  # doubles H and W
        self.net = nn.Sequential(*layers)
        self.conv_out = nn.ConvTranspose2d(widths[-1], cfg.channels, 4, stride=2, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.net(z))  # (B, C, S, S)


class VQVAE(Tokenizer, tags=["vqgen", "vq-vae", "image-tokenizer"]):
    def __init__(self, config: VQVAEConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = build_quantizer(config.latent_channels, config.quantizer)
        self.decoder = Decoder(config)
