"""Finite scalar quantisation (Mentzer et al. 2023, arXiv:2309.15505): no codebook to learn or keep alive.

Features are projected to d = len(levels) dimensions, each bounded by tanh to (-L/2, L/2) and rounded to one of
its L values; a code is the mixed-radix number of the rounded digits, so K = prod(levels) and every code is
reachable by construction. The paper's recommended levels: [8, 5, 5, 5] (K=1000), [8, 8, 8, 6, 5] (K=15360).

Shapes: features z (B, C, H, W) -> z_q (B, C, H, W), codes (B, H, W) in [0, prod(levels)).
"""

import math

import torch
from vqgen.stages.tokenizer.base import (
    CodebookFreeQuantizer,
    QuantizerConfig,
    QuantizerOutput,
    straight_through,
)

MAX_CODES = 2**16


class FSQ(CodebookFreeQuantizer):
    @staticmethod
    def size_of(config: QuantizerConfig) -> int:
        """K = prod(levels); ValueError for levels that make no sane codebook."""
        levels = config.levels
        if not levels or any(level < 2 for level in levels):
            raise ValueError(f"fsq levels must each be at least 2, got {levels}")
        k = math.prod(levels)
        if k > MAX_CODES:
            raise ValueError(f"fsq levels {levels} make {k} codes; at most {MAX_CODES} are supported")
        return k

    def __init__(self, in_channels: int, config: QuantizerConfig):
        super().__init__(in_channels, config, dim=len(config.levels))
        levels = torch.tensor(config.levels, dtype=torch.float32)
        basis = torch.cumprod(torch.tensor([1] + config.levels[:-1]), 0)
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("basis", basis, persistent=False)  # mixed-radix place values

    def _round(self, z: torch.Tensor) -> torch.Tensor:
        """(..., d) -> the nearest grid values, normalised to [-1, 1], with straight-through gradients."""
        half_l = (self.levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)  # even L: the grid sits between the integers
        shift = torch.atanh(offset / half_l)
        bounded = torch.tanh(z + shift) * half_l - offset
        half_width = torch.div(self.levels, 2, rounding_mode="floor")
        return straight_through(bounded, bounded.round()) / half_width

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Codes (N,) of (N, d) values on the normalised grid (as code_vectors returns them)."""
        half_width = torch.div(self.levels, 2, rounding_mode="floor")
        digits = (flat * half_width + half_width).round().clamp(min=0).clamp(max=self.levels - 1)
        return (digits * self.basis).sum(-1).long()

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        half_width = torch.div(self.levels, 2, rounding_mode="floor")
        digits = torch.div(codes.unsqueeze(-1), self.basis, rounding_mode="floor") % self.levels.long()
        return (digits - half_width) / half_width  # (..., d)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        z_e = self.proj_in(z).permute(0, 2, 3, 1)  # (B, H, W, d)
        q = self._round(z_e.float())
        codes = self.nearest(q.detach())  # (B, H, W)
        perplexity, dead = self.usage(codes, self.training)
        z_q = self.proj_out(q.to(z.dtype).permute(0, 3, 1, 2).contiguous())  # (B, C, H, W)
        return QuantizerOutput(z_q, codes, z.new_zeros(()), perplexity, dead)
