"""Tokenizers at the sizes users train: the training step of every full-size preset at 256 px, and the health of a
large (4,096-code) vector-quantizer codebook on held-out images.

    python -m benchmarks.tokenizer_sizes [--device cpu|cuda] [--batch-size 2] [--repeats 3] [--usage-steps 400]
                                         [--skip-usage] [--tiny] [--json OUT.json]

Tables:
- training step at 256 px (images/s, ms per step, peak MiB): every architecture's default config and every size
  preset of `python cli.py tokenizers` except the tiny test ones, at `--image-size` (default 256), RGB, with the
  trainer's optimizer (AdamW, gradient clipping); parameters and forward GFLOPs per image (FlopCounterMode) beside;
- codebook health: a VQ-VAE with a 4,096-code `vq` quantizer trained on the embedded digits (mnist5k), then
  codebook usage, perplexity and dead codes over the held-out split (the issue asks for usage >= 90%).
On a CPU use a batch of 1-2 and a few repeats: one VQ-16 step at 256 px is seconds. `--tiny` runs everything at
toy sizes (for the test suite).
"""

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from vqgen.stages.core.registry import TOKENIZERS, tokenizer_presets
from vqgen.stages.tokenizer.base import count_size

from benchmarks.measure import (
    Timing,
    add_ratios,
    machine_info,
    markdown_table,
    measure_runs,
    result_row,
    save_result,
)

ROOT = Path(__file__).resolve().parents[1]

LR, CLIP_GRAD = 2e-3, 1.0  # stages/training/config.py TrainConfig defaults
USAGE_TARGET = 0.9


def size_presets(image_size: int, tiny: bool) -> dict[str, object]:
    """name -> config at `image_size`, RGB: every architecture's default and its presets (not the test ones)."""
    out = {}
    for preset in tokenizer_presets():
        if ("tiny" in preset.name) != tiny:
            continue
        config = preset.config
        config.image_size, config.channels = image_size, 3
        if tiny:
            config.quantizer.codebook_size = 16
        out[preset.name] = config
    return out


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor):
    """One trainer step (stages/training/trainer.py): loss = reconstruction + quantizer loss, clip, AdamW."""

    def run() -> None:
        out = model(images)
        (out.recon_loss + out.vq_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_GRAD)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def step_table(configs: dict, batch_size: int, timing: Timing, device: torch.device) -> list[dict]:
    rows = []
    baseline = next(iter(configs))
    for name, config in configs.items():  # one at a time: each full-size model holds hundreds of MiB of state
        cls = TOKENIZERS.get(config.model_type)
        params, flops = count_size(cls, config)
        torch.manual_seed(0)
        model = cls(config).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
        images = torch.rand(batch_size, 3, config.image_size, config.image_size, device=device) * 2 - 1
        m = measure_runs({name: train_step(model, optimizer, images)}, timing, device)[name]
        rows.append(
            result_row(
                name,
                batch_size,
                "images/s",
                m,
                baseline,
                params_m=params / 1e6,
                gflops_per_image=flops / 1e9,
                grid=config.grid_size,
                codebook=config.quantizer.codebook_size,
            )
        )
        print(
            f"  {name}: {rows[-1]['throughput']:.2f} images/s, peak {rows[-1]['peak_mem_mib']} MiB",
            flush=True,
        )
        del model, optimizer
    return add_ratios(rows)


def codebook_health(steps: int, batch_size: int, codebook_size: int, tiny: bool) -> dict:
    """Train a VQ-VAE with `codebook_size` codes on mnist5k and report held-out usage, as `tokenize` does."""
    from vqgen.stages.commands.tokenize import TokenizeConfig, run_tokenize
    from vqgen.stages.data.images import DataConfig
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqvae import VQVAEConfig
    from vqgen.stages.training.config import TOKENIZER_TRAINING

    model = VQVAEConfig(quantizer=QuantizerConfig(codebook_size=codebook_size))
    if tiny:
        model = replace(model, base_channels=8, num_res_blocks=1)
    train = replace(
        TOKENIZER_TRAINING, steps=steps, batch_size=batch_size, sample_every=0, checkpoint_every=steps
    )
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        cfg = TokenizeConfig(run_dir=str(Path(folder) / "run"), data=DataConfig(), model=model, train=train)
        results = run_tokenize(cfg)
    return {
        "codebook_size": codebook_size,
        "steps": steps,
        "batch_size": batch_size,
        "heldout_usage": results["codebook_usage"],
        "perplexity": results["perplexity"],
        "dead_codes": results["dead_codes"],
        "psnr": results["psnr"],
        "eval_images": results["eval_images"],
        "meets_target": results["codebook_usage"] >= USAGE_TARGET,
        "wall_seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 2 on a CPU, 8 on a GPU")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed steps per preset (the median is reported)"
    )
    parser.add_argument("--presets", nargs="*", default=None, help="only these presets")
    parser.add_argument("--usage-steps", type=int, default=400)
    parser.add_argument("--usage-codes", type=int, default=4096)
    parser.add_argument("--skip-usage", action="store_true")
    parser.add_argument("--skip-steps", action="store_true", help="only the codebook health")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for the test suite")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch = args.batch_size or (8 if device.type == "cuda" else 2)
    image_size = 16 if args.tiny else args.image_size
    configs = size_presets(image_size, args.tiny)
    configs = {k: v for k, v in configs.items() if not args.presets or k in args.presets}
    result = {"machine": machine_info(device)}
    if not args.skip_steps and configs:
        print(f"training step at {image_size} px, batch {batch}, on {device}:", flush=True)
        steps = step_table(configs, batch, Timing(repeats=args.repeats, warmup=1), device)
        columns = [("params (M)", "params_m", ".2f"), ("GFLOPs/image (fwd)", "gflops_per_image", ".1f"),
                   ("grid", "grid", ""), ("codes", "codebook", "")]  # fmt: skip
        print(markdown_table(f"train step, {image_size} px, batch {batch}", steps, columns))
        result["train_step"] = steps
    if not args.skip_usage:
        codes = 64 if args.tiny else args.usage_codes
        print(
            f"\ncodebook health: vq with {codes} codes, {args.usage_steps} steps on mnist5k ...", flush=True
        )
        health = codebook_health(args.usage_steps, 64, codes, args.tiny)
        print(
            f"held-out usage {health['heldout_usage']:.1%} (target >= {USAGE_TARGET:.0%}: "
            f"{'met' if health['meets_target'] else 'NOT met'}), perplexity {health['perplexity']:.0f}, "
            f"dead codes {health['dead_codes']}, PSNR {health['psnr']:.2f} dB, {health['wall_seconds']:.0f} s"
        )
        result["codebook_health"] = health
    if args.json:
        save_result(result, args.json)
    return result


if __name__ == "__main__":
    main()
