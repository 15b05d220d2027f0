"""`llamagen-gpt`: LlamaGen's class-conditional GPT checkpoints (`c2i_*.pt`) as vqgen `llamagen` priors.

https://github.com/FoundationVision/LlamaGen (Sun et al. 2024, arXiv:2406.06525) releases GPT-B ... GPT-3B as
PyTorch checkpoints that carry no configuration: the preset (`--model GPT-B`) gives the widths, the image size and
the tokenizer the grid, and the checkpoint's own tables give the vocabulary and the number of classes. The
checkpoint is read with `torch.load(weights_only=True)` only (argparse.Namespace, which `train_c2i.py` saves as
"args", is the one class allowed besides tensors); one that needs any other code to load is refused, never run.
The tensors map one to one onto `priors/llamagen.py` (KEYS); every shape is checked before anything is written.
"""

import argparse
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from vqgen.priors.llamagen import LlamaGenPrior, LlamaGenPriorConfig
from vqgen.priors.sizes import SIZES
from vqgen.stages.core.errors import UserError, one_line

FORMAT = "llamagen-gpt"
LICENSE = "mit"  # LlamaGen's code and released weights (its LICENSE file)
MODELS = {f"GPT-{size}": size for size in SIZES}  # GPT-B, GPT-L, GPT-XL, GPT-XXL, GPT-1B, GPT-3B
# LlamaGen's state-dict names -> ours ({n}: block index)
KEYS = {
    "tok_embeddings.weight": "code_embed.weight",
    "cls_embedding.embedding_table.weight": "class_embed.weight",
    "layers.{n}.attention.wqkv.weight": "blocks.{n}.qkv.weight",
    "layers.{n}.attention.wo.weight": "blocks.{n}.out.weight",
    "layers.{n}.feed_forward.w1.weight": "blocks.{n}.gate.weight",
    "layers.{n}.feed_forward.w3.weight": "blocks.{n}.up.weight",
    "layers.{n}.feed_forward.w2.weight": "blocks.{n}.down.weight",
    "layers.{n}.attention_norm.weight": "blocks.{n}.attn_norm",
    "layers.{n}.ffn_norm.weight": "blocks.{n}.ffn_norm",
    "norm.weight": "norm",
    "output.weight": "head.weight",
}
NOT_WEIGHTS = re.compile(r"(^|\.)(freqs_cis|kv_cache\.[kv]_cache|causal_mask)$")  # buffers, never learned


