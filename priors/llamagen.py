"""LlamaGen's class-conditional GPT as a vqgen prior: the same computation, so its released weights load as they are.

The model follows `autoregressive/models/gpt.py` of https://github.com/FoundationVision/LlamaGen (Sun et al. 2024,
"Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation", arXiv:2406.06525), written here in our
own code from its facts:

- the sequence is one class token then the codes in raster order; the class token is a row of a class table of
  `num_classes + 1` rows whose last row is the null class of classifier-free guidance (an unconditional prior has
  that row only); the codes have a table of their own, and the output layer scores the codes only;
- pre-norm Llama blocks: RMSNorm (eps 1e-5, computed in float32), one fused query/key/value projection, SwiGLU
  feed-forward of width `swiglu_hidden(d)`, no biases anywhere;
- 2-D rotary positions: each head's pairs (x[2i], x[2i+1]) are rotated (interleaved, not rotate-half); the first
  half of the pairs by the row of the input token, the second half by its column, with frequencies
  base^(-4i/hd). The class token's rotation is all zeros (cos = sin = 0), so its query and key vanish: every
  position attends to it with score 0 and reads its value;
- dropout on the token embeddings, on each residual branch (attention, feed-forward) and inside attention, and
  drop-path (stochastic depth) rising linearly from 0 at the first block to `drop_path` at the last.

Sampling keeps keys and values in one preallocated buffer and feeds one token per call (`next_logits`).
`tests/test_llamagen_gpt.py` compares logits and sampled sequences with LlamaGen's own code (fixtures made by
`tests/fixtures/llamagen_gpt/make_fixtures.py`).
"""

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from vqgen.priors.base import Prior, PriorConfig, PriorOutput
from vqgen.priors.sizes import SIZES, swiglu_hidden


@dataclass
class LlamaGenPriorConfig(PriorConfig):
    prior_type: str = "llamagen"
    hidden_size: int = 128  # LlamaGen's `dim`; the presets (`--size B` ...) set 768 and up
    num_layers: int = 3
    num_heads: int = 4
    multiple_of: int = 256  # the SwiGLU width is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None  # scales the SwiGLU width before rounding (LlamaGen: None)
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    token_dropout: float = 0.1  # on the input embeddings (training only; LlamaGen's defaults)
    resid_dropout: float = 0.1  # on the attention branch's output
    ffn_dropout: float = 0.1  # on the feed-forward branch's output
    attention_dropout: float = 0.0  # on the attention weights
    drop_path: float = 0.0  # stochastic depth of the last block; block l: drop_path * l / (num_layers - 1)
    sample_temperature: float = 1.0
    sample_cfg_scale: float = 2.0
    provenance: dict | None = None  # where imported weights came from (`vqgen import`); None if trained

    @classmethod
    def sizes(cls) -> dict[str, dict[str, Any]]:
        return {name: vars(preset).copy() for name, preset in SIZES.items()}

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
            raise ValueError(
                f"hidden_size {self.hidden_size} must split into {self.num_heads} heads of a width divisible by 4 "
                "(2-D rotary positions rotate pairs, half by row and half by column)"
            )

    @property
    def ffn_size(self) -> int:
        return swiglu_hidden(self.hidden_size, self.multiple_of, self.ffn_dim_multiplier)


def rotary_2d(config: LlamaGenPriorConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(T + 1, hd / 2) cosines and sines of the class token (zeros) then of every grid position in raster order."""
    head_dim = config.hidden_size // config.num_heads
    quarter = head_dim // 4  # rotated pairs per axis
    freqs = 1.0 / (
        config.rope_base ** (torch.arange(0, 2 * quarter, 2, device=device).float() / (2 * quarter))
    )
    rows = torch.outer(torch.arange(config.grid_height, device=device).float(), freqs)  # (H, hd/4)
    cols = torch.outer(torch.arange(config.grid_width, device=device).float(), freqs)  # (W, hd/4)
    h, w = config.grid_height, config.grid_width
    angles = torch.cat([rows[:, None].expand(h, w, quarter), cols[None].expand(h, w, quarter)], dim=-1)
    angles = angles.reshape(h * w, 2 * quarter)  # (T, hd/2)
    zeros = angles.new_zeros(1, 2 * quarter)
    return torch.cat([zeros, angles.cos()]), torch.cat([zeros, angles.sin()])


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the interleaved pairs of (..., T, nh, hd) by (T, hd/2) angles, in float32 as LlamaGen does."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., T, nh, hd/2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, None], sin[:, None]  # (T, 1, hd/2)
    return torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2).type_as(x)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016, arXiv:1603.09382): drop a residual branch for whole examples while
    training, scaling the kept ones by 1 / keep."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    def __init__(self, c: LlamaGenPriorConfig, drop_path: float):
        super().__init__()
        d = c.hidden_size
        self.heads, self.eps, self.attention_dropout = c.num_heads, c.norm_eps, c.attention_dropout
        self.attn_norm = nn.Parameter(torch.ones(d))
        self.qkv = nn.Linear(d, 3 * d, bias=False)  # queries, keys, values stacked
        self.out = nn.Linear(d, d, bias=False)
        self.ffn_norm = nn.Parameter(torch.ones(d))
        self.gate = nn.Linear(d, c.ffn_size, bias=False)
        self.up = nn.Linear(d, c.ffn_size, bias=False)
        self.down = nn.Linear(c.ffn_size, d, bias=False)
        self.resid_dropout, self.ffn_dropout = nn.Dropout(c.resid_dropout), nn.Dropout(c.ffn_dropout)
        self.drop_path = DropPath(drop_path)

    def norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).type_as(x) * weight

    def heads_of(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> (3, B, nh, T, hd): rotated queries and keys, and values."""
        q, k, v = self.qkv(self.norm(x, self.attn_norm)).unflatten(-1, (3, self.heads, -1)).unbind(2)
        return torch.stack([rotate(q, cos, sin), rotate(k, cos, sin), v]).transpose(2, 3)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x, self.ffn_norm)
        return x + self.drop_path(self.ffn_dropout(self.down(F.silu(self.gate(h)) * self.up(h))))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads_of(x, cos, sin)  # (B, nh, T, hd) each
        p = self.attention_dropout if self.training else 0.0
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)  # (B, nh, T, hd)
        x = x + self.drop_path(self.resid_dropout(self.out(attn.transpose(1, 2).flatten(2))))
        return self.feed_forward(x)


