"""A gated PixelCNN prior with vertical and horizontal stacks (no blind spot) and a class-conditional bias.

Gated PixelCNN: van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders",
arXiv:1606.05328. Each layer has
- a vertical stack: a (k//2 + 1, k) convolution, so row i sees rows i - k//2 .. i of the layer below
  (it never reaches the horizontal stack at its own row: it is shifted down one row first);
- a horizontal stack: a (1, k//2 + 1) convolution over columns j - k//2 .. j of the current row, plus a 1x1
  projection of the vertical stack of the row above, a gated activation tanh(a) * sigmoid(b), and a residual;
- a class-conditional bias added to the gate pre-activations of both stacks.
The input is a token embedding of the codes; the horizontal stack starts from it shifted right by one column,
the vertical stack from it unshifted, which makes position (i, j) see exactly the positions before it.

Fast sampling caches what earlier positions computed (Ramachandran et al. 2017, "Fast Generation for
Convolutional Autoregressive Models", arXiv:1704.06001): each layer's vertical stack is computed once per row,
when that row is complete, and the horizontal stack once per position from cached per-layer inputs over the
kernel window. Both paths use the same weights and give the same logits up to float rounding.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from vqgen.priors.base import Prior, PriorConfig, PriorOutput


@dataclass
class PixelCNNPriorConfig(PriorConfig):
    prior_type: str = "pixelcnn"
    channels: int = 64  # width C of both stacks; the gates work on 2C channels
    # 0 = just enough layers to reach every earlier position of the grid (6 for 7x7, 15 for 16x16, 31 for 32x32 at
    # kernel 3): each layer widens the reach by k // 2 rows and columns (see `layers_to_cover`)
    num_layers: int = 0
    kernel_size: int = 3  # odd; each layer widens the receptive field by k // 2 rows and columns
    head_channels: int = 128  # hidden width of the ReLU -> 1x1 -> ReLU -> 1x1 output head
    # dropout on each gated layer's outputs (the vertical stack and the horizontal residual branch), training only;
    # PixelCNN++ (Salimans et al. 2017, arXiv:1701.05517) regularises its gated resnets the same way
    dropout: float = 0.1
    token_dropout: float = 0.1  # dropout on the code embeddings, training only (LlamaGen's token dropout)
    # sampling defaults chosen on the digits and RGB emoji by benchmarks/prior_sweep.py (docs: own small dataset)
    sample_temperature: float = 0.9
    sample_cfg_scale: float = 3.0


def layers_to_cover(grid_height: int, grid_width: int, kernel_size: int) -> int:
    """Layers whose receptive field reaches every earlier position of the grid: the vertical stack must reach
    the first row and both outer columns, the horizontal stack the first column."""
    reach = kernel_size // 2
    return max(1, -(-(max(grid_height, grid_width) - 1) // reach))


def gate(x: torch.Tensor, dim: int) -> torch.Tensor:
    """tanh(a) * sigmoid(b) for x = [a, b] split along `dim`."""
    a, b = x.chunk(2, dim)
    return torch.tanh(a) * torch.sigmoid(b)


def shift_down(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> row i holds row i - 1; row 0 is zero."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> column j holds column j - 1; column 0 is zero."""
    return F.pad(x, (1, 0))[..., :-1]


