"""The weights of a taming-style VQGAN under each project's names, and vqgen's `vqgan` under its own.

taming-transformers (github.com/CompVis/taming-transformers, taming/modules/diffusionmodules/model.py), LlamaGen
(github.com/FoundationVision/LlamaGen, tokenizer/tokenizer_image/vq_model.py) and diffusers (`VQModel`,
models/autoencoders/vq_model.py) build one architecture: conv_in, per level residual blocks (+ attention), a
stride-2 convolution with (0, 1, 0, 1) padding, a middle block, GroupNorm + SiLU + conv_out, a quant_conv /
post_quant_conv pair around the codebook, and the mirrored decoder with one more residual block per level. They
differ in names only, and in one layout: attention as separate q, k, v (1x1 convolutions, or linear layers in
diffusers) where vqgen fuses them into one `qkv` convolution.

`blocks(config, names)` lists the parts in the order vqgen's Sequential holds them; `to_vqgen` and `from_vqgen`
translate a state dict through that list, both ways, exactly (concatenation and reshapes only).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from vqgen.stages.core.errors import UserError
from vqgen.stages.tokenizer.vqgan import VQGAN, VQGANConfig


@dataclass(frozen=True)
class Names:
    """One project's names: where each part of the encoder and decoder lives, and the names inside a block
    (defaults: taming's and LlamaGen's)."""

    # (encoder|decoder, level i counted from the highest resolution, position k in forward order, block j)
    res: Callable[[str, int, int, int], str]  # -> a residual block's prefix
    attn: Callable[[str, int, int, int], str]
    resample: Callable[[str, int, int], str]  # the stride-2 / upsampling convolution's prefix
    mid: tuple[str, str, str]  # the middle block's residual, attention, residual
    norm_out: str = "norm_out"
    shortcut: str = "nin_shortcut"  # the 1x1 shortcut of a residual block that changes width
    attn_parts: tuple[str, ...] = ("norm", "q", "k", "v", "proj_out")  # norm, q, k, v, out projection
    linear_attn: bool = False  # q, k, v, out are linear layers (C, C), not 1x1 convolutions (C, C, 1, 1)
    quant_conv: str = "quant_conv"
    post_quant_conv: str = "post_quant_conv"
    codebook: str = "quantize.embedding.weight"


def _resample(side: str) -> str:
    return "downsample" if side == "encoder" else "upsample"


def _taming_level(side, i, k):
    return f"{side}.{'down' if side == 'encoder' else 'up'}.{i}"


TAMING = Names(
    res=lambda side, i, k, j: f"{_taming_level(side, i, k)}.block.{j}",
    attn=lambda side, i, k, j: f"{_taming_level(side, i, k)}.attn.{j}",
    resample=lambda side, i, k: f"{_taming_level(side, i, k)}.{_resample(side)}",
    mid=("mid.block_1", "mid.attn_1", "mid.block_2"),
)
LLAMAGEN = Names(  # levels numbered in forward order (k: the decoder's lowest resolution first)
    res=lambda side, i, k, j: f"{side}.conv_blocks.{k}.res.{j}",
    attn=lambda side, i, k, j: f"{side}.conv_blocks.{k}.attn.{j}",
    resample=lambda side, i, k: f"{side}.conv_blocks.{k}.{_resample(side)}",
    mid=("mid.0", "mid.1", "mid.2"),
)


def _diffusers_level(side, i, k):
    return f"{side}.{'down_blocks' if side == 'encoder' else 'up_blocks'}.{k}"


DIFFUSERS = Names(
    res=lambda side, i, k, j: f"{_diffusers_level(side, i, k)}.resnets.{j}",
    attn=lambda side, i, k, j: f"{_diffusers_level(side, i, k)}.attentions.{j}",
    resample=lambda side, i, k: f"{_diffusers_level(side, i, k)}.{_resample(side)}rs.0",
    mid=("mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"),
    norm_out="conv_norm_out",
    shortcut="conv_shortcut",
    attn_parts=("group_norm", "to_q", "to_k", "to_v", "to_out.0"),
    linear_attn=True,
)


def blocks(cfg: VQGANConfig, names: Names) -> list[tuple[str, str, str]]:
    """(kind, vqgen prefix, their prefix) for every part, kind in conv, res, attn, resample, norm. vqgen's encoder
    Sequential holds conv_in, the levels, the middle, the norm, a SiLU and conv_out; its decoder's holds conv_in,
    the middle, the levels, the norm and a SiLU, with conv_out beside it."""
    out: list[tuple[str, str, str]] = []
    n = len(cfg.ch_mult)
    for side in ("encoder", "decoder"):
        mid = [("res", f"{side}.{names.mid[0]}")]
        mid += [("attn", f"{side}.{names.mid[1]}")] if cfg.mid_attention else []
        mid += [("res", f"{side}.{names.mid[2]}")]
        levels: list[tuple[str, str]] = []
        order = range(n) if side == "encoder" else reversed(range(n))
        per_level = cfg.num_res_blocks + (0 if side == "encoder" else cfg.decoder_extra_blocks)
        for k, i in enumerate(order):
            for j in range(per_level):
                levels.append(("res", names.res(side, i, k, j)))
                if i >= n - cfg.attn_levels:
                    levels.append(("attn", names.attn(side, i, k, j)))
            if (i < n - 1) if side == "encoder" else (i > 0):
                levels.append(("resample", names.resample(side, i, k)))
        body = levels + mid if side == "encoder" else mid + levels
        parts = [("conv", f"{side}.conv_in"), *body, ("norm", f"{side}.{names.norm_out}")]
        out += [(kind, f"{side}.net.{idx}", prefix) for idx, (kind, prefix) in enumerate(parts)]
        conv_out = f"{side}.net.{len(parts) + 1}" if side == "encoder" else f"{side}.conv_out"
        out.append(("conv", conv_out, f"{side}.conv_out"))
    return out


def _part_names(kind: str, names: Names) -> list[tuple[str, str]]:
    """(vqgen suffix, their suffix) of the tensors of one part; attention's q/k/v are handled apart."""
    if kind == "res":
        pairs = [("block.0", "norm1"), ("block.2", "conv1"), ("block.3", "norm2"), ("block.5", "conv2")]
        return pairs + [("shortcut", names.shortcut)]
    if kind == "attn":
        return [("norm", names.attn_parts[0]), ("proj", names.attn_parts[4])]
    if kind == "resample":
        return [("conv", "conv")]
    return [("", "")]