@dataclass
class LlamaGenSamplingState:
    kv: torch.Tensor  # (L, 2, B, nh, T + 1, hd) keys and values, filled up to `position`
    cos: torch.Tensor  # (T + 1, hd/2)
    sin: torch.Tensor
    labels: torch.Tensor  # (B,) class-table rows fed at the first call (num_classes = the null class)
    position: int  # sequence position of the token the next call feeds


class LlamaGenPrior(Prior):
    def __init__(self, config: LlamaGenPriorConfig):
        super().__init__(config)
        c = config
        self.code_embed = nn.Embedding(c.vocab_size, c.hidden_size)
        self.class_embed = nn.Embedding(c.num_classes + 1, c.hidden_size)  # last row: the null class
        self.token_dropout = nn.Dropout(c.token_dropout)
        rates = [c.drop_path * n / max(c.num_layers - 1, 1) for n in range(c.num_layers)]  # 0 .. drop_path
        self.blocks = nn.ModuleList(Block(c, rate) for rate in rates)
        self.norm = nn.Parameter(torch.ones(c.hidden_size))
        self.head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        for module in self.modules():  # LlamaGen's initialisation: normal(0.02), the output layer zeroed
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.head.weight)

    def _class_rows(self, labels: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """(B,) rows of the class table: the labels, or the null class (an unconditional prior's only row)."""
        if labels is None or self.config.num_classes == 0:
            return torch.full((batch_size,), self.config.num_classes, dtype=torch.long, device=self.device)
        return labels.to(self.device, torch.long)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        h = F.rms_norm(x.float(), x.shape[-1:], eps=self.config.norm_eps).type_as(x) * self.norm
        return self.head(h).float()

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> PriorOutput:
        b, h, w = codes.shape
        rows = self._class_rows(self.training_labels(labels), b)
        x = torch.cat([self.class_embed(rows)[:, None], self.code_embed(codes.reshape(b, h * w)[:, :-1])], 1)
        x = self.token_dropout(x)  # (B, T, d): class, then code t - 1 at position t
        cos, sin = rotary_2d(self.config, x.device)
        for block in self.blocks:
            x = block(x, cos[: h * w], sin[: h * w])
        logits = self._logits(x).view(b, h, w, -1)  # (B, H, W, V)
        return PriorOutput(logits=logits, loss=self.nll(logits, codes))

    def begin_sampling(self, labels: torch.Tensor | None, batch_size: int) -> LlamaGenSamplingState:
        c = self.config
        weight = self.code_embed.weight
        head_dim = c.hidden_size // c.num_heads
        kv = weight.new_zeros(c.num_layers, 2, batch_size, c.num_heads, c.seq_len + 1, head_dim)
        cos, sin = rotary_2d(c, weight.device)
        return LlamaGenSamplingState(kv, cos, sin, self._class_rows(labels, batch_size), position=0)

    def next_logits(
        self, state: LlamaGenSamplingState, prev: torch.Tensor | None
    ) -> tuple[torch.Tensor, LlamaGenSamplingState]:
        t = state.position
        x = (self.class_embed(state.labels) if prev is None else self.code_embed(prev))[:, None]  # (B, 1, d)
        cos, sin = state.cos[t : t + 1], state.sin[t : t + 1]
        for n, block in enumerate(self.blocks):
            q, k, v = block.heads_of(x, cos, sin)  # (B, nh, 1, hd) each
            state.kv[n, 0, :, :, t : t + 1] = k
            state.kv[n, 1, :, :, t : t + 1] = v
            keys, values = state.kv[n, :, :, :, : t + 1]  # (B, nh, t + 1, hd) each
            attn = F.scaled_dot_product_attention(q, keys, values)  # (B, nh, 1, hd)
            x = x + block.out(attn.transpose(1, 2).flatten(2))
            x = block.feed_forward(x)
        state.position += 1
        return self._logits(x[:, 0]), state  # (B, V)
