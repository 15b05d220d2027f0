"""A GRU prior: a recurrent network reads the code grid in raster order and predicts the next code.

Input at position t = (i, j) is the embedding of code t-1 (a learned start token at t = 0) plus a learned embedding
of the position t, so that the network knows where the raster scan wraps to a new row, plus (`row_above`) the
embeddings of the three codes above it: (i-1, j-1), (i-1, j), (i-1, j+1), all sampled before t, with an "outside"
code beyond the grid's edges. A raster GRU must otherwise carry a whole row in its hidden state to know what lies
above; with them it sees its 2D neighbourhood as a PixelCNN does. With `row_context`, a second, smaller GRU reads
every finished row right to left, and the code at (i, j) is also fed its state at column j: a summary of the row
above from j to the right edge, which the raster GRU read a whole row ago. The class label sets the initial hidden
state of every layer and is also the start token, so the label is seen both ways. Sampling carries the hidden state
and the codes sampled so far (and the row above's summary, computed once per row): constant work per token.

GRU: Cho et al. 2014, arXiv:1406.1078. Used as a VQ-VAE prior, e.g., in van den Oord et al. 2017, arXiv:1711.00937.
"""

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
from vqgen.priors.base import Prior, PriorConfig, PriorOutput


@dataclass
class GRUPriorConfig(PriorConfig):
    prior_type: str = "gru"
    embed_dim: int = 128  # width of the code, start and position embeddings fed to the GRU
    # 512 (was 192, then 384): with the regularisers below and twice the epochs, 9% lower held-out NLL on the 32 px
    # emoji than the 192-wide GRU (docs: own small dataset)
    hidden_size: int = 512
    num_layers: int = 2
    # also feed the codes above-left, above and above-right of the predicted position (see the module docstring);
    # priors saved before this field existed had none (`saved_defaults`)
    row_above: bool = True
    # the width of a second GRU that reads each finished row right to left, so that the code at (i, j) also sees a
    # summary of (i-1, j..W-1), the row above from its column to the edge; 0: none (see the module docstring)
    row_context: int = 128
    dropout: float = 0.3  # between GRU layers and before the output head, training only
    # dropout on the input embeddings (code + position + label), training only: LlamaGen's token dropout
    # (arXiv:2406.06525) in the GRU's own form; the recurrent state itself is never dropped
    token_dropout: float = 0.2
    # DropConnect on the GRU's hidden-to-hidden weights, one mask per batch (AWD-LSTM's weight drop, Merity et al.
    # 2017, arXiv:1708.02182): regularises the recurrence itself, which dropout on activations cannot reach
    weight_dropout: float = 0.0
    # the fraction of input codes (the previous code and the codes above) replaced by a uniformly random code while
    # training; the targets stay the true codes (data noising, Xie et al. 2017, arXiv:1703.02573)
    code_noise: float = 0.1
    # sampling defaults chosen on the digits and RGB emoji by benchmarks/prior_sweep.py (docs: own small dataset);
    # 1.0 (was 0.8 for the 384-wide GRU): at 0.8 the 512-wide one gives 10.8% near-blank samples at 64 px
    sample_temperature: float = 1.0
    sample_cfg_scale: float = 2.0

    # what a config.json without these fields means: it was saved before they existed
    saved_defaults: ClassVar[dict] = {
        "row_above": False,
        "row_context": 0,
        "weight_dropout": 0.0,
        "code_noise": 0.0,
    }
    # twice the passes of the other priors, with more weight decay: the regularised GRU is still improving at 28
    # (its best held-out NLL at 1,300 of 1,414 steps on the 32 px emoji; docs: own small dataset)
    training: ClassVar[dict] = {"epochs": 56.0, "weight_decay": 0.1}


@dataclass
class GRUSamplingState:
    hidden: torch.Tensor  # (L, B, hidden_size)
    labels: torch.Tensor  # (B,) label index, num_classes = null
    label_bias: torch.Tensor  # (B, E) the label embedding added at every step
    grid: torch.Tensor  # (B, H + 1, W + 2) the codes sampled so far, at [i + 1, j + 1]; `outside` elsewhere
    row_context: torch.Tensor | None  # (B, W, E) the row above's right-to-left summary, per column
    position: int  # raster position whose logits the next call returns


