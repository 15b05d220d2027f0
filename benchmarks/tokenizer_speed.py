"""Tokenizer and quantizer throughput, side by side with baselines measured in the same run.

    python benchmarks/tokenizer_speed.py [--quick] [--json benchmarks/results/tokenizer_speed.json]

Rows:
- quantizer forward+backward (vectors/s): ours with every health feature on (EMA, dead-code restart, projection),
  a plain straight-through VQ layer of the same size (same codebook size and input width), the plain layer at
  our code width, and `vector_quantize_pytorch.VectorQuantize` when it is installed;
- tokenizer training step (images/s) with the default configuration, and encode / decode images/s.
Figures are medians over repeats; ratios are against the plain layer of the same size.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stages.quantizer import QuantizerConfig, VectorQuantizer  # noqa: E402
from stages.tokenizer import VQVAE, TokenizerConfig  # noqa: E402


class PlainVQ(nn.Module):
    """The textbook straight-through VQ layer (van den Oord et al. 2017): nearest code, codebook + commitment
    loss, no EMA, no restarts, no projection."""

    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25):
        super().__init__()
        self.codebook = nn.Embedding(codebook_size, dim)
        self.beta = beta

    def forward(self, z: torch.Tensor):
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B*H*W, D)
        dist = (
            flat.pow(2).sum(1, keepdim=True)
            - 2 * flat @ self.codebook.weight.t()
            + self.codebook.weight.pow(2).sum(1)
        )
        idx = dist.argmin(1)
        quant = self.codebook(idx)
        loss = F.mse_loss(quant, flat.detach()) + self.beta * F.mse_loss(flat, quant.detach())
        quant = flat + (quant - flat).detach()
        return quant.view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2), loss


def median_time(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def quantizer_rows(batch: int, grid: int, width: int, k: int, d: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    z = torch.randn(batch, width, grid, grid)
    vectors = batch * grid * grid
    layers: dict[str, nn.Module] = {
        "plain ST layer, same size (baseline)": PlainVQ(k, width),
        f"plain ST layer, code width {d}": PlainVQ(k, d),
        "vqgen VectorQuantizer (EMA, k-means init, restarts, projection)": VectorQuantizer(
            width, QuantizerConfig(codebook_size=k, code_dim=d)
        ),
    }
    try:
        from vector_quantize_pytorch import VectorQuantize

        layers["vector-quantize-pytorch VectorQuantize (EMA, same size)"] = VectorQuantize(
            dim=width, codebook_size=k, decay=0.95, commitment_weight=0.25, accept_image_fmap=True
        )
    except ImportError:
        pass
    steps = {}
    for name, layer in layers.items():
        layer.train()
        inp = z if "code width" not in name else torch.randn(batch, d, grid, grid)
        x = inp.clone().requires_grad_(True)

        def step(layer=layer, x=x):
            out = layer(x)
            q, loss = (
                (out.z_q, out.loss) if hasattr(out, "z_q") else (out[0], out[-1])
            )  # theirs: (q, idx, loss)
            (q.square().mean() + loss.sum()).backward()

        for _ in range(3):  # warm-up (includes our k-means initialisation)
            step()
        steps[name] = step
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):  # interleaved, so that a noisy moment hits every layer alike
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    rows = []
    for name, ts in times.items():
        seconds = statistics.median(ts)
        rows.append({"name": name, "vectors_per_s": vectors / seconds, "ms": seconds * 1e3})
    base = rows[0]["vectors_per_s"]
    for row in rows:
        row["ratio_to_baseline"] = row["vectors_per_s"] / base
    return rows


def tokenizer_rows(batch: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = VQVAE(TokenizerConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, 28, 28) * 2 - 1

    def train_step():
        out = model(x)
        opt.zero_grad(set_to_none=True)
        (out.recon_loss + out.vq_loss).backward()
        opt.step()

    rows = [
        {
            "name": "tokenizer train step (default config)",
            "images_per_s": batch / median_time(train_step, repeats),
        }
    ]
    model.eval()
    codes = model.encode(x)
    rows.append(
        {"name": "tokenizer encode", "images_per_s": batch / median_time(lambda: model.encode(x), repeats)}
    )
    rows.append(
        {
            "name": "tokenizer decode",
            "images_per_s": batch / median_time(lambda: model.decode(codes), repeats),
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few repeats (for tests)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "tokenizer_speed.json")
    args = parser.parse_args()
    repeats = 3 if args.quick else 20
    quant = quantizer_rows(batch=64, grid=7, width=64, k=512, d=16, repeats=repeats)
    tok = tokenizer_rows(batch=64, repeats=max(3, repeats // 2))
    env = {
        "machine": platform.machine(), "processor": platform.processor(), "python": platform.python_version(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }  # fmt: skip
    print(f"torch {env['torch']}, {env['threads']} threads, {env['machine']}")
    print("\n| quantizer forward+backward (64 x 7 x 7 vectors, K=512) | vectors/s | ms | vs baseline |")
    print("|---|---:|---:|---:|")
    for r in quant:
        print(f"| {r['name']} | {r['vectors_per_s']:,.0f} | {r['ms']:.2f} | {r['ratio_to_baseline']:.2f}x |")
    print("\n| tokenizer (batch 64, 28x28) | images/s |")
    print("|---|---:|")
    for r in tok:
        print(f"| {r['name']} | {r['images_per_s']:,.0f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"env": env, "quantizer": quant, "tokenizer": tok}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
