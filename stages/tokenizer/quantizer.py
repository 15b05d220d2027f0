"""A healthy vector quantizer: the bottleneck of the VQ-VAE tokenizer.

VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937) with the fixes that keep a codebook alive:
- EMA codebook updates (arXiv:1711.00937 appendix; Razavi et al. 2019, arXiv:1906.00446) or plain gradient updates;
- codebook initialised from data by k-means on the first batch (as in Jukebox, arXiv:2005.00341);
- dead codes restarted from recent encoder outputs (Dhariwal et al. 2020, Jukebox);
- optional l2-normalised (cosine) codes and a low-dimensional codebook projection (Yu et al. 2021, ViT-VQGAN,
  arXiv:2110.04627).

Shapes: the quantizer takes encoder features z (B, C, H, W) and returns z_q of the same shape and codes (B, H, W).
"""

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from vqgen.stages.tokenizer.base import Quantizer, QuantizerConfig, QuantizerOutput, dead_code_mask


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def _histogram(idx: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """(k,) counts of each code among idx. Unlike torch.bincount, no device sync on CUDA (bincount reads the
    maximum back to size its output); the counts are whole numbers, exact in any summation order."""
    return torch.zeros(k, dtype=dtype, device=idx.device).index_add_(
        0, idx, torch.ones_like(idx, dtype=dtype)
    )


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Lloyd's k-means on (N, D) vectors; empty clusters keep their (randomly chosen) previous centre."""
    idx = torch.randint(0, x.shape[0], (k,), generator=generator, device="cpu").to(x.device)
    centres = x[idx].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = _histogram(assign, k, x.dtype).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres


class VectorQuantizer(Quantizer):
    def __init__(self, in_channels: int, config: QuantizerConfig):
        super().__init__()
        if config.codebook_size < 2:
            raise ValueError("codebook_size must be at least 2")
        if config.update not in ("ema", "grad"):
            raise ValueError(f"update must be 'ema' or 'grad', got {config.update!r}")
        self.config = config
        k, d = config.codebook_size, config.code_dim
        project = d != in_channels or config.project
        self.proj_in = nn.Conv2d(in_channels, d, 1) if project else nn.Identity()
        self.proj_out = nn.Conv2d(d, in_channels, 1) if project else nn.Identity()
        codebook = torch.randn(k, d) / d**0.5
        if config.update == "grad":
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_sum", codebook.clone())
        self.register_buffer("ema_count", torch.ones(k))  # running assignment counts; drives restarts too
        self.register_buffer("initialised", torch.tensor(config.init == "random"))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._initialised_seen = False  # host-side copy of `initialised` once it is True (no per-step sync)

    # --- assignment ------------------------------------------------------------------------------------
    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.config.cosine else x

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each (N, D) vector."""
        book = self._normalise(self.codebook)
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 is the same for every code, so argmin skips it
        scores = torch.addmm(book.pow(2).sum(1), flat, book.t(), alpha=-2)  # (N, K) in one fused pass
        return scores.argmin(1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize in fp32 whatever the autocast: distances, k-means and the EMA codebook are precision-sensitive
        (under bf16 the nearest code would flip and the running means would stall), and cheap next to the
        convolutions. Nothing here reads the device back, except the k-means initialisation on the first batch."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._forward(z.float())

    def _forward(self, z: torch.Tensor) -> QuantizerOutput:
        b, _, h, w = z.shape
        z_e = self.proj_in(z)  # (B, D, H, W)
        flat = self._normalise(z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]))  # (B*H*W, D)
        if self.training and not self._is_initialised():
            self._init_from_data(flat.detach())
        idx = self.nearest(flat.detach())
        quant = self._normalise(self.codebook)[idx]  # (B*H*W, D)

        loss = self.config.beta * F.mse_loss(flat, quant.detach())
        if self.config.update == "grad":
            loss = loss + F.mse_loss(quant, flat.detach())
        counts = _histogram(idx, self.config.codebook_size, flat.dtype)
        if self.training:
            self._update(flat.detach().float(), idx, counts.float())
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())

        quant_st = flat + (quant - flat).detach()  # straight-through: forward = code, backward = identity
        z_q = self.proj_out(quant_st.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous())  # (B, C, H, W)
        dead = self.dead_mask().sum()  # a tensor: read back only when logged
        return QuantizerOutput(z_q, idx.view(b, h, w), loss, perplexity, dead)

    def _is_initialised(self) -> bool:
        """Whether the codebook was initialised from data; the buffer is read from the device once, then the
        answer is kept on the host (until a state dict is loaded, which may hold either)."""
        if not self._initialised_seen:
            self._initialised_seen = bool(self.initialised)
        return self._initialised_seen

    def _load_from_state_dict(self, *args, **kwargs):
        self._initialised_seen = False  # the loaded buffer decides again
        return super()._load_from_state_dict(*args, **kwargs)

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors (..., D) in the quantizer's space, for (...) code indices."""
        return self._normalise(self.codebook)[codes]

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Decoder input for (B, H, W) code indices: (B, C, H, W)."""
        quant = self._normalise(self.codebook)[codes]  # (B, H, W, D)
        return self.proj_out(quant.permute(0, 3, 1, 2).contiguous())

    def dead_mask(self) -> torch.Tensor:
        """(K,) bool: the codes counted dead and restarted (base.dead_code_mask)."""
        return dead_code_mask(self.ema_count, self.config.restart_threshold, self.config.restart_share)

    def dead_codes(self) -> int:
        """Codes currently considered dead (reads the device: not for per-step use; forward returns a tensor)."""
        return int(self.dead_mask().sum())

    # --- codebook maintenance (training only, no gradients) ---------------------------------------------
    @torch.no_grad()
    def _init_from_data(self, flat: torch.Tensor) -> None:
        k = self.config.codebook_size
        gen = torch.Generator().manual_seed(0)
        if self.config.init == "kmeans":
            centres = kmeans(flat.float(), k, self.config.kmeans_iters, gen)
        else:
            centres = flat[torch.randint(0, flat.shape[0], (k,), generator=gen).to(flat.device)].float()
        centres = _broadcast(centres.contiguous())
        share = flat.shape[0] / k  # as if every code had had its fair share of the batch so far
        self.codebook.data.copy_(centres)
        self.ema_count.fill_(share)
        if self.config.update == "ema":
            self.ema_sum.copy_(centres * share)  # codebook = ema_sum / ema_count
        self.initialised.fill_(True)
        self._initialised_seen = True

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> None:
        cfg = self.config
        counts = _all_reduce(counts.clone())
        self.ema_count.mul_(cfg.ema_decay).add_(counts, alpha=1 - cfg.ema_decay)
        if cfg.update == "ema":
            sums = _all_reduce(torch.zeros_like(self.ema_sum).index_add_(0, idx, flat))
            self.ema_sum.mul_(cfg.ema_decay).add_(sums, alpha=1 - cfg.ema_decay)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + 1e-5) / (n + cfg.codebook_size * 1e-5) * n  # Laplace smoothing
            self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        self.steps += 1
        if cfg.restart_every:
            self._restart_dead(flat)

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor) -> None:
        """Every restart_every steps, codes whose EMA count fell below the threshold take a recent encoder output.
        Written without reading the device: every code draws a candidate and torch.where keeps it only where the
        code is dead and the step is due, so no Python branch depends on a tensor."""
        cfg = self.config
        k = cfg.codebook_size
        due = (self.steps % cfg.restart_every) == 0
        dead = self.dead_mask() & due  # (K,)
        pick = torch.randint(0, flat.shape[0], (k,), device=flat.device)
        fresh = _broadcast(flat[pick].contiguous())  # rank 0's choice wins, so every process agrees
        count = self.ema_count.mean().clamp(min=1.0)
        self.codebook.data.copy_(
            torch.where(dead[:, None], fresh.to(self.codebook.dtype), self.codebook.data)
        )
        if cfg.update == "ema":
            # codebook = sum / count
            self.ema_sum.copy_(torch.where(dead[:, None], fresh * count, self.ema_sum))
        self.ema_count.copy_(torch.where(dead, count, self.ema_count))
