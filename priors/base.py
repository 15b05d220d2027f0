"""The prior contract: what every autoregressive prior over tokenizer codes implements.

A prior models a grid of codes `(H, W)` over a vocabulary of `vocab_size` codebook entries, in raster order,
optionally conditioned on a class label. Label index `num_classes` is the "null" label used for
classifier-free guidance: the prior sees it for a fraction `label_dropout` of training examples.

A prior implements three methods; `Prior.sample` and `Prior.sample_naive` are built on them, and draw as a
`SamplingOptions` says (temperature, top-k, top-p, classifier-free guidance and its schedule):

- `forward(codes, labels)` -> `PriorOutput(logits (B, H, W, V), loss)`: teacher-forced logits where position
  (i, j) depends only on positions before it in raster order, and the mean NLL in nats per token.
- `begin_sampling(labels)` -> a state object: the cache the prior keeps while it samples.
- `next_logits(state, prev)` -> `(logits (B, V), state)`: the logits of the next raster position, given the
  token just sampled at the previous one (`prev` is None for the first position). Work per call should not grow
  with the number of positions already sampled beyond what the architecture requires (a GRU carries its hidden
  state, a transformer its key/value cache, a PixelCNN its cached activations).

Save/load goes through `huggingface_hub.PyTorchModelHubMixin`: `config.json` (the dataclass config, with its
`prior_type`) + `model.safetensors`. `priors.load_prior(path)` dispatches on `prior_type` through the registry.
"""

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin


@dataclass
class PriorConfig:
    """Fields every prior config has; a prior's own config subclasses this and adds its architecture fields."""

    prior_type: str = ""  # registry name; each subclass sets its own default
    vocab_size: int = 512  # = the tokenizer's codebook size
    grid_height: int = 7  # code grid shape (H, W) produced by the tokenizer
    grid_width: int = 7
    num_classes: int = 0  # 0 = unconditional; labels are 0..num_classes-1, num_classes is the null label
    label_dropout: float = 0.1  # fraction of training labels replaced by the null label (for CFG)
    tokenizer_fingerprint: str = ""  # sha256 prefix of the tokenizer weights these codes came from
    # what `generate`, `evaluate` and `Pipeline.generate` sample with unless told otherwise (saved with the prior, as
    # a Hub model's generation config); each built-in prior sets the values benchmarks/prior_sweep.py chose
    sample_temperature: float = 1.0
    sample_cfg_scale: float = 3.0  # classifier-free guidance (a prior trained with labels and label dropout)
    # how this prior trains best, where it differs from train-prior's defaults shared by every prior: settings of
    # the training loop by name (`epochs`, `weight_decay`, `lr`, ...); a flag or --config value given still wins
    training: ClassVar[dict[str, Any]] = {}

    @property
    def seq_len(self) -> int:
        return self.grid_height * self.grid_width

    @classmethod
    def sizes(cls) -> dict[str, dict[str, Any]]:
        """Named size presets (`train-prior --size NAME`): each the architecture fields it sets. None by default."""
        return {}


@dataclass
class PriorOutput:
    logits: torch.Tensor  # (B, H, W, V)
    loss: torch.Tensor  # mean NLL in nats per token


def filter_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering of (B, V) logits; removed entries become -inf."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix whose mass reaches top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


GUIDANCE_SCHEDULES = ("constant", "linear", "power")
NONFINITE = "the prior gave non-finite logits (NaN or inf) while sampling: its weights are broken; retrain or reload it"


def guidance_scales(
    cfg_scale: float,
    seq_len: int,
    schedule: str = "constant",
    power: float = 1.0,
    interval: tuple[float, float] = (0.0, 1.0),
) -> list[float]:
    """The guidance scale of every raster position t = 0..T-1. With r = (t + 1) / T:
    constant: s; linear: 1 + (s - 1) r (weak guidance first, full at the end); power: 1 + (s - 1) r^power
    (RAR's guidance_scale_pow, Yu et al. 2024, arXiv:2411.00776). Positions whose t / T lies outside
    `interval` = [lo, hi) get no guidance (scale 1), as LlamaGen's cfg_interval (arXiv:2406.06525)."""
    if schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f"unknown guidance schedule {schedule!r}; choose {', '.join(GUIDANCE_SCHEDULES)}")
    lo, hi = interval
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"guidance interval must satisfy 0 <= lo < hi <= 1, got {lo}, {hi}")
    if not power > 0:
        raise ValueError(f"guidance power must be > 0, got {power}")
    scales = []
    for t in range(seq_len):
        r = (t + 1) / seq_len
        ramp = {"constant": 1.0, "linear": r, "power": r**power}[schedule]
        inside = lo <= t / seq_len < hi
        scales.append(1.0 + (cfg_scale - 1.0) * ramp if inside else 1.0)
    return scales


