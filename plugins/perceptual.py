"""An LPIPS-style perceptual loss for the tokenizer (Zhang et al. 2018, arXiv:1801.03924), in plain torch.

Reconstruction and input go through a frozen VGG16 (Simonyan & Zisserman 2014, arXiv:1409.1556); at relu1_2,
relu2_2, relu3_3, relu4_3 and relu5_3 the features are unit-normalised over channels, their squared difference
is weighted per channel (LPIPS's learned "lin" layers, or 1 everywhere: the paper's uncalibrated baseline),
summed over channels and averaged over space; the five layers are summed. Grey images are repeated to RGB.

Weights are read from safetensors only: the VGG16 convolutions under torchvision's names (`features.0.weight`,
..., as in the Hub repo timm/vgg16.tv_in1k), optionally LPIPS's lin layers (`lin0.model.1.weight`, ...,
shape (1, C, 1, 1)). They cannot be fetched offline: then `setup` raises OSError, which the host reports in one line.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from vqgen.plugins.base import PluginContext, PluginLoss, TrainingPlugin

VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in `features`
TAP_CHANNELS = (64, 128, 256, 512, 512)
DEFAULT_WEIGHTS = "timm/vgg16.tv_in1k"


@dataclass
class PerceptualConfig:
    weight: float = 1.0  # multiplies the perceptual distance (VQGAN's perceptual_weight)
    weights: str = DEFAULT_WEIGHTS  # VGG16 safetensors: a Hub repo id, a folder, or a .safetensors file
    lin_weights: str = ""  # LPIPS lin layers (safetensors file); "" = equal channel weights
    resize: int = 0  # resize images to this square size before VGG (0 = as they are)


class VGG16Features(nn.Module):
    """VGG16's convolutional trunk up to relu5_3, with torchvision's layer indices (so its weight names)."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        ch = 3
        for v in VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(ch, v, 3, padding=1), nn.ReLU()]
                ch = v
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                taps.append(x)  # (B, C_k, H_k, W_k)
        return taps


class LPIPS(nn.Module):
    # LPIPS's input scaling: images in [-1, 1] -> roughly ImageNet-normalised
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self):
        super().__init__()
        self.vgg = VGG16Features()
        self.lins = nn.ParameterList([nn.Parameter(torch.ones(1, c, 1, 1)) for c in TAP_CHANNELS])
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images in [-1, 1], C = 1 or 3 -> (B,) distances; gradients flow to `x`."""
        x, y = (self._prepare(t) for t in (x, y))
        with torch.no_grad():
            feats_y = self.vgg(y)
        dist = torch.zeros(x.shape[0], device=x.device)
        for fx, fy, lin in zip(self.vgg(x), feats_y, self.lins):
            diff = (_unit(fx) - _unit(fy)).pow(2)  # (B, C_k, H_k, W_k)
            dist = dist + (diff * lin).sum(1).mean((1, 2))
        return dist

    def _prepare(self, t: torch.Tensor) -> torch.Tensor:
        t = t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t  # grey -> RGB
        return (t - self.shift) / self.scale


def _unit(f: torch.Tensor) -> torch.Tensor:
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)


def _weights_file(ctx: PluginContext, ref: str, what: str) -> Path:
    """A local .safetensors file, a folder holding model.safetensors, or a Hub repo's model.safetensors."""
    try:
        return ctx.weights_file(ref)
    except OSError as exc:
        raise OSError(f"cannot load the {what} from {ref} ({exc}); {_FIX}") from None


_FIX = (
    f"fetch them where the Hub is reachable (huggingface-cli download {DEFAULT_WEIGHTS} model.safetensors), "
    "then set HF_HUB_OFFLINE=1 or pass --plugin-opt perceptual.weights=PATH, or leave out --plugin perceptual"
)


def _load(path: Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # missing, truncated or not safetensors
        raise OSError(f"cannot read the {what} {path} ({type(exc).__name__}: {exc})") from None


class PerceptualPlugin(TrainingPlugin):
    """Adds `weight * LPIPS(recon, images)` to the tokenizer's loss."""

    config_class = PerceptualConfig
    stages = ("tokenizer",)
    progress_keys = ("perceptual",)

    def setup(self, ctx: PluginContext) -> None:
        cfg = self.config
        lpips = LPIPS()
        vgg = _load(_weights_file(ctx, cfg.weights, "VGG16 weights"), "VGG16 weights")
        vgg = {k: v for k, v in vgg.items() if k.startswith("features.")}  # drop a classifier head
        try:
            lpips.vgg.load_state_dict(vgg)
            if cfg.lin_weights:
                lin = _load(_weights_file(ctx, cfg.lin_weights, "LPIPS lin weights"), "LPIPS lin weights")
                for k, param in enumerate(lpips.lins):
                    param.copy_(lin[f"lin{k}.model.1.weight"])
        except (RuntimeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise ValueError(f"the weights do not fit VGG16/LPIPS ({first})") from None
        self.lpips = lpips.to(ctx.accelerator.device).eval()

    def loss(self, ctx: PluginContext, batch: torch.Tensor, out, step: int) -> PluginLoss:
        x, y = out.recon, batch
        if self.config.resize:
            size = (self.config.resize, self.config.resize)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        dist = self.lpips(x, y).mean()
        return PluginLoss(self.config.weight * dist, {"perceptual": float(dist.detach())})
