"""Tokenizer and quantizer throughput, side by side with baselines measured in the same run.

    python -m benchmarks.tokenizer_speed [--quick] [--device cpu|cuda] [--compile] [--json OUT.json]

Tables:
- quantizer forward+backward (vectors/s): ours with every health feature on (EMA, dead-code restart, projection),
  a plain straight-through VQ layer of the same size (same codebook size and input width; the baseline), the
  plain layer at our code width, and `vector_quantize_pytorch.VectorQuantize` when it is installed;
- tokenizer training step (images/s) with the default configuration on 28x28 images, as the trainer takes it
  (AdamW, gradient clipping), in fp32 and under bf16 autocast, eager and (with --compile) torch.compile'd; the
  step's matmul and convolution FLOPs are counted with torch.utils.flop_counter.FlopCounterMode;
- encode and decode (images/s), fp32 and bf16.
Figures are medians over interleaved repeats; ratios are against the baseline row of each table; peak memory is
what one call adds on top of the weights, optimizer state and inputs (measure.PeakMemory).
`benchmarks/run_all.py` runs these functions as part of the whole suite.
"""

import argparse
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from vqgen.stages.tokenizer.base import QuantizerConfig, QuantizerOutput
from vqgen.stages.tokenizer.quantizer import VectorQuantizer
from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig

from benchmarks.measure import (
    Timing,
    add_ratios,
    autocast,
    count_flops,
    error_row,
    machine_info,
    markdown_table,
    measure_runs,
    result_row,
    save_result,
    state_mib,
)

ROOT = Path(__file__).resolve().parents[1]

IMAGE_SIZE = 28
LR, CLIP_GRAD = 2e-3, 1.0  # stages/trainer.py TrainConfig defaults (lr, clip_grad)
QUANTIZER_BASELINE = "plain ST layer, same size (baseline)"


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


class PlainQuantizer(nn.Module):
    """PlainVQ at the encoder's width, answering as the VQ-VAE's quantizer does: the baseline VQ-VAE of the same
    size (same encoder and decoder, a textbook straight-through bottleneck of the same codebook size)."""

    def __init__(self, channels: int, codebook_size: int):
        super().__init__()
        self.vq = PlainVQ(codebook_size, channels)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        z_q, loss = self.vq(z)
        zero = z.new_zeros(())
        codes = z.new_zeros(z.shape[0], z.shape[2], z.shape[3], dtype=torch.long)  # not needed for speed
        return QuantizerOutput(z_q, codes, loss, zero, zero)


def plain_vqvae(config: VQVAEConfig) -> VQVAE:
    """The default tokenizer with its quantizer replaced by a plain straight-through layer (PlainQuantizer)."""
    model = VQVAE(config)
    model.quantizer = PlainQuantizer(config.latent_channels, config.quantizer.codebook_size)
    return model


def _quantizer_step(layer: nn.Module, x: torch.Tensor) -> None:
    out = layer(x)
    q, loss = (out.z_q, out.loss) if hasattr(out, "z_q") else (out[0], out[-1])  # theirs: (q, idx, loss)
    (q.square().mean() + loss.sum()).backward()