@dataclass
class SamplingOptions:
    """How `Prior.sample` draws codes; the defaults draw from the plain model (no filtering, no guidance)."""

    temperature: float = 1.0  # softmax temperature (> 0)
    top_k: int | None = None  # keep the k most likely codes
    top_p: float | None = None  # nucleus: keep the smallest set of codes that holds this much probability
    cfg_scale: float = 1.0  # classifier-free guidance (1 = off); needs a prior trained with label dropout
    cfg_schedule: str = "constant"  # the scale over the raster positions: constant | linear | power
    cfg_power: float = 1.0  # the exponent of the power schedule
    cfg_interval: tuple[float, float] = (0.0, 1.0)  # guide only positions whose t / T lies in [lo, hi)

    def scales(self, seq_len: int) -> list[float]:
        """The guidance scale of every raster position (`guidance_scales`)."""
        interval = tuple(self.cfg_interval)
        return guidance_scales(self.cfg_scale, seq_len, self.cfg_schedule, self.cfg_power, interval)


def draw(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from (B, V) filtered logits, by inverse-CDF sampling: one uniform number per row from
    `generator`, so that every sampler draws the same random numbers in the same order, which makes fast and
    naive samplers comparable token for token. (torch.multinomial draws V exponentials per row on CPU, which cost
    more than a small prior's whole step.) Entries of probability zero are never drawn."""
    cdf = logits.softmax(-1).cumsum(-1)  # (B, V), non-decreasing
    u = 1.0 - torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype)  # (0, 1]
    # the first index whose cdf reaches u * total; u > 0 skips leading zero-probability entries
    return torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(1).clamp_(max=cdf.shape[1] - 1)


class Prior(nn.Module, PyTorchModelHubMixin, library_name="vqgen", tags=["vqgen", "autoregressive-prior"]):
    """Base class of every prior. Subclasses take one argument, their dataclass config (annotated with its type,
    so that the Hub mixin rebuilds it on load), and implement forward, begin_sampling and next_logits."""

    config: PriorConfig

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config

    # --- what a prior implements -------------------------------------------------------------------------
    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> PriorOutput:
        raise NotImplementedError

    def begin_sampling(self, labels: torch.Tensor | None, batch_size: int) -> Any:
        raise NotImplementedError

    def next_logits(self, state: Any, prev: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    # --- shared helpers ------------------------------------------------------------------------------------
    def training_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Labels with `label_dropout` of them replaced by the null label while training (for CFG)."""
        if labels is None or self.config.num_classes == 0:
            return None
        if self.training and self.config.label_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.config.label_dropout
            labels = labels.masked_fill(drop, self.config.num_classes)
        return labels

    def nll(self, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Mean NLL in nats per token of (B, H, W, V) logits against (B, H, W) codes."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), codes.reshape(-1))

    def _sampling_labels(
        self, n: int, labels: torch.Tensor | None, cfg_scale: float | list[float]
    ) -> tuple[torch.Tensor | None, bool]:
        """Labels for the sampling batch; with guidance the batch is doubled: [conditional; null]."""
        if self.config.num_classes == 0:
            return None, False
        device = self.device
        if labels is None:
            return torch.full((n,), self.config.num_classes, device=device, dtype=torch.long), False
        labels = labels.to(device=device, dtype=torch.long).reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(n)
        if labels.shape[0] != n:
            raise ValueError(f"got {labels.shape[0]} labels for {n} samples")
        if not bool(((labels >= 0) & (labels < self.config.num_classes)).all()):
            raise ValueError(f"labels must lie in 0..{self.config.num_classes - 1}")
        guided = any(s != 1.0 for s in (cfg_scale if isinstance(cfg_scale, list) else [cfg_scale]))
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, self.config.num_classes)])
        return labels, guided

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def _no_split_modules(self) -> list[str]:
        """Class names of the prior's blocks: the unit that FSDP shards and gathers one at a time
        (stages/training/sharding.py; accelerate reads this attribute, as on a `transformers` model). By default
        those that the `transformers` models inside it name (a Llama's decoder layers), plus `block_classes`, a
        class attribute a prior may set; else the class of its repeated blocks (the items of its longest
        `nn.ModuleList` of one class); none: the whole prior is one unit."""
        names = set(getattr(type(self), "block_classes", ()))
        for module in self.modules():
            if module is not self:
                names.update(getattr(module, "_no_split_modules", None) or ())
        if not names:
            lists = [
                m for m in self.modules() if isinstance(m, nn.ModuleList) and len({type(b) for b in m}) == 1
            ]
            if lists:
                names.add(type(max(lists, key=len)[0]).__name__)
        return sorted(names)

    @torch.inference_mode()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        options: SamplingOptions | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample `n` code grids (n, H, W) with the prior's cache. `labels`: (n,) or one label for all; None for an
        unconditional sample. `options` (default: the plain model): a `cfg_scale` > 1 sharpens towards the label
        (classifier-free guidance), per position as `guidance_scales` says; the conditional and unconditional
        halves run as one batch."""
        options = options or SamplingOptions()
        was_training = self.training
        self.eval()
        scales = options.scales(self.config.seq_len)
        cond, guided = self._sampling_labels(n, labels, scales)
        state = self.begin_sampling(cond, cond.shape[0] if cond is not None else n)
        out = torch.empty(n, self.config.seq_len, dtype=torch.long, device=self.device)
        # any non-finite logit, read once at the end
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        prev = None
        for t in range(self.config.seq_len):
            logits, state = self.next_logits(state, prev)
            logits = logits.float()  # under autocast too: the softmax, cumsum and draw need float32
            bad |= ~torch.isfinite(logits).all()
            tok = self._pick(logits, guided, scales[t], options, generator)
            out[:, t] = tok
            prev = torch.cat([tok, tok]) if guided else tok
        self.train(was_training)
        if bool(bad):
            raise ValueError(NONFINITE)
        return out.view(n, self.config.grid_height, self.config.grid_width)

    @torch.inference_mode()
    def sample_naive(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        options: SamplingOptions | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Reference sampler: the full teacher-forced forward pass once per position, no cache. Same random draws
        as `sample`, so both return the same grids for the same generator state."""
        options = options or SamplingOptions()
        was_training = self.training
        self.eval()
        scales = options.scales(self.config.seq_len)
        cond, guided = self._sampling_labels(n, labels, scales)
        b = cond.shape[0] if cond is not None else n
        grid = torch.zeros(
            b, self.config.grid_height, self.config.grid_width, dtype=torch.long, device=self.device
        )
        flat = grid.view(b, -1)
        for t in range(self.config.seq_len):
            logits = self.forward(grid, cond).logits.reshape(b, -1, self.config.vocab_size)[:, t]
            tok = self._pick(logits, guided, scales[t], options, generator)
            flat[:, t] = torch.cat([tok, tok]) if guided else tok
        self.train(was_training)
        return grid[:n].clone()

    def _pick(
        self, logits, guided: bool, cfg_scale: float, options: SamplingOptions, generator
    ) -> torch.Tensor:
        logits = logits.float()
        if guided:
            cond, uncond = logits.chunk(2)
            logits = uncond + cfg_scale * (cond - uncond)
        return draw(filter_logits(logits, options.temperature, options.top_k, options.top_p), generator)


@torch.no_grad()
def count_size(cls: type, config: PriorConfig, flops: bool = True) -> tuple[int, int]:
    """(parameters, forward FLOPs per token of a full sequence) of a prior, built and run on fake tensors (shapes
    without storage): nothing is allocated or computed. torch.utils.flop_counter counts the matmuls; causal attention
    is counted in full. `flops=False` counts the parameters only (FLOPs 0)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # attention in its math form: plain matmuls, which the counter sees on every device
    with FakeTensorMode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model = cls(config).eval()
        if flops:
            model(torch.zeros(1, config.grid_height, config.grid_width, dtype=torch.long))
    return sum(p.numel() for p in model.parameters()), int(counter.get_total_flops()) // config.seq_len
