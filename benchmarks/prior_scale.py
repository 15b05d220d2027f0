"""Throughput of the transformer prior at LlamaGen's sizes against a plain PyTorch GPT of the same architecture.

    python -m benchmarks.prior_scale [--sizes B,L] [--device cpu|cuda] [--precision fp32|bf16] [--compile]
                                     [--batch 2] [--sample-batch 2] [--repeats 3] [--json OUT.json]
    accelerate launch --use_fsdp --fsdp_version 2 --num_processes N [--mixed_precision bf16] \
        -m benchmarks.prior_scale --fsdp ...                                      # training, sharded (FSDP2)

The task of a class-conditional ImageNet prior: 16x16 = 256 codes of a 16384-entry codebook, 1000 classes.
`ours` is `TransformerPrior` (priors/transformer.py) at the `--size` preset (priors/sizes.py); `plain` is written
below in plain PyTorch, the same architecture as LlamaGen writes it (https://github.com/FoundationVision/LlamaGen,
`autoregressive/models/gpt.py`): Llama blocks (RMSNorm, rotary attention through scaled_dot_product_attention,
SwiGLU), the class token first, learned row and column embeddings (ours turns these on at 256 positions), a
static key/value cache, and LlamaGen's training dropout at the preset's rates (on the token embeddings and on the
attention and MLP outputs, as ours). Both have the same parameters to the last one (checked), the same initial
weights are not needed (timing only).

- training: tokens per second of one optimizer step (forward, backward, AdamW), batch `--batch` per process;
- sampling: tokens per second of sampling whole grids with the key/value cache and classifier-free guidance
  (scale 2: the conditional and the unconditional half run as one batch of 2 x `--sample-batch`). With
  `--precision bf16` both sample under bf16 autocast, and a third row samples the plain model with its weights
  cast to bf16 outside autocast, as LlamaGen's sample script runs a model (`.to(dtype)`).
Ratios are ours / plain, measured interleaved in the same run (benchmarks/measure.py). With --fsdp both models
are sharded block by block as `train-prior` shards a prior (stages/training/sharding.py: accelerate's FSDP2 on
GPUs, ours on the CPU), in the launch's mixed precision, and only training is timed, in tokens per second over
all processes.
Prints a markdown table and writes JSON (default benchmarks/results/prior_scale.json).
"""

import argparse
import copy
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from vqgen.priors.base import SamplingOptions
from vqgen.priors.transformer import TransformerPrior, TransformerPriorConfig

from benchmarks.measure import (
    Timing,
    add_ratios,
    autocast,
    machine_info,
    markdown_table,
    measure_runs,
    result_row,
    save_result,
)

ROOT = Path(__file__).resolve().parents[1]

VOCAB, CLASSES, GRID, CFG_SCALE = 16384, 1000, 16, 2.0
SMOKE = dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128)  # --sizes smoke: does it run


# --- the plain reference ------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rotate(x, cos, sin):  # x (B, nh, T, hd); cos, sin (T, hd): rotary positions, rotate-half convention
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class PlainBlock(nn.Module):
    def __init__(self, d: int, heads: int, hidden: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.attn_norm, self.ffn_norm = RMSNorm(d), RMSNorm(d)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.w1, self.w3 = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x, cos, sin, cache=None, pos: int | None = None):
        b, t, d = x.shape
        h = self.attn_norm(x)
        q, k, v = (w(h).view(b, t, self.heads, -1).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)  # (B, nh, T, hd)
        if cache is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # one new position: write it into the static cache, attend to everything so far
            cache[0][:, :, pos : pos + t], cache[1][:, :, pos : pos + t] = k, v
            a = F.scaled_dot_product_attention(q, cache[0][:, :, : pos + t], cache[1][:, :, : pos + t])
        x = x + F.dropout(self.wo(a.transpose(1, 2).reshape(b, t, d)), self.dropout, self.training)
        h = self.ffn_norm(x)
        return x + F.dropout(self.w2(F.silu(self.w1(h)) * self.w3(h)), self.dropout, self.training)