def quantizer_rows(
    batch: int, grid: int, width: int, k: int, d: int, timing: Timing, device: torch.device
) -> tuple[list[dict], list[str]]:
    """Forward+backward of each VQ layer on (batch, width, grid, grid) features; vectors/s, ratio to the plain
    straight-through layer of the same size. Returns (rows, notes)."""
    layers: dict[str, tuple[nn.Module, int]] = {  # name -> (layer, input channels)
        QUANTIZER_BASELINE: (PlainVQ(k, width), width),
        f"plain ST layer, code width {d}": (PlainVQ(k, d), d),
        "vqgen VectorQuantizer (EMA, k-means init, restarts, projection)": (
            VectorQuantizer(width, QuantizerConfig(codebook_size=k, code_dim=d)),
            width,
        ),
    }
    notes = []
    try:
        from vector_quantize_pytorch import VectorQuantize

        layers["vector-quantize-pytorch VectorQuantize (EMA, same size)"] = (
            VectorQuantize(
                dim=width, codebook_size=k, decay=0.95, commitment_weight=0.25, accept_image_fmap=True
            ),
            width,
        )
    except ImportError:
        notes.append(
            "vector-quantize-pytorch is not installed, so its row is left out "
            "(pip install vector-quantize-pytorch, or pip install -e '.[bench]')"
        )
    gen = torch.Generator().manual_seed(0)
    steps = {}
    for name, (layer, channels) in layers.items():
        x = torch.randn(batch, channels, grid, grid, generator=gen).to(device).requires_grad_(True)
        steps[name] = partial(_quantizer_step, layer.to(device).train(), x)
    measured = measure_runs(steps, timing, device)  # the first call runs our k-means initialisation
    vectors = batch * grid * grid
    rows = [
        result_row(name, vectors, "vectors/s", m, baseline=QUANTIZER_BASELINE) for name, m in measured.items()
    ]
    return add_ratios(rows), notes


def random_images(batch: int, device: torch.device) -> torch.Tensor:
    """(batch, 1, 28, 28) uniform noise in [-1, 1]: the speed of these models does not depend on the pixels."""
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(batch, 1, IMAGE_SIZE, IMAGE_SIZE, generator=gen) * 2 - 1).to(device)


def tokenizer_train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, precision: str
):
    """One training step as stages/trainer.py takes it: forward under the precision's autocast, loss =
    reconstruction + quantizer loss, backward, gradient clipping, AdamW step. `model` may be torch.compile'd."""
    device, params = images.device, [p for group in optimizer.param_groups for p in group["params"]]

    def step() -> None:
        with autocast(device, precision):
            out = model(images)
            loss = out.recon_loss + out.vq_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP_GRAD)
            optimizer.step()

    return step


PLAIN_NAME = "plain ST VQ-VAE"