class GRUPrior(Prior):
    def __init__(self, config: GRUPriorConfig):
        super().__init__(config)
        c = config
        for name in ("weight_dropout", "code_noise"):  # nn.Dropout checks the other rates
            if not 0.0 <= getattr(c, name) < 1.0:
                raise ValueError(f"{name} should be a fraction in [0, 1), not {getattr(c, name)}")
        if c.row_context < 0:
            raise ValueError(f"row_context should be a width >= 0 (0: none), not {c.row_context}")
        num_labels = c.num_classes + 1  # classes + the null label (index num_classes; 0 when unconditional)
        self.code_embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.start_embed = nn.Embedding(num_labels, c.embed_dim)  # the start token, one per label
        self.pos_embed = nn.Parameter(torch.zeros(c.seq_len, c.embed_dim))  # position of the predicted code
        self.h0 = nn.Embedding(num_labels, c.num_layers * c.hidden_size)  # label -> initial hidden state
        # added at every step: the label is never forgotten
        self.label_embed = nn.Embedding(num_labels, c.embed_dim)
        # the codes above-left, above and above-right: one table, rows k * (V + 1) + code for neighbour k, where
        # code V (`outside`) stands for a position beyond the grid's edges
        self.outside = c.vocab_size
        self.above_embed = nn.Embedding(3 * (c.vocab_size + 1), c.embed_dim) if c.row_above else None
        self.register_buffer("above_offsets", torch.arange(3) * (c.vocab_size + 1), persistent=False)
        self.row_gru, self.row_proj = None, None
        if c.row_context > 0:
            self.row_gru = nn.GRU(c.embed_dim, c.row_context, batch_first=True)
            self.row_proj = nn.Linear(c.row_context, c.embed_dim)
        # between GRU layers only: nn.GRU warns (and does nothing) with one layer
        between_layers = c.dropout if c.num_layers > 1 else 0.0
        self.gru = nn.GRU(c.embed_dim, c.hidden_size, c.num_layers, batch_first=True, dropout=between_layers)
        self.drop = nn.Dropout(c.dropout)
        self.token_drop = nn.Dropout(c.token_dropout)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.h0.weight, std=0.02)

    def _labels(self, labels: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        if labels is None:
            return torch.full((batch_size,), self.config.num_classes, dtype=torch.long, device=self.device)
        return labels.to(self.device, torch.long) if self.config.num_classes > 0 else torch.zeros_like(labels)

    def _initial_hidden(self, labels: torch.Tensor) -> torch.Tensor:
        c = self.config
        h = torch.tanh(self.h0(labels))  # (B, L * hidden)
        return h.view(-1, c.num_layers, c.hidden_size).transpose(0, 1).contiguous()  # (L, B, hidden)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> PriorOutput:
        b, h, w = codes.shape
        labels = self._labels(self.training_labels(labels), b)
        inputs = self._noised(codes)  # (B, H, W) what the network reads; the loss is on `codes`
        flat = inputs.reshape(b, h * w)
        start = self.start_embed(labels).unsqueeze(1)  # (B, 1, E)
        x = torch.cat([start, self.code_embed(flat[:, :-1])], dim=1) + self.pos_embed  # (B, T, E)
        if self.above_embed is not None:
            # a row of `outside` on top and a column each side: padded[:, i, j + 1] is inputs[:, i - 1, j]
            padded = nn.functional.pad(inputs, (1, 1, 1, 0), value=self.outside)  # (B, H + 1, W + 2)
            above = torch.stack([padded[:, :h, k : k + w] for k in range(3)], dim=-1)  # (B, H, W, 3)
            x = x + self._above(above.reshape(b, h * w, 3))
        if self.row_gru is not None and h > 1:
            context = self._row_context(inputs[:, :-1])  # (B, H - 1, W, E): rows 1.. see the row above them
            x = x + nn.functional.pad(context, (0, 0, 0, 0, 1, 0)).reshape(b, h * w, -1)  # row 0: none
        x = self.token_drop(x + self.label_embed(labels).unsqueeze(1))
        out, _ = self._run_gru(x, self._initial_hidden(labels))  # (B, T, hidden)
        logits = self.head(self.drop(out)).view(b, h, w, -1)  # (B, H, W, V)
        return PriorOutput(logits=logits, loss=self.nll(logits, codes))

    def begin_sampling(self, labels: torch.Tensor | None, batch_size: int) -> GRUSamplingState:
        labels = self._labels(labels, batch_size)
        hidden, label_bias = self._initial_hidden(labels), self.label_embed(labels)
        c = self.config
        grid = torch.full(
            (batch_size, c.grid_height + 1, c.grid_width + 2),
            self.outside,
            dtype=torch.long,
            device=self.device,
        )
        return GRUSamplingState(
            hidden=hidden, labels=labels, label_bias=label_bias, grid=grid, row_context=None, position=0
        )

    def next_logits(
        self, state: GRUSamplingState, prev: torch.Tensor | None
    ) -> tuple[torch.Tensor, GRUSamplingState]:
        t = state.position
        x = self.start_embed(state.labels) if prev is None else self.code_embed(prev)  # (B, E)
        x = x + self.pos_embed[t] + state.label_bias  # (B, E)
        if prev is not None:
            i, j = divmod(t - 1, self.config.grid_width)
            state.grid[:, i + 1, j + 1] = prev
        if self.above_embed is not None:
            i, j = divmod(t, self.config.grid_width)
            x = x + self._above(state.grid[:, i, j : j + 3])  # above-left, above, above-right of (i, j)
        i, j = divmod(t, self.config.grid_width)
        if self.row_gru is not None and i > 0:
            if j == 0:  # a row was just finished: summarise it once for the whole of the next row
                state.row_context = self._row_context(state.grid[:, i : i + 1, 1:-1])[:, 0]  # (B, W, E)
            x = x + state.row_context[:, j]
        x = x.unsqueeze(1)  # (B, 1, E)
        out, state.hidden = self.gru(x, state.hidden)  # (B, 1, hidden), (L, B, hidden)
        state.position += 1
        return self.head(out[:, 0]), state  # (B, V)

    def _row_context(self, rows: torch.Tensor) -> torch.Tensor:
        """(B, R, W) finished rows of codes -> (B, R, W, E): at column j, the right-to-left GRU's state after
        reading the row's codes W-1 down to j, projected to the embedding width."""
        b, r, w = rows.shape
        reversed_rows = self.code_embed(rows).flip(2).reshape(b * r, w, -1)  # (B R, W, E), right to left
        out, _ = self.row_gru(reversed_rows)  # (B R, W, row_context)
        return self.row_proj(out.flip(1)).view(b, r, w, -1)  # (B, R, W, E)

    def _noised(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, H, W) codes with a `code_noise` fraction replaced by random codes while training; as they are else."""
        rate = self.config.code_noise
        if not (self.training and rate > 0):
            return codes
        replace = torch.rand(codes.shape, device=codes.device) < rate
        return torch.where(replace, torch.randint_like(codes, self.config.vocab_size), codes)

    def _run_gru(self, x: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The GRU over (B, T, E), with its recurrent weights dropped (`weight_dropout`) while training."""
        if not (self.training and self.config.weight_dropout > 0):
            return self.gru(x, hidden)
        dropped = {
            name: nn.functional.dropout(weight, self.config.weight_dropout)
            for name, weight in self.gru.named_parameters()
            if name.startswith("weight_hh")
        }
        # the dropped weights are not one contiguous chunk: cuDNN says so, once
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="RNN module weights are not part")
            return torch.func.functional_call(self.gru, dropped, (x, hidden), strict=False)

    def _above(self, above: torch.Tensor) -> torch.Tensor:
        """(..., 3) codes above-left, above, above-right (or `outside`) -> (..., E) the sum of their embeddings."""
        return self.above_embed(above + self.above_offsets).sum(-2)
