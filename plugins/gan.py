"""Adversarial training for the tokenizer, as in VQGAN (Esser et al. 2021, arXiv:2012.09841).

A PatchGAN discriminator (Isola et al. 2017, arXiv:1611.07004) scores overlapping patches of real images and of
the tokenizer's reconstructions. The tokenizer gets `weight * lambda * L_G`, where the adaptive weight

    lambda = ||grad_last L_rec|| / (||grad_last L_G|| + 1e-4)      (VQGAN eq. 7, `adaptive_weight`)

balances the adversarial gradient against the reconstruction gradient at the decoder's last layer.

Schedule: the discriminator trains from `start - disc_warmup_steps`; its loss reaches the tokenizer from `start`,
with a weight that ramps linearly from 0 to `weight` over `ramp_steps` (`GANPlugin.schedule`), times lambda clamped
to [`min_adaptive_weight`, `max_adaptive_weight`]. The floor is what makes the term act on a small tokenizer trained
with a pixel loss alone: there the reconstruction gradient at the last layer is small next to the adversarial one
(lambda ~0.001-0.003 on 32 px emoji), and without a floor the adversarial term never moves the reconstructions.
`adaptive=false` drops lambda altogether (a fixed weight, as LlamaGen's tokenizer loss does by default,
arXiv:2406.06525). The weight the tokenizer got is the metric `gan_weight`.
Guardrails: LeCAM (Tseng et al. 2021, arXiv:2104.03310) or R1 (Mescheder et al. 2018, arXiv:1801.04406)
regularisation; a discriminator step with a non-finite loss or an exploding gradient is skipped; a discriminator
that overpowers the tokenizer (logit gap too large, accuracy stuck at 1) is reported. Events print a warning line
(the 1st, 10th, 100th, ... of each kind) and are counted in the metrics `gan_<event>`.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from vqgen.plugins.base import PluginContext, PluginLoss, TrainingPlugin


@dataclass
class GANConfig:
    weight: float = 0.3  # multiplies the adaptive weight (VQGAN's disc_weight); >= 0.8 hurts MNIST PSNR
    # "hinge" | "vanilla" (non-saturating) | "lsq" (least squares); see GAN_LOSSES. vanilla with R1 (below) was the
    # one setting measured on 32 px emoji that sharpened AND lowered rFID in the mean of 3 seeds (docs: your own
    # small dataset); hinge with LeCAM sharpened as much but left rFID where it was
    loss: str = "vanilla"
    layers: int = 2  # stride-2 convs; on 28x28 images: 1 -> 12x12 logits of 16px patches, 2 -> 5x5 of 34px
    channels: int = 32  # width of the first convolution, doubled per layer (up to 8x)
    spectral_norm: bool = True  # on every convolution (Miyato et al. 2018, arXiv:1802.05957); no other norm
    lr: float = 2e-4  # the discriminator's Adam learning rate (constant, scaled down by rollbacks)
    beta1: float = 0.5
    beta2: float = 0.9
    start_fraction: float = 0.3  # the adversarial term reaches the tokenizer after this fraction of the run
    start_step: int = -1  # ... or from this step, when >= 0 (overrides start_fraction)
    disc_warmup_steps: int = 100  # the discriminator trains this many steps before `start`
    # the weight grows linearly from 0 at `start` to `weight` over this many steps (0: at once)
    ramp_steps: int = 0
    adaptive: bool = True  # VQGAN's adaptive lambda; false: lambda = 1 (a fixed weight)
    # lambda is clamped to [this, max_adaptive_weight]: the floor. 0.01 over 3 seeds on 32 px emoji: edges 3.7%
    # sharper for 0.12 dB of PSNR, rFID within its spread (0.02: -0.43 dB, rFID +12%; docs: your own small dataset)
    min_adaptive_weight: float = 0.01
    max_adaptive_weight: float = 1e4  # (VQGAN's value)
    reg: str = "r1"  # discriminator regulariser: "none" | "lecam" | "r1"
    reg_weight: float = 1.0  # LeCAM: ~0.1-0.3; R1 (gamma): ~0.1-10
    lecam_decay: float = 0.99  # EMA decay of the mean real / fake logits that LeCAM anchors to
    max_disc_grad_norm: float = 100.0  # a disc step with a larger gradient norm is skipped (exploding)
    max_logit_gap: float = 10.0  # mean real - mean fake logit above this: the discriminator overpowers
    saturated_steps: int = 200  # accuracy 1.0 for this many discriminator steps in a row: saturated

    def __post_init__(self) -> None:
        if self.loss not in GAN_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(GAN_LOSSES)}, got {self.loss!r}")
        if self.reg not in ("none", "lecam", "r1"):
            raise ValueError(f"reg must be none, lecam or r1, got {self.reg!r}")
        if self.layers < 1 or self.channels < 1:
            raise ValueError("layers and channels must be at least 1")
        if not 0 <= self.min_adaptive_weight <= self.max_adaptive_weight:
            raise ValueError("min_adaptive_weight must lie in [0, max_adaptive_weight]")
        if self.ramp_steps < 0 or self.weight < 0:
            raise ValueError("ramp_steps and weight must be >= 0")


# --- losses: each takes logits of any shape and returns a scalar --------------------------------------------
@dataclass(frozen=True)
class GANLoss:
    d: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits_real, logits_fake) -> disc loss
    g: Callable[[torch.Tensor], torch.Tensor]  # logits_fake -> generator loss
    threshold: float  # a logit above this means "real" (for the accuracy metric)


GAN_LOSSES: dict[str, GANLoss] = {
    # hinge (Lim & Ye 2017, arXiv:1705.02894), as in VQGAN
    "hinge": GANLoss(
        d=lambda real, fake: 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean()),
        g=lambda fake: -fake.mean(),
        threshold=0.0,
    ),
    # non-saturating (Goodfellow et al. 2014, arXiv:1406.2661): softplus(-x) = -log sigmoid(x)
    "vanilla": GANLoss(
        d=lambda real, fake: 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean()),
        g=lambda fake: F.softplus(-fake).mean(),
        threshold=0.0,
    ),
    # least squares (Mao et al. 2017, arXiv:1611.04076): real -> 1, fake -> 0
    "lsq": GANLoss(
        d=lambda real, fake: 0.5 * ((real - 1).pow(2).mean() + fake.pow(2).mean()),
        g=lambda fake: 0.5 * (fake - 1).pow(2).mean(),
        threshold=0.5,
    ),
}


def adaptive_weight(
    rec_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    max_weight: float,
    min_weight: float = 0.0,
) -> torch.Tensor:
    """VQGAN's lambda = ||grad_last rec_loss|| / (||grad_last g_loss|| + 1e-4), clamped to [min_weight,
    max_weight], detached. Both graphs are kept for the stage's backward."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(min_weight, max_weight).detach()