def _join(prefix: str, suffix: str, leaf: str) -> str:
    return ".".join(p for p in (prefix, suffix, leaf) if p)


def mapping(model: VQGAN, names: Names) -> list[tuple[str, list[str]]]:
    """(vqgen tensor name, their tensor names) for every weight vqgen keeps; several names mean concatenation
    (q, k, v into qkv) along dim 0."""
    ours = model.state_dict()
    pairs: list[tuple[str, list[str]]] = []
    for kind, mine, theirs in blocks(model.config, names):
        for leaf in ("weight", "bias"):
            for a, b in _part_names(kind, names):
                if _join(mine, a, leaf) in ours:
                    pairs.append((_join(mine, a, leaf), [_join(theirs, b, leaf)]))
            if kind == "attn":
                qkv = [_join(theirs, p, leaf) for p in names.attn_parts[1:4]]
                pairs.append((_join(mine, "qkv", leaf), qkv))
    q = model.quantizer
    if not isinstance(q.proj_in, torch.nn.Identity):
        for leaf in ("weight", "bias"):
            pairs.append((f"quantizer.proj_in.{leaf}", [f"{names.quant_conv}.{leaf}"]))
            pairs.append((f"quantizer.proj_out.{leaf}", [f"{names.post_quant_conv}.{leaf}"]))
    pairs.append(("quantizer.codebook", [names.codebook]))
    return pairs


def _as_conv(t: torch.Tensor, target_dims: int) -> torch.Tensor:
    return t.reshape(*t.shape, *([1] * (target_dims - t.dim())))


def to_vqgen(model: VQGAN, theirs: dict[str, torch.Tensor], names: Names, source: str) -> dict:
    """vqgen's state dict from their tensors; a missing tensor or a shape that does not fit is a UserError naming
    the key and both shapes. vqgen's own buffers (usage counts, steps) keep their fresh values."""
    state = model.state_dict()
    out = {}
    for mine, keys in mapping(model, names):
        missing = [k for k in keys if k not in theirs]
        if missing:
            raise UserError(f"{source}: no tensor {missing[0]} in the checkpoint (needed for {mine})")
        parts = [theirs[k].float() for k in keys]
        if names.linear_attn and mine.endswith(("qkv.weight", "proj.weight")) and parts[0].dim() == 2:
            parts = [_as_conv(p, 4) for p in parts]
        value = torch.cat(parts) if len(parts) > 1 else parts[0]
        if tuple(value.shape) != tuple(state[mine].shape):
            shapes = " + ".join(str(list(p.shape)) for p in parts)
            raise UserError(
                f"{source}: tensor {' + '.join(keys)} has shape {shapes}, the preset needs {list(state[mine].shape)} "
                f"for {mine}; pick the matching preset or size options"
            )
        out[mine] = value.contiguous()
    return out


def from_vqgen(model: VQGAN, names: Names) -> dict[str, torch.Tensor]:
    """Their state dict from a vqgen `vqgan` (the inverse of to_vqgen)."""
    state = model.state_dict()
    out = {}
    for mine, keys in mapping(model, names):
        value = state[mine].detach().float().cpu()
        parts = value.chunk(len(keys)) if len(keys) > 1 else [value]
        for key, part in zip(keys, parts):
            if names.linear_attn and mine.endswith(("qkv.weight", "proj.weight")):
                part = part.reshape(part.shape[0], part.shape[1])
            out[key] = part.contiguous().clone()
    return out


def load_into(model: VQGAN, tensors: dict) -> VQGAN:
    """Load the translated weights; the quantizer's codebook counts as initialised (no k-means on first use)."""
    state = model.state_dict()
    state.update(tensors)
    state["quantizer.initialised"] = torch.tensor(True)
    model.load_state_dict(state)
    return model.eval()