class GatedLayer(nn.Module):
    """One gated layer of both stacks; `forward` runs it on whole grids, the rest on one row or position."""

    def __init__(self, channels: int, kernel_size: int, num_labels: int, dropout: float = 0.0):
        super().__init__()
        c, self.pad = channels, kernel_size // 2
        self.v_conv = nn.Conv2d(c, 2 * c, (self.pad + 1, kernel_size))
        self.h_conv = nn.Conv2d(c, 2 * c, (1, self.pad + 1))
        self.v_to_h = nn.Linear(2 * c, 2 * c)  # 1x1: vertical pre-activations into the horizontal stack
        self.h_res = nn.Linear(c, c)  # 1x1 after the horizontal gate, before the residual
        self.cond = nn.Embedding(num_labels, 4 * c)  # class biases of both gates: [v (2C), h (2C)]
        self.drop = nn.Dropout(dropout)  # training only: the cached sampler (eval mode) has none
        nn.init.normal_(self.cond.weight, std=0.02)

    def forward(
        self, v: torch.Tensor, h: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """v, h: (B, C, H, W) -> (B, C, H, W) each."""
        cond_v, cond_h = self.cond(labels)[:, :, None, None].chunk(2, 1)  # (B, 2C, 1, 1) each
        v_pre = self.v_conv(F.pad(v, (self.pad, self.pad, self.pad, 0)))  # (B, 2C, H, W): rows i - pad .. i
        v_link = self.v_to_h(v_pre.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, 2C, H, W)
        h_pre = self.h_conv(F.pad(h, (self.pad, 0))) + shift_down(v_link)  # columns j - pad .. j, rows < i
        h_gated = self.drop(gate(h_pre + cond_h, 1))  # (B, C, H, W)
        h_out = h + self.h_res(h_gated.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.drop(gate(v_pre + cond_v, 1)), h_out

    def vertical_weight(self) -> torch.Tensor:
        """The vertical convolution as a matrix over a (row, column, channel) window: (2C, (pad + 1) k C)."""
        return self.v_conv.weight.permute(0, 2, 3, 1).flatten(1)

    def vertical_row(
        self, v_rows: torch.Tensor, weight: torch.Tensor, cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One row i of the vertical stack. v_rows: (B, pad + 1, 2 pad + W, C), the layer input over rows
        i - pad .. i, zero-padded, channels last; weight: `vertical_weight()`; cond: (B, 4C), the class biases.
        Returns the gated row (B, W, C) and the horizontal stack's bias on row i + 1 (B, W, 2C): the link from
        row i, the conv bias and the class bias."""
        k = self.v_conv.kernel_size[1]
        windows = v_rows.unfold(2, k, 1).permute(0, 2, 1, 4, 3).flatten(2)  # (B, W, (pad + 1) k C)
        v_pre = F.linear(windows, weight, self.v_conv.bias)  # (B, W, 2C)
        cond_v, cond_h = cond[:, None].chunk(2, 2)  # (B, 1, 2C) each
        h_bias = self.v_to_h(v_pre) + self.h_conv.bias + cond_h
        return gate(v_pre + cond_v, 2), h_bias

    def first_row_bias(self, cond: torch.Tensor) -> torch.Tensor:
        """The horizontal stack's bias on row 0, which has no row above: (B, 2C)."""
        return self.h_conv.bias + cond.chunk(2, 1)[1]

    def horizontal_weight(self) -> torch.Tensor:
        """The horizontal convolution as a matrix over a (column, channel) window: ((pad + 1) * C, 2C)."""
        return self.h_conv.weight[:, :, 0].permute(2, 1, 0).flatten(0, 1)

    def horizontal_step(
        self, h: torch.Tensor, h_window: torch.Tensor, weight: torch.Tensor, h_bias: torch.Tensor
    ) -> torch.Tensor:
        """One position (i, j) of the horizontal stack. h: (B, C), the layer input at column j; h_window:
        (B, (pad + 1) C), the layer input over columns j - pad .. j (a strided view, no copy); weight:
        `horizontal_weight()`; h_bias: (B, 2C), row i's bias at column j. Returns (B, C)."""
        h_pre = torch.addmm(h_bias, h_window, weight)  # (B, 2C)
        return h + self.h_res(gate(h_pre, 1))


@dataclass
class PixelCNNSamplingState:
    cond: list[torch.Tensor]  # per layer: (B, 4C), the class biases of both gates
    v_in: list[torch.Tensor]  # per layer: (B, pad + H, 2 pad + W, C), the vertical stack's input, zero-padded
    v_weight: list[torch.Tensor]  # per layer: `GatedLayer.vertical_weight()`
    h_in: list[torch.Tensor]  # per layer: (B, (pad + W) C), the horizontal stack's input on the current row
    h_weight: list[torch.Tensor]  # per layer: `GatedLayer.horizontal_weight()`
    h_bias: list[torch.Tensor]  # per layer: (B, W, 2C), the horizontal stack's bias on the current row
    position: int  # raster position whose logits the next call returns


class PixelCNNPrior(Prior):
    def __init__(self, config: PixelCNNPriorConfig):
        super().__init__(config)
        c = config
        if c.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {c.kernel_size}")
        num_labels = c.num_classes + 1  # classes + the null label (index num_classes; 0 when unconditional)
        self.embed = nn.Embedding(c.vocab_size, c.channels)
        layers = c.num_layers or layers_to_cover(c.grid_height, c.grid_width, c.kernel_size)
        self.layers = nn.ModuleList(
            GatedLayer(c.channels, c.kernel_size, num_labels, c.dropout) for _ in range(layers)
        )
        self.token_drop = nn.Dropout(c.token_dropout)
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Linear(c.channels, c.head_channels),
            nn.ReLU(),
            nn.Linear(c.head_channels, c.vocab_size),
        )

    def _labels(self, labels: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        if labels is None:
            return torch.full((batch_size,), self.config.num_classes, dtype=torch.long, device=self.device)
        return labels.to(self.device, torch.long) if self.config.num_classes > 0 else torch.zeros_like(labels)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> PriorOutput:
        labels = self._labels(self.training_labels(labels), codes.shape[0])
        x = self.token_drop(self.embed(codes)).permute(0, 3, 1, 2)  # (B, C, H, W)
        v, h = x, shift_right(x)
        for layer in self.layers:
            v, h = layer(v, h, labels)
        logits = self.head(h.permute(0, 2, 3, 1))  # (B, H, W, V)
        return PriorOutput(logits=logits, loss=self.nll(logits, codes))

    def begin_sampling(self, labels: torch.Tensor | None, batch_size: int) -> PixelCNNSamplingState:
        c, pad = self.config, self.config.kernel_size // 2
        conds = [layer.cond(self._labels(labels, batch_size)) for layer in self.layers]
        new = self.embed.weight.new_zeros
        return PixelCNNSamplingState(
            cond=conds,
            v_in=[
                new(batch_size, pad + c.grid_height, 2 * pad + c.grid_width, c.channels) for _ in self.layers
            ],
            v_weight=[layer.vertical_weight() for layer in self.layers],
            h_in=[new(batch_size, (pad + c.grid_width) * c.channels) for _ in self.layers],
            h_weight=[layer.horizontal_weight() for layer in self.layers],
            h_bias=[
                layer.first_row_bias(cond)[:, None].expand(-1, c.grid_width, -1)
                for layer, cond in zip(self.layers, conds, strict=True)
            ],
            position=0,
        )

    def next_logits(
        self, state: PixelCNNSamplingState, prev: torch.Tensor | None
    ) -> tuple[torch.Tensor, PixelCNNSamplingState]:
        width, pad, c = self.config.grid_width, self.config.kernel_size // 2, self.config.channels
        j = state.position % width
        h = self.embed.weight.new_zeros(state.h_in[0].shape[0], c)  # shifted input at column 0
        if prev is not None:
            pi, pj = divmod(state.position - 1, width)
            x = self.embed(prev)  # (B, C), the code at (pi, pj)
            state.v_in[0][:, pad + pi, pad + pj] = x
            if pj == width - 1 and pi + 1 < self.config.grid_height:
                self._vertical_row(state, pi)
            if j > 0:
                h = x  # the horizontal stack starts from the embedding shifted right by one column
        for layer, h_in, weight, h_bias in zip(
            self.layers, state.h_in, state.h_weight, state.h_bias, strict=True
        ):
            h_in[:, (pad + j) * c : (pad + j + 1) * c] = h
            h = layer.horizontal_step(h, h_in[:, j * c : (j + pad + 1) * c], weight, h_bias[:, j])  # (B, C)
        state.position += 1
        return self.head(h), state

    def _vertical_row(self, state: PixelCNNSamplingState, row: int) -> None:
        """Run every layer's vertical stack on a completed row; keep its bias for the row below."""
        width, pad = self.config.grid_width, self.config.kernel_size // 2
        for n, layer in enumerate(self.layers):
            v_rows = state.v_in[n][:, row : row + pad + 1]  # (B, pad + 1, 2 pad + W, C)
            v, state.h_bias[n] = layer.vertical_row(v_rows, state.v_weight[n], state.cond[n])
            if n + 1 < len(self.layers):
                state.v_in[n + 1][:, pad + row, pad : pad + width] = v
