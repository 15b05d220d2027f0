"""`vqgen import llamagen-gpt`: LlamaGen's class-conditional GPT checkpoints (`c2i_*.pt`) as vqgen `llamagen` priors.

https://github.com/FoundationVision/LlamaGen (Sun et al. 2024, arXiv:2406.06525; autoregressive/models/gpt.py)
releases GPT-B ... GPT-3B as PyTorch checkpoints that carry no configuration: `--model GPT-B` gives the widths,
the run's tokenizer (imported with `llamagen-vq`) and `--image-size` the grid, and the checkpoint's own tables the
vocabulary and the number of classes. The tensors map one to one onto `priors/llamagen.py` (KEYS); the run's
tokenizer is checked before the checkpoint is read, and every tensor's shape before anything is written. Released:
huggingface.co/FoundationVision/LlamaGen, files c2i_B_256.pt, c2i_L_256.pt, c2i_B_384.pt, c2i_L_384.pt,
c2i_XL_384.pt, c2i_XXL_384.pt, c2i_3B_384.pt (MIT licence).
"""

import re
from pathlib import Path

import torch
from vqgen.priors.llamagen import LlamaGenPrior, LlamaGenPriorConfig
from vqgen.priors.sizes import SIZES
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.files import file_sha256
from vqgen.stages.interop.base import Imported, ImportFormat, ImportRequest
from vqgen.stages.interop.sources import read_checkpoint, source_file, state_dict_in

FORMAT = "llamagen-gpt"
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


def llamagen_cfg_interval(cfg_interval: float, seq_len: int) -> tuple[float, float]:
    """LlamaGen's `--cfg-interval N` (guide tokens 0 .. N + 1, then none; -1: all) as vqgen's fraction interval
    [lo, hi) of raster positions t / T (`generate --cfg-interval 0 HI`)."""
    if cfg_interval < 0:
        return (0.0, 1.0)
    return (0.0, min(1.0, (int(cfg_interval) + 2) / seq_len))


def _pairs(num_layers: int):
    """(their name, our name) of every tensor of a model with `num_layers` blocks."""
    for theirs, ours in KEYS.items():
        for n in range(num_layers) if "{n}" in theirs else [0]:
            yield theirs.format(n=n), ours.format(n=n)


def check_names(state: dict[str, torch.Tensor], num_layers: int, path: Path) -> None:
    """A missing or unexpected tensor is one line naming it."""
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


def grid_of(tokenizer, image_size: int | None) -> int:
    """The code grid side at `image_size` (default: the tokenizer's own), which must be the tokenizer's."""
    tc = tokenizer.config
    if image_size is None or image_size == tc.image_size:
        return tc.grid_size
    f = tc.image_size // tc.grid_size
    raise UserError(
        f"--image-size {image_size} gives a {image_size // f}x{image_size // f} grid with the run's f{f} tokenizer, "
        f"which makes {tc.grid_size}x{tc.grid_size} grids ({tc.image_size} px); import the tokenizer with "
        f"--image-size {image_size} first, or pass --image-size {tc.image_size}"
    )


def prior_config(model: str, state: dict, tokenizer, grid: int, path: Path) -> LlamaGenPriorConfig:
    """The preset's widths; vocabulary and classes from the checkpoint's tables, checked against the tokenizer."""
    table, classes = state.get("tok_embeddings.weight"), state.get("cls_embedding.embedding_table.weight")
    if table is None or classes is None or table.dim() != 2 or classes.dim() != 2:
        raise UserError(
            f"{path}: no tok_embeddings/cls_embedding tables: not a class-conditional LlamaGen GPT"
        )
    if table.shape[0] != tokenizer.config.quantizer.codebook_size:
        raise UserError(
            f"{path}: the GPT models {table.shape[0]} codes but the run's tokenizer has "
            f"{tokenizer.config.quantizer.codebook_size}; import the matching tokenizer first (llamagen-vq)"
        )
    return LlamaGenPriorConfig(
        vocab_size=table.shape[0],
        grid_height=grid,
        grid_width=grid,
        num_classes=classes.shape[0] - 1,
        tokenizer_fingerprint=tokenizer.fingerprint(),
        **vars(SIZES[MODELS[model]]),
        sample_temperature=1.0,
        sample_cfg_scale=4.0,  # LlamaGen's sample_c2i.py defaults
    )