def _train_setup(plain: bool, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A default-size tokenizer (ours, or the plain baseline) and its AdamW, placed as the trainer places them: on
    CUDA the convolutions in channels_last and the fused AdamW."""
    torch.manual_seed(0)
    config = VQVAEConfig(image_size=IMAGE_SIZE)
    model = (plain_vqvae(config) if plain else VQVAE(config)).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.99), fused=True if cuda else None)
    return model, optimizer


def tokenizer_train_rows(
    batches: list[int],
    variants: list[tuple[str, bool]],
    timing: Timing,
    device: torch.device,
    compile_backend: str = "inductor",
    plain_baseline: bool = False,
) -> list[dict]:
    """Images/s of the default tokenizer's training step for each batch size x variant (precision, compiled),
    all timed interleaved; ratios against the first variant of the same batch size (fp32 eager by default).
    With `plain_baseline`, every variant is also timed on the plain straight-through VQ-VAE of the same size
    (`plain_vqvae`), and each of our rows is compared with the plain row of the same batch, precision and
    compilation instead. A compile that fails becomes a row with its error instead of stopping the run.
    `compile_backend` "eager" or "aot_eager" checks that the model compiles without generating kernels (quick,
    for tests)."""
    planned, failed, steps, states = [], {}, {}, {}
    for batch in batches:
        images = random_images(batch, device)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        first, flops = None, {}
        for precision, compiled in variants:
            backend = "" if compile_backend == "inductor" else f" ({compile_backend} backend)"
            setting = f"{precision}{', torch.compile' + backend if compiled else ''}, batch {batch}"
            for plain in (True, False) if plain_baseline else (False,):
                name = f"{PLAIN_NAME} {setting}" if plain else f"train step {setting}"
                planned.append(name)
                model, optimizer = _train_setup(plain, device)
                info = {
                    "batch": batch,
                    "precision": precision,
                    "compiled": compile_backend if compiled else False,
                    "model": "plain" if plain else "vqgen",
                }
                try:
                    runner = torch.compile(model, backend=compile_backend) if compiled else model
                    step = tokenizer_train_step(runner, optimizer, images, precision)
                    for _ in range(2 if compiled else 0):
                        step()  # compiles here (and again once the codebook is initialised)
                except Exception as exc:  # noqa: BLE001 - any compile failure is a result to report
                    failed[name] = error_row(name, "images/s", exc, **info)
                    continue
                if plain not in flops and not compiled:
                    flops[plain] = count_flops(step)  # the same for every precision and compile mode
                first = first or name
                baseline = f"{PLAIN_NAME} {setting}" if plain_baseline else first
                steps[name] = step
                info.update(baseline=baseline, flops_per_step=flops.get(plain))
                states[name] = (model, optimizer, info)
    measured = measure_runs(steps, timing, device)
    return add_ratios(
        [failed.get(name) or _train_row(name, states[name], measured[name]) for name in planned]
    )


def _train_row(name: str, state: tuple, m) -> dict:
    """One timed training step's row: images/s, achieved TFLOP/s and the training state's size."""
    model, optimizer, info = state
    row = result_row(name, info["batch"], "images/s", m, **info)
    row["achieved_tflops"] = info["flops_per_step"] / m.median_s / 1e12 if info["flops_per_step"] else None
    row["state_mib"] = state_mib(model, optimizer)  # weights + buffers + AdamW moments
    return row


def codec_rows(batch: int, precisions: list[str], timing: Timing, device: torch.device) -> list[dict]:
    """Images/s of encode (images -> codes) and decode (codes -> images) with the default tokenizer; ratios
    against the fp32 row of the same operation."""
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(image_size=IMAGE_SIZE)).to(device).eval()
    images = random_images(batch, device)
    codes = model.encode(images)  # (B, 7, 7)

    def encode(precision: str) -> None:
        with autocast(device, precision):
            model.encode(images)

    def decode(precision: str) -> None:
        with autocast(device, precision):
            model.decode(codes)

    runs = {
        f"{op.__name__} {p}, batch {batch}": partial(op, p) for op in (encode, decode) for p in precisions
    }
    rows = []
    for name, m in measure_runs(runs, timing, device).items():
        op, precision = name.split(",")[0].split()
        baseline = f"{op} {precisions[0]}, batch {batch}"
        rows.append(
            result_row(name, batch, "images/s", m, baseline=baseline, precision=precision, batch=batch)
        )
    return add_ratios(rows)


TRAIN_COLUMNS = [
    ("matmul+conv TFLOP/s", "achieved_tflops", ".4f"),
    ("weights+optimizer MiB", "state_mib", ".1f"),
]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few repeats")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--compile", action="store_true", help="also time the training step under torch.compile"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "tokenizer_speed.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    timing = Timing(repeats=3) if args.quick else Timing(repeats=20, budget_s=10)
    precisions = ["fp32", "bf16"]
    quant, notes = quantizer_rows(batch=64, grid=7, width=64, k=512, d=16, timing=timing, device=device)
    variants = [(p, False) for p in precisions] + [(p, True) for p in precisions if args.compile]
    train = tokenizer_train_rows([64], variants, timing, device)
    codec = codec_rows(64, precisions, timing, device)
    env = machine_info(device)
    print(f"torch {env['torch']}, {env['torch_threads']} threads, {env['cpu']}, {device}\n")
    print(markdown_table("quantizer forward+backward (64 x 7 x 7 vectors, K=512)", quant))
    print("".join(f"\n{note}" for note in notes))
    print(markdown_table("tokenizer training step (28x28, default config)", train, TRAIN_COLUMNS) + "\n")
    print(markdown_table("tokenizer encode / decode", codec))
    result = {
        "env": env,
        "quantizer": quant,
        "quantizer_notes": notes,
        "tokenizer_train": train,
        "codec": codec,
    }
    save_result(result, args.json)
    return result


if __name__ == "__main__":
    main()