class PlainGPT(nn.Module):
    """A class-conditional GPT over code grids: the same parameters as TransformerPrior at the same config."""

    _no_split_modules = ["PlainBlock"]  # FSDP's unit (--fsdp)

    def __init__(self, c: TransformerPriorConfig):
        super().__init__()
        self.c, self.head_dim = c, c.hidden_size // c.num_heads
        self.tok = nn.Embedding(c.vocab_size + c.num_classes + 2, c.hidden_size)
        self.row, self.col = (
            nn.Embedding(c.grid_height, c.hidden_size),
            nn.Embedding(c.grid_width, c.hidden_size),
        )
        self.blocks = nn.ModuleList(
            PlainBlock(c.hidden_size, c.num_heads, c.intermediate_size, c.resid_dropout)
            for _ in range(c.num_layers)
        )
        self.norm = RMSNorm(c.hidden_size)
        self.out = nn.Linear(c.hidden_size, c.vocab_size + c.num_classes + 2, bias=False)
        inv = 1.0 / 10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim)
        angles = torch.outer(torch.arange(c.seq_len + 1).float(), inv)
        self.register_buffer("cos", torch.cat([angles, angles], -1).cos(), persistent=False)
        self.register_buffer("sin", torch.cat([angles, angles], -1).sin(), persistent=False)

    def positions(self, t: torch.Tensor):
        return self.row(t // self.c.grid_width) + self.col(t % self.c.grid_width)

    def hidden(self, ids, start: int, caches=None):  # ids (B, T) at sequence positions start..start+T-1
        t = torch.arange(start, start + ids.shape[1], device=ids.device)
        x = F.dropout(self.tok(ids) + self.positions(t), self.c.token_dropout, self.training)
        cos, sin = self.cos[t], self.sin[t]
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if caches is None else caches[i], start)
        return self.norm(x)

    def forward(self, codes, labels):  # codes (B, H, W), labels (B,) -> the mean NLL
        b = codes.shape[0]
        prefix = (self.c.vocab_size + 1 + labels).view(b, 1)
        ids = torch.cat([prefix, codes.reshape(b, -1)[:, :-1]], 1)
        logits = F.linear(self.hidden(ids, 0), self.out.weight[: self.c.vocab_size])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), codes.reshape(-1))

    @torch.inference_mode()
    def sample(self, labels, cfg_scale: float, generator=None):
        n, c = labels.shape[0], self.c
        cond = torch.cat([labels, torch.full_like(labels, c.num_classes)])  # [conditional; null]
        shape = (2 * n, c.num_heads, c.seq_len + 1, self.head_dim)
        dtype = (
            self.tok.weight.dtype
            if not torch.is_autocast_enabled(self.cos.device.type)
            else torch.get_autocast_dtype(self.cos.device.type)
        )
        caches = [
            (self.cos.new_zeros(shape, dtype=dtype), self.cos.new_zeros(shape, dtype=dtype))
            for _ in self.blocks
        ]
        tok = (c.vocab_size + 1 + cond).view(-1, 1)
        out = []
        for pos in range(c.seq_len):
            logits = F.linear(self.hidden(tok, pos, caches)[:, -1], self.out.weight[: c.vocab_size]).float()
            cond_l, uncond_l = logits.chunk(2)
            probs = (uncond_l + cfg_scale * (cond_l - uncond_l)).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator)  # (n, 1)
            out.append(nxt)
            tok = torch.cat([nxt, nxt])
        return torch.cat(out, 1).view(n, c.grid_height, c.grid_width)


def ours_config(size: str) -> TransformerPriorConfig:
    # what `train-prior --size` builds
    preset = SMOKE if size == "smoke" else TransformerPriorConfig.sizes()[size]
    return TransformerPriorConfig(
        vocab_size=VOCAB,
        grid_height=GRID,
        grid_width=GRID,
        num_classes=CLASSES,
        attention_dropout=0.0,
        **preset,
    )


# --- the measurements -------------------------------------------------------------------------------------------
def adamw(model):
    return torch.optim.AdamW(
        model.parameters(), lr=1e-4, fused=next(model.parameters()).device.type == "cuda"
    )