def convert(model: str, state: dict[str, torch.Tensor], tokenizer, grid: int, path: Path) -> LlamaGenPrior:
    """A vqgen prior holding LlamaGen's tensors (as float32), built on the meta device and then given them:
    nothing is allocated twice. Every shape is checked first (one line naming the tensor and both shapes)."""
    if model not in MODELS:
        raise UserError(f"unknown LlamaGen GPT --model {model!r}; available: {', '.join(MODELS)}")
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items() if not NOT_WEIGHTS.search(k)}
    config = prior_config(model, state, tokenizer, grid, path)
    with torch.device("meta"):
        prior = LlamaGenPrior(config)
    wanted, ours = prior.state_dict(), {}
    for theirs, name in _pairs(config.num_layers):  # shapes first: another model's widths say the most
        tensor = state.get(theirs)
        if tensor is not None and tuple(tensor.shape) != tuple(wanted[name].shape):
            raise UserError(
                f"{path}: {theirs} has shape {list(tensor.shape)}, {model} at this vocabulary makes "
                f"{list(wanted[name].shape)}; is it another model (--model) or another tokenizer?"
            )
        if tensor is not None and not tensor.is_floating_point():
            raise UserError(f"{path}: {theirs} holds {tensor.dtype}, not weights")
    check_names(state, config.num_layers, path)  # then the depth: a missing or an extra block
    for theirs, name in _pairs(config.num_layers):
        ours[name] = state[theirs].float().contiguous()
    prior.load_state_dict(ours, strict=True, assign=True)
    return prior.eval()


def run_tokenizer(run: Path):
    """The tokenizer already in RUN, which the GPT's codes must belong to."""
    from vqgen.stages.artifacts.models import load_tokenizer

    folder = run / "tokenizer"
    if not (folder / "config.json").is_file():
        raise UserError(
            f"{run} holds no tokenizer; import LlamaGen's first (vqgen import llamagen-vq vq_ds16_c2i.pt --run {run})"
        )
    return load_tokenizer(folder)


class LlamaGenGPT(ImportFormat):
    options = {"model", "image_size", "filename", "revision"}
    licence = "mit"

    def folder(self, request: ImportRequest) -> str:
        return f"prior-{request.options.get('model', 'GPT-B').lower()}"

    def convert(self, request: ImportRequest) -> Imported:
        o = request.options
        name = o.get("model", "GPT-B")
        if name not in MODELS:
            raise UserError(f"unknown LlamaGen GPT --model {name!r}; available: {', '.join(MODELS)}")
        tokenizer = run_tokenizer(request.run)
        grid = grid_of(tokenizer, o.get("image_size"))  # both checked before the checkpoint is read
        path = source_file(request.source, o.get("filename"), o.get("revision"), "checkpoint (.pt)")
        state = state_dict_in(read_checkpoint(path), path, ("model", "module", "state_dict"))
        prior = convert(name, state, tokenizer, grid, path)
        provenance = {
            "format": FORMAT,
            "source": request.source,
            "file": path.name,
            "sha256": file_sha256(path),
            "licence": self.licence,
            "preset": name,
            "upstream": "https://github.com/FoundationVision/LlamaGen (autoregressive/models/gpt.py)",
        }
        c = prior.config
        return Imported(
            prior,
            provenance,
            f"LlamaGen {name}: {c.vocab_size} codes, {grid}x{grid} grid, {c.num_classes} classes",
        )