class PatchDiscriminator(nn.Module):
    """(B, C, S, S) images -> (B, 1, h, w) logits, one per overlapping patch (no normalisation layers: spectral
    norm, when on, does their job without coupling the real and fake halves of a batch)."""

    def __init__(self, in_channels: int, channels: int, layers: int, spectral_norm: bool):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        widths = [channels * min(2**i, 8) for i in range(layers + 1)]
        blocks: list[nn.Module] = []
        ch = in_channels
        for w in widths[:-1]:
            blocks += [sn(nn.Conv2d(ch, w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]  # halves H and W
            ch = w
        blocks += [sn(nn.Conv2d(ch, widths[-1], 4, padding=1)), nn.LeakyReLU(0.2)]  # H - 1
        blocks += [sn(nn.Conv2d(widths[-1], 1, 4, padding=1))]  # H - 1
        self.net = nn.Sequential(*blocks)

    @staticmethod
    def output_size(image_size: int, layers: int) -> int:
        for _ in range(layers):
            image_size = (image_size - 2) // 2 + 1
        return image_size - 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GANPlugin(TrainingPlugin):
    """VQGAN-style adversarial loss with a PatchGAN discriminator (see the module docstring)."""

    config_class = GANConfig
    stages = ("tokenizer",)
    progress_keys = ("d_loss", "g_loss", "gan_weight")
    EVENTS = ("nonfinite", "exploding", "overpowering", "saturated")

    def setup(self, ctx: PluginContext) -> None:
        cfg, acc = self.config, ctx.accelerator
        model_cfg = acc.unwrap_model(ctx.model).config
        if PatchDiscriminator.output_size(model_cfg.image_size, cfg.layers) < 1:
            raise ValueError(
                f"{cfg.layers} discriminator layers are too many for {model_cfg.image_size}px images; "
                "lower --plugin-opt gan.layers"
            )
        with torch.random.fork_rng(devices=[]):  # the tokenizer's random stream stays as without the plugin
            torch.manual_seed(ctx.seed + 1_000_003)
            disc = PatchDiscriminator(model_cfg.channels, cfg.channels, cfg.layers, cfg.spectral_norm)
        opt = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.disc, self.opt = acc.prepare(disc, opt)
        self.accelerator = acc
        self.losses = GAN_LOSSES[cfg.loss]
        self.start = cfg.start_step if cfg.start_step >= 0 else round(cfg.start_fraction * ctx.total_steps)
        self.disc_start = max(0, self.start - cfg.disc_warmup_steps)
        self.lr_scale = 1.0
        self.lecam_ema = torch.zeros(2, device=acc.device)  # EMA of the mean (real, fake) logits
        self.lecam_ready = False
        self.events = dict.fromkeys(self.EVENTS, 0)
        self.saturated_run = 0  # discriminator steps in a row at accuracy 1.0

    # --- the tokenizer's side -------------------------------------------------------------------------------
    def schedule(self, step: int) -> float:
        """The weight before lambda at `step`: 0 before `start`, then a linear ramp to `weight` over `ramp_steps`."""
        cfg = self.config
        if step < self.start:
            return 0.0
        if cfg.ramp_steps == 0:
            return cfg.weight
        return cfg.weight * min(1.0, (step - self.start + 1) / cfg.ramp_steps)

    def loss(self, ctx: PluginContext, batch: torch.Tensor, out, step: int) -> PluginLoss | None:
        cfg, scale = self.config, self.schedule(step)
        if scale == 0.0:
            return None
        disc = ctx.accelerator.unwrap_model(self.disc)  # no DDP hooks: the disc gets no gradient here
        disc.eval().requires_grad_(False)  # eval: spectral norm's power iteration is left to the disc step
        g_loss = self.losses.g(disc(out.recon).float())
        disc.train().requires_grad_(True)
        if cfg.adaptive:
            last_layer = ctx.accelerator.unwrap_model(ctx.model).last_layer
            lam = adaptive_weight(
                out.recon_loss, g_loss, last_layer, cfg.max_adaptive_weight, cfg.min_adaptive_weight
            )
        else:
            lam = torch.ones((), device=g_loss.device)
        lam = float(lam)
        metrics = {"g_loss": float(g_loss.detach()), "adaptive_weight": lam, "gan_weight": scale * lam}
        return PluginLoss(scale * lam * g_loss, metrics)

    # --- the discriminator's step ----------------------------------------------------------------------------
    def after_step(self, ctx: PluginContext, batch: torch.Tensor, out, step: int) -> dict[str, float]:
        if step < self.disc_start:
            return {}
        cfg, acc = self.config, ctx.accelerator
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * self.lr_scale
        real = batch.detach().requires_grad_(cfg.reg == "r1")
        fake = out.recon.detach()
        with acc.autocast():
            logits = self.disc(torch.cat([real, fake])).float()  # one pass: (2B, 1, h, w)
        logits_real, logits_fake = logits.chunk(2)
        d_loss = self.losses.d(logits_real, logits_fake)
        reg = self._regulariser(acc, real, logits_real, logits_fake)
        total = d_loss + cfg.reg_weight * reg
        self.opt.zero_grad(set_to_none=True)
        acc.backward(total)
        acc.unscale_gradients(self.opt)
        grads = [p.grad for p in self.disc.parameters() if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        norm = float(grad_norm)  # after DDP's all-reduce: the same on every process
        loss_bad = float(acc.reduce((~torch.isfinite(total.detach())).float().reshape(1), "sum"))
        if loss_bad > 0 or (acc.scaler is None and not math.isfinite(norm)):
            self._event(
                acc, "nonfinite", step, f"non-finite discriminator loss or gradient (norm {norm:.4g})"
            )
        elif math.isfinite(norm) and norm > cfg.max_disc_grad_norm:
            self._event(
                acc, "exploding", step, f"discriminator gradient norm {norm:.4g} > {cfg.max_disc_grad_norm:g}"
            )
        else:
            self.opt.step()  # under fp16 the grad scaler itself skips a step with inf gradients
        self.opt.zero_grad(set_to_none=True)
        return self._health(acc, step, d_loss, reg, grad_norm, logits_real.detach(), logits_fake.detach())

    def _regulariser(self, acc, real: torch.Tensor, logits_real: torch.Tensor, logits_fake: torch.Tensor):
        cfg = self.config
        if cfg.reg == "r1":  # gamma/2 * E ||grad_x D(x)||^2 on real images
            (grad,) = torch.autograd.grad(logits_real.sum(), real, create_graph=True)
            return 0.5 * grad.float().pow(2).flatten(1).sum(1).mean()
        if cfg.reg == "lecam":  # pull real logits towards the fake EMA and fake logits towards the real EMA
            means = torch.stack([logits_real.mean(), logits_fake.mean()]).detach()
            means = acc.reduce(means, "mean") if acc.num_processes > 1 else means
            if torch.isfinite(means).all():  # a skipped non-finite step must not poison the EMAs
                decay = cfg.lecam_decay if self.lecam_ready else 0.0
                self.lecam_ema.mul_(decay).add_((1 - decay) * means)
                self.lecam_ready = True
            ema_real, ema_fake = self.lecam_ema
            return F.relu(logits_real - ema_fake).pow(2).mean() + F.relu(ema_real - logits_fake).pow(2).mean()
        return torch.zeros((), device=real.device)

    def _health(self, acc, step, d_loss, reg, grad_norm, logits_real, logits_fake) -> dict[str, float]:
        cfg, t = self.config, self.losses.threshold
        real_mean, fake_mean = float(logits_real.mean()), float(logits_fake.mean())
        accuracy = 0.5 * float((logits_real > t).float().mean() + (logits_fake < t).float().mean())
        if real_mean - fake_mean > cfg.max_logit_gap:
            self._event(
                acc, "overpowering", step, f"logit gap {real_mean - fake_mean:.3g} > {cfg.max_logit_gap:g}"
            )
        self.saturated_run = self.saturated_run + 1 if accuracy == 1.0 else 0
        if self.saturated_run and self.saturated_run % cfg.saturated_steps == 0:
            self._event(acc, "saturated", step, f"accuracy 1.0 for {self.saturated_run} steps in a row")
        return {
            "d_loss": float(d_loss.detach()),
            "d_reg": float(reg.detach()),
            "d_grad_norm": float(grad_norm),
            "d_accuracy": accuracy,
            "logits_real": real_mean,
            "logits_fake": fake_mean,
            "d_lr": cfg.lr * self.lr_scale,
            **{f"gan_{name}": float(n) for name, n in self.events.items()},
        }

    def _event(self, acc, kind: str, step: int, what: str) -> None:
        self.events[kind] += 1
        n = self.events[kind]
        if math.log10(n).is_integer():  # the 1st, 10th, 100th, ... of each kind
            action = "; discriminator step skipped" if kind in ("nonfinite", "exploding") else ""
            acc.print(f"gan: warning: {what} at step {step}{action} ({kind} events so far: {n})")

    # --- state ---------------------------------------------------------------------------------------------
    def on_rollback(self, lr_factor: float) -> None:
        self.lr_scale *= lr_factor
        for group in self.opt.param_groups:
            group["lr"] = self.config.lr * self.lr_scale

    def state_dict(self) -> dict:
        return {
            "disc": self.accelerator.unwrap_model(self.disc).state_dict(),
            "optim": self.opt.state_dict(),
            "lecam_ema": self.lecam_ema,
            "lr_scale": self.lr_scale,
            "lecam_ready": self.lecam_ready,
            "events": dict(self.events),
            "saturated_run": self.saturated_run,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint or a rollback snapshot. What only ever goes one way survives a rollback to an
        older snapshot: the learning-rate scale keeps its lowest value and event counts their highest."""
        if not state:  # resuming a run that was trained without this plugin: start it fresh
            return
        self.accelerator.unwrap_model(self.disc).load_state_dict(state["disc"])
        self.opt.load_state_dict(state["optim"])
        self.lecam_ema.copy_(state["lecam_ema"])
        self.lecam_ready = state["lecam_ready"]
        self.saturated_run = state["saturated_run"]
        self.lr_scale = min(self.lr_scale, state["lr_scale"])
        self.events = {k: max(self.events.get(k, 0), state["events"].get(k, 0)) for k in self.EVENTS}
