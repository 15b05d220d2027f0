"""Lookup-free quantisation (MAGVIT-v2, Yu et al. 2023, arXiv:2310.05737): binary codes, no codebook.

Features are projected to `code_dim` dimensions and each is quantised to its sign, -1 or +1; a code is the
integer whose bits are those signs, so K = 2**code_dim. An entropy penalty keeps every bit decisive (low entropy
per sample) and the codes spread over the codebook (high entropy of the batch's average), as in MAGVIT-v2.

With p(c | z) proportional to exp(-||z - c||^2) over the codes c in {-1, +1}^d, the bits are independent:
p(bit_i = +1 | z) = sigmoid(4 z_i). The per-sample entropy is therefore exact and cheap; the codebook entropy is
exact up to 2**10 codes and, above, the sum of the bits' entropies (an upper bound).

Shapes: features z (B, C, H, W) -> z_q (B, C, H, W), codes (B, H, W) in [0, 2**code_dim).
"""

import torch
import torch.nn.functional as F
from vqgen.stages.tokenizer.base import (
    CodebookFreeQuantizer,
    QuantizerConfig,
    QuantizerOutput,
    straight_through,
)

MAX_BITS = 16
EXACT_ENTROPY_BITS = 10


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-8)) + (1 - p) * torch.log((1 - p).clamp_min(1e-8)))


class LFQ(CodebookFreeQuantizer):
    @staticmethod
    def size_of(config: QuantizerConfig) -> int:
        """K = 2**code_dim; ValueError outside 1..16 bits."""
        if not 1 <= config.code_dim <= MAX_BITS:
            raise ValueError(f"lfq code_dim is its number of bits, 1 to {MAX_BITS}; got {config.code_dim}")
        return 2**config.code_dim

    def __init__(self, in_channels: int, config: QuantizerConfig):
        super().__init__(in_channels, config, dim=config.code_dim)
        self.register_buffer("bit_values", 2 ** torch.arange(config.code_dim), persistent=False)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Codes (N,) of (N, d) vectors: the bits of their signs."""
        return ((flat > 0).long() * self.bit_values).sum(-1)

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        bits = torch.bitwise_and(codes.unsqueeze(-1), self.bit_values) > 0
        return bits.float() * 2 - 1  # (..., d) in {-1, +1}

    def entropy_loss(self, flat: torch.Tensor) -> torch.Tensor:
        """Mean per-sample entropy minus the entropy of the batch's average code distribution (nats)."""
        p = torch.sigmoid(4 * flat)  # (N, d): p(bit = +1 | z)
        per_sample = binary_entropy(p).sum(-1).mean()
        if flat.shape[1] <= EXACT_ENTROPY_BITS:
            # (K, d)
            bits = self.code_vectors(torch.arange(self.codebook_size, device=flat.device)).gt(0).float()
            log_p = F.logsigmoid(4 * flat) @ bits.t() + F.logsigmoid(-4 * flat) @ (1 - bits).t()  # (N, K)
            avg = log_p.exp().mean(0)
            codebook = -(avg * torch.log(avg.clamp_min(1e-10))).sum()
        else:
            codebook = binary_entropy(p.mean(0)).sum()
        return per_sample - codebook

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        b, _, h, w = z.shape
        flat = self.proj_in(z).permute(0, 2, 3, 1).reshape(b * h * w, -1).float()  # (B*H*W, d)
        q = torch.where(flat > 0, 1.0, -1.0)
        loss = self.config.beta * F.mse_loss(flat, q)
        if self.training and self.config.entropy_weight:
            loss = loss + self.config.entropy_weight * self.entropy_loss(flat)
        codes = self.nearest(flat.detach()).view(b, h, w)
        perplexity, dead = self.usage(codes, self.training)
        z_q = straight_through(flat, q).view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()  # (B, d, H, W)
        return QuantizerOutput(self.proj_out(z_q.to(z.dtype)), codes, loss, perplexity, dead)
