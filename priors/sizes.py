"""Size presets of the transformer priors: LlamaGen's class-conditional GPT widths, depths and heads.

`train-prior --size B` fills a prior's architecture fields from this table (any `--prior-opt` still wins).
The figures are LlamaGen's (Sun et al. 2024, arXiv:2406.06525; `autoregressive/models/gpt.py` in
https://github.com/FoundationVision/LlamaGen): GPT-B 111M, L 343M, XL 775M, XXL 1.4B parameters (class-conditional,
16384 codes), and its GPT-1B / GPT-3B widths (the 3B is the class-conditional LlamaGen-3B, `c2i_3B_384.pt`).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class SizePreset:
    num_layers: int
    num_heads: int
    hidden_size: int
    multiple_of: int = 256  # the SwiGLU width is rounded up to a multiple of this


SIZES = {
    "B": SizePreset(num_layers=12, num_heads=12, hidden_size=768),
    "L": SizePreset(num_layers=24, num_heads=16, hidden_size=1024),
    "XL": SizePreset(num_layers=36, num_heads=20, hidden_size=1280),
    "XXL": SizePreset(num_layers=48, num_heads=24, hidden_size=1536),
    "1B": SizePreset(num_layers=22, num_heads=32, hidden_size=2048),
    "3B": SizePreset(num_layers=24, num_heads=32, hidden_size=3200),
}


def swiglu_hidden(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """The SwiGLU hidden width LlamaGen (after Llama) gives a model of width `dim`: 2/3 of 4 dim, times an optional
    multiplier, rounded up to a multiple of `multiple_of` (768 -> 2048, 1280 -> 3584, 3200 -> 8704)."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return -(-hidden // multiple_of) * multiple_of