def read_checkpoint(path: Path) -> dict:
    """The checkpoint's dict, loaded with weights_only=True: no code from the file runs."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Exception as exc:  # a pickle that needs code to load, a truncated or foreign file
        raise UserError(
            f"{path}: not loadable as plain weights ({one_line(exc, 160)}); vqgen never runs a checkpoint's code"
        ) from None


def llamagen_state(checkpoint, path: Path) -> dict[str, torch.Tensor]:
    """The model's tensors: under "model" (DDP), "module" (DeepSpeed), "state_dict", or the dict itself (FSDP)."""
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path}: holds a {type(checkpoint).__name__}, not a LlamaGen checkpoint dict")
    for key in ("model", "module", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state = {k.removeprefix("_orig_mod."): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    return {k: v for k, v in state.items() if not NOT_WEIGHTS.search(k)}


def _pairs(num_layers: int):
    """(their name, our name) of every tensor of a model with `num_layers` blocks."""
    for theirs, ours in KEYS.items():
        for n in range(num_layers) if "{n}" in theirs else [0]:
            yield theirs.format(n=n), ours.format(n=n)


def rename(state: dict[str, torch.Tensor], num_layers: int, path: Path) -> dict[str, torch.Tensor]:
    """LlamaGen's names -> ours; a missing or unexpected tensor is one line naming it."""
    names = dict(_pairs(num_layers))
    missing = sorted(set(names) - set(state))
    extra = sorted(set(state) - set(names))
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the preset does not"
        more = len(missing) + len(extra) - 1
        raise UserError(
            f"{path}: does not fit the preset ({num_layers} layers): it {what}"
            + (f" (and {more} more mismatched names)" if more else "")
        )
    return {ours: state[theirs] for theirs, ours in names.items()}


@dataclass
class GptSource:
    model: str  # GPT-B ...
    path: Path
    image_size: int


def prior_config(src: GptSource, state: dict, tokenizer) -> LlamaGenPriorConfig:
    """The preset's widths; vocabulary and classes from the checkpoint's tables, checked against the tokenizer."""
    if src.model not in MODELS:
        raise UserError(f"unknown LlamaGen model {src.model!r}; choose one of {', '.join(MODELS)}")
    table, classes = state.get("tok_embeddings.weight"), state.get("cls_embedding.embedding_table.weight")
    if table is None or classes is None or table.dim() != 2 or classes.dim() != 2:
        raise UserError(
            f"{src.path}: no tok_embeddings/cls_embedding tables: not a class-conditional LlamaGen GPT"
        )
    tc = tokenizer.config
    downsample = tc.image_size // tc.grid_size
    if src.image_size % downsample or src.image_size // downsample != tc.grid_size:
        raise UserError(
            f"--image-size {src.image_size} gives a {src.image_size // downsample}x{src.image_size // downsample} "
            f"grid with this f{downsample} tokenizer, which makes {tc.grid_size}x{tc.grid_size} grids "
            f"({tc.image_size} px); import a tokenizer for {src.image_size} px or pass --image-size {tc.image_size}"
        )
    if table.shape[0] != tc.quantizer.codebook_size:
        raise UserError(
            f"{src.path}: the GPT models {table.shape[0]} codes but the run's tokenizer has "
            f"{tc.quantizer.codebook_size}; import the matching tokenizer first (llamagen-vq)"
        )
    preset = vars(SIZES[MODELS[src.model]])
    return LlamaGenPriorConfig(
        vocab_size=table.shape[0], grid_height=tc.grid_size, grid_width=tc.grid_size,
        num_classes=classes.shape[0] - 1, tokenizer_fingerprint=tokenizer.fingerprint(), **preset,
        sample_temperature=1.0, sample_cfg_scale=4.0,  # LlamaGen's sample_c2i.py defaults
    )  # fmt: skip


def convert(src: GptSource, checkpoint, tokenizer) -> LlamaGenPrior:
    """A vqgen prior holding the checkpoint's tensors (float32), built on the meta device and then given them:
    nothing is allocated twice. Every shape is checked first (one line naming the tensor and both shapes)."""
    state = llamagen_state(checkpoint, src.path)
    config = prior_config(src, state, tokenizer)
    with torch.device("meta"):
        model = LlamaGenPrior(config)
    ours = rename(state, config.num_layers, src.path)
    wanted = model.state_dict()
    for theirs, name in _pairs(config.num_layers):
        tensor = ours[name]
        if tuple(tensor.shape) != tuple(wanted[name].shape):
            raise UserError(
                f"{src.path}: {theirs} has shape {list(tensor.shape)}, {src.model} at this vocabulary makes "
                f"{list(wanted[name].shape)}; is it another model (--model) or another tokenizer?"
            )
        if not tensor.is_floating_point():
            raise UserError(f"{src.path}: {theirs} holds {tensor.dtype}, not weights")
    model.load_state_dict({k: v.float().contiguous() for k, v in ours.items()}, strict=True, assign=True)
    return model.eval()


def llamagen_cfg_interval(cfg_interval: float, seq_len: int) -> tuple[float, float]:
    """LlamaGen's `--cfg-interval N` (guide tokens 0 .. N + 1, then none; -1: all) as vqgen's fraction interval
    [lo, hi) of raster positions t / T (`generate --cfg-interval 0 HI`)."""
    if cfg_interval < 0:
        return (0.0, 1.0)
    return (0.0, min(1.0, (int(cfg_interval) + 2) / seq_len))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def import_llamagen_gpt(src: GptSource, tokenizer) -> tuple[LlamaGenPrior, dict]:
    """(prior, provenance) for a checkpoint file and the run's tokenizer."""
    started = time.perf_counter()
    model = convert(src, read_checkpoint(src.path), tokenizer)
    provenance = {
        "format": FORMAT, "source": src.path.name, "model": src.model, "sha256": sha256(src.path),
        "license": LICENSE, "image_size": src.image_size, "seconds": time.perf_counter() - started,
    }  # fmt: skip
    return model, provenance