def training_step(model, optimizer, loss_of, batch, precision, device):
    """One optimizer step of `model` on a fixed random batch."""
    codes = torch.randint(0, VOCAB, (batch, GRID, GRID), device=device)
    labels = torch.randint(0, CLASSES, (batch,), device=device)

    def step():
        with autocast(device, precision):
            loss = loss_of(codes, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def sampling_run(sample, n, precision, device):
    labels = torch.randint(0, CLASSES, (n,), device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def run():
        with autocast(device, precision):
            sample(labels, generator)

    return run


def build(size: str, device, accelerator=None):
    """(ours, its AdamW), (plain, its AdamW) at one size on `device`; with an accelerator launched for FSDP, each
    sharded block by block as `train-prior` shards a prior (stages/training/sharding.py)."""
    config = ours_config(size)
    ours, plain = TransformerPrior(config).to(device), PlainGPT(config).to(device)
    n_ours, n_plain = (sum(p.numel() for p in m.parameters()) for m in (ours, plain))
    if n_ours != n_plain:
        raise SystemExit(
            f"the plain GPT has {n_plain:,} parameters, ours {n_ours:,}: not the same architecture"
        )
    if accelerator is None:
        return (ours, adamw(ours)), (plain, adamw(plain)), n_ours
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from vqgen.stages.training import sharding

    engine, pairs = sharding.training_engine(accelerator), []
    for model in (ours, plain):
        if engine == "fsdp":  # accelerate keeps the first model's block classes: each model names its own
            plugin = accelerator.state.fsdp_plugin
            plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap = transformer_auto_wrap_policy, None
        pairs.append(sharding.prepare(accelerator, engine, model, adamw))
    return pairs[0], pairs[1], n_ours


def bench_size(size: str, args, device, world: int, accelerator=None) -> list[dict]:
    (ours, ours_opt), (plain, plain_opt), params = build(size, device, accelerator)
    compile_ = (lambda f: torch.compile(f)) if args.compile else (lambda f: f)
    precision = "fp32" if accelerator else args.precision  # FSDP: the launch's --mixed_precision
    train = {
        f"{size} training: ours": training_step(
            ours, ours_opt, compile_(lambda c, y: ours(c, y).loss), args.batch, precision, device
        ),
        f"{size} training: plain": training_step(
            plain, plain_opt, compile_(plain), args.batch, precision, device
        ),
    }
    timing = Timing(repeats=args.repeats, warmup=2 if args.compile else 1)
    tokens = args.batch * GRID * GRID * world
    measured = measure_runs(train, timing, device)
    rows = [
        result_row(name, tokens, "tokens/s", m, baseline=f"{size} training: plain", parameters=params)
        for name, m in measured.items()
    ]
    if accelerator is not None:
        return rows  # sampling runs on one device
    sample = {
        f"{size} sampling: ours": sampling_run(
            lambda y, g: ours.sample(y.shape[0], y, SamplingOptions(cfg_scale=CFG_SCALE), generator=g),
            args.sample_batch,
            args.precision,
            device,
        ),
        f"{size} sampling: plain": sampling_run(
            lambda y, g: plain.sample(y, CFG_SCALE, g), args.sample_batch, args.precision, device
        ),
    }
    if args.precision == "bf16":  # the plain model cast to bf16, no autocast (LlamaGen's sample script)
        plain_bf16 = copy.deepcopy(plain).to(torch.bfloat16)
        sample[f"{size} sampling: plain, bf16 weights"] = sampling_run(
            lambda y, g: plain_bf16.sample(y, CFG_SCALE, g), args.sample_batch, "fp32", device
        )
    measured = measure_runs(sample, Timing(repeats=args.sample_repeats, warmup=1), device)
    tokens = args.sample_batch * GRID * GRID
    rows += [
        result_row(name, tokens, "tokens/s", m, baseline=f"{size} sampling: plain", parameters=params)
        for name, m in measured.items()
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default="B", help="comma-separated presets of priors/sizes.py (B, L, XL, ...)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile both training steps' forward")
    parser.add_argument(
        "--fsdp", action="store_true", help="shard both: accelerate launch --use_fsdp --fsdp_version 2"
    )
    parser.add_argument("--batch", type=int, default=2, help="training batch per process")
    parser.add_argument(
        "--sample-batch", type=int, default=2, help="grids sampled per call (x2 with guidance)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps of each (median)")
    parser.add_argument("--sample-repeats", type=int, default=2, help="timed sampling calls of each (median)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "prior_scale.json")
    args = parser.parse_args()
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = torch.device(args.device)
    accelerator = None
    if args.fsdp:  # launched with `accelerate launch --use_fsdp --fsdp_version 2 [--mixed_precision bf16]`
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=device.type == "cpu")
        device = accelerator.device
    torch.manual_seed(0)
    rows = []
    for size in args.sizes.split(","):
        try:
            rows += bench_size(size, args, device, world if args.fsdp else 1, accelerator)
        except torch.OutOfMemoryError as exc:  # L and up where memory does not allow
            rows.append(
                {
                    "name": f"{size}",
                    "throughput": None,
                    "unit": "tokens/s",
                    "error": f"out of memory: {exc}"[:200],
                }
            )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if rank != 0:
        return
    add_ratios(rows)
    title = f"prior throughput ({args.device}, {args.precision}{', compiled' if args.compile else ''}" + (
        f", FSDP2 x {world})" if args.fsdp else ")"
    )
    print(markdown_table(title, rows))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    save_result(
        {"settings": settings, "world_size": world, "machine": machine_info(device), "rows": rows}, args.json
    )


if __name__ == "__main__":
    main()
