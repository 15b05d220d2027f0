"""Training speed of every registered prior with its default config: tokens/s of one training step.

    python -m benchmarks.prior_training [--quick] [--device cpu|cuda] [--batch 64] [--json OUT.json]

A step as stages/trainer.py takes it (teacher-forced NLL, backward, gradient clipping, AdamW) on random codes of a
7x7 grid, vocabulary 512, 10 classes (as the demo's codes), in fp32 and under bf16 autocast. All priors and
precisions are timed interleaved; ratios are against the same prior in fp32; peak memory is what one step adds on
top of the weights, optimizer state and batch. `benchmarks/run_all.py` runs `prior_training_rows` in its suite.
"""

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from vqgen.stages.core.registry import PRIORS

from benchmarks.measure import (
    Timing,
    add_ratios,
    autocast,
    error_row,
    machine_info,
    markdown_table,
    measure_runs,
    result_row,
    save_result,
    state_mib,
)
from benchmarks.sampling import GRID, NUM_CLASSES, VOCAB, build
from benchmarks.tokenizer_speed import CLIP_GRAD, LR

ROOT = Path(__file__).resolve().parents[1]

BATCH = 64
TRAIN_COLUMNS = [("weights+optimizer MiB", "state_mib", ".1f"), ("params", "params", ",")]


def prior_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, codes, labels, precision: str):
    """One training step: NLL of (B, H, W) codes given labels, backward, gradient clipping, AdamW step."""

    def step() -> None:
        with autocast(codes.device, precision):
            loss = model(codes, labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_GRAD)
        optimizer.step()

    return step


def prior_training_rows(
    names: list[str],
    batch: int,
    precisions: list[str],
    timing: Timing,
    device: torch.device,
    grid: int = GRID,
    compiled_precisions: list[str] = (),
    compile_backend: str = "inductor",
) -> list[dict]:
    """Tokens/s of each prior's training step in each precision (and, for `compiled_precisions`, torch.compile'd
    with `compile_backend`); ratio against the prior's first precision, eager, at the same batch. A variant whose
    first step fails (bf16 in a kernel that lacks it, a compile error) becomes a row with its error. On CUDA the
    AdamW is the fused one, as the trainer's."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, VOCAB, (batch, grid, grid), generator=gen).to(device)  # (B, H, W)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device)
    planned, failed, steps, states = [], {}, {}, {}
    variants = [(p, False) for p in precisions] + [(p, True) for p in compiled_precisions]
    backend = "" if compile_backend == "inductor" else f" ({compile_backend} backend)"
    for name in names:
        for precision, compiled in variants:
            key = f"{name} {precision}{', torch.compile' + backend if compiled else ''}, batch {batch}"
            info = {
                "prior": name,
                "precision": precision,
                "batch": batch,
                "grid": grid,
                "compiled": compile_backend if compiled else False,
            }
            planned.append(key)
            model = build(name, device, grid).train()
            fused = True if device.type == "cuda" else None
            optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.99), fused=fused)
            try:
                runner = torch.compile(model, backend=compile_backend) if compiled else model
                step = prior_train_step(runner, optimizer, codes, labels, precision)
                step()  # the first warm-up step (and the compilation)
            except Exception as exc:  # noqa: BLE001 - reported as a row; the other variants go on
                failed[key] = error_row(key, "tokens/s", exc, **info)
                continue
            steps[key], states[key] = step, (model, optimizer, info)
    measured = measure_runs(steps, replace(timing, warmup=max(0, timing.warmup - 1)), device)
    baseline = f"{precisions[0]}, batch {batch}"
    return add_ratios(
        [failed.get(key) or _train_row(key, states[key], measured[key], baseline) for key in planned]
    )


def _train_row(key: str, state: tuple, m, baseline: str) -> dict:
    """One timed training step's row: tokens/s against the prior's baseline variant, parameters, state size."""
    model, optimizer, info = state
    tokens = info["batch"] * info["grid"] ** 2
    row = result_row(key, tokens, "tokens/s", m, f"{info['prior']} {baseline}")
    row.update(info, params=sum(p.numel() for p in model.parameters()), state_mib=state_mib(model, optimizer))
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"code grids per step (default {BATCH})")
    parser.add_argument("--priors", nargs="*", default=None, help="registered names (default: all)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "prior_training.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    machine = machine_info(device)
    timing = Timing(repeats=3) if args.quick else Timing(repeats=20, budget_s=10)
    rows = prior_training_rows(args.priors or PRIORS.names(), args.batch, ["fp32", "bf16"], timing, device)
    print(f"torch {machine['torch']}, {machine['torch_threads']} threads, {device}, batch {args.batch}\n")
    print(markdown_table("prior training step", rows, TRAIN_COLUMNS))
    result = {"machine": machine, "results": rows}
    save_result(result, args.json)
    return result


if __name__ == "__main__":
    main()
