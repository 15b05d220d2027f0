"""LlamaGen's GPT-B at full size through `vqgen import llamagen-gpt`: parameter counts, import time, peak memory,
and one run of the imported prior against LlamaGen's own model on the same random weights.

    python -m benchmarks.llamagen_gpt_import --llamagen PATH/TO/LlamaGen [--model GPT-B] [--image-size 256]
                                              [--tokens 256] [--json OUT.json]

PATH/TO/LlamaGen is a checkout of https://github.com/FoundationVision/LlamaGen (its `autoregressive/models/gpt.py`,
`generate.py` and `utils/drop_path.py` are imported, as by tests/fixtures/llamagen_gpt/make_fixtures.py). Steps:
1. build LlamaGen's GPT (16384 codes, 1000 classes, a 16x16 grid at 256 px) with random weights (their
   initialisation, the zeroed output layer given random values too) and save it as `train_c2i.py` does:
   {"model": state dict, "steps", "args"};
2. write a run holding a random tokenizer of 16384 codes and a 16x16 grid (the GPT needs one beside it);
3. `python cli.py import llamagen-gpt c2i_B_256.pt --run RUN --model GPT-B --image-size 256` in a child process:
   its wall time against a child that only `torch.load`s the same file (weights_only) as the baseline, and both
   children's peak resident memory against the checkpoint's size;
4. load the imported prior and run it once: teacher-forced logits of 2 class-conditional sequences against
   LlamaGen's (max difference), and one guided (cfg 4) top-k-1 sample of `--tokens` tokens from each side
   (identical, and the time of each).
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.measure import machine_info, save_result

ROOT = Path(__file__).resolve().parents[1]

MIB = 2**20
BASELINE = (  # the same reader without the conversion
    "import argparse, sys, torch; torch.serialization.add_safe_globals([argparse.Namespace]); "
    "torch.load(sys.argv[1], map_location='cpu', weights_only=True, mmap=True)"
)


def their_model(gpt, name: str, grid: int):
    torch.manual_seed(0)
    model = gpt.GPT_models[name](vocab_size=16384, block_size=grid * grid, num_classes=1000)
    with torch.no_grad():
        torch.nn.init.normal_(model.output.weight, std=0.02)  # their init zeroes it: every logit would be 0
    return model.eval()


def write_tokenizer(run: Path, image_size: int) -> None:
    """A random tokenizer of 16384 codes and an image_size/16 grid (small widths: only its vocabulary and grid
    matter here)."""
    from vqgen.stages.artifacts.models import save_model
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig

    q = QuantizerConfig(codebook_size=16384, code_dim=8, init="random")
    config = VQVAEConfig(
        image_size=image_size,
        channels=3,
        downsample=16,
        base_channels=8,
        max_channels=32,
        num_res_blocks=1,
        latent_channels=16,
        quantizer=q,
    )
    save_model(VQVAE(config).eval(), run / "tokenizer")


def child(args: list[str]) -> tuple[float, float, str]:
    """(seconds, peak resident MiB, stderr) of a child process (each child's own peak: a fresh fork per call)."""
    wrapper = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); s = time.perf_counter() - t; "
        "print(s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, r.returncode); "
        "sys.stderr.write(r.stderr[-2000:])"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, check=True)
    seconds, peak, code = out.stdout.split()
    if int(code):
        raise RuntimeError(f"{' '.join(args)} failed: {out.stderr}")
    return float(seconds), float(peak), out.stderr


def sample_both(theirs, ours, generate, labels: torch.Tensor, tokens: int) -> dict:
    """Greedy guided sampling (cfg 4, top-k 1) by LlamaGen's `generate` and by the imported prior: the same tokens,
    and the time each took."""
    from vqgen.priors import SamplingOptions
    from vqgen.stages.interop.llamagen_gpt import llamagen_cfg_interval

    t = time.perf_counter()
    torch.manual_seed(0)
    their_seq = generate(
        theirs,
        labels,
        tokens,
        cfg_scale=4.0,
        cfg_interval=-1,
        temperature=1.0,
        top_k=1,
        top_p=1.0,
        sample_logits=True,
    )
    their_seq = their_seq[:, :tokens].long()
    their_s = time.perf_counter() - t
    t = time.perf_counter()
    options = SamplingOptions(
        top_k=1, cfg_scale=4.0, cfg_interval=llamagen_cfg_interval(-1, ours.config.seq_len)
    )
    grid = ours.sample(labels.numel(), labels, options)
    our_s = time.perf_counter() - t
    ours_flat = grid.view(labels.numel(), -1)[:, :tokens]
    identical = bool(torch.equal(ours_flat, their_seq))
    return {
        "identical": identical,
        "llamagen_s": their_s,
        "vqgen_s": our_s,
        "vqgen_vs_llamagen_speed": their_s / our_s,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--llamagen", type=Path, required=True, help="a checkout of FoundationVision/LlamaGen"
    )
    parser.add_argument("--model", default="GPT-B")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=256, help="tokens sampled by each side (<= the grid)")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "llamagen_gpt_import.json"
    )
    return parser.parse_args()


def measure(args: argparse.Namespace, gpt, generate) -> dict:
    """A random LlamaGen GPT saved as their checkpoint, imported by `cli.py import` in a child process (timed
    against torch.load alone), and both models compared: parameters, logits, greedy samples."""
    from vqgen.stages.artifacts.models import load_prior

    grid = args.image_size // 16
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        theirs = their_model(gpt, args.model, grid)
        ckpt = tmp / f"c2i_{args.model.removeprefix('GPT-')}_{args.image_size}.pt"
        state = {"model": theirs.state_dict(), "steps": 0, "args": argparse.Namespace(gpt_model=args.model)}
        torch.save(state, ckpt)
        write_tokenizer(tmp / "run", args.image_size)
        base_s, base_mib, _ = child([sys.executable, "-c", BASELINE, str(ckpt)])
        cmd = [
            sys.executable,
            str(ROOT / "cli.py"),
            "import",
            "llamagen-gpt",
            str(ckpt),
            "--run",
            str(tmp / "run"),
        ]
        import_s, import_mib, _ = child([*cmd, "--model", args.model, "--image-size", str(args.image_size)])
        ours = load_prior(tmp / "run" / f"prior-{args.model.lower()}").eval()
        n_theirs = sum(p.numel() for p in theirs.parameters())
        n_ours = sum(p.numel() for p in ours.parameters())
        codes = torch.randint(0, 16384, (2, grid * grid), generator=torch.Generator().manual_seed(1))
        labels = torch.tensor([207, 360])
        with torch.no_grad():
            ref, _ = theirs(idx=codes[:, :-1], cond_idx=labels, input_pos=torch.arange(grid * grid))
            got = ours(codes.view(2, grid, grid), labels).logits.reshape(2, grid * grid, -1)
        sampled = sample_both(theirs, ours, generate, labels, min(args.tokens, grid * grid))
        ckpt_mib = ckpt.stat().st_size / MIB
    return {
        "model": args.model,
        "image_size": args.image_size,
        "grid": grid,
        "parameters": {"llamagen": n_theirs, "vqgen": n_ours, "equal": n_theirs == n_ours},
        "checkpoint_mib": ckpt_mib,
        "import_s": import_s,
        "torch_load_s": base_s,
        "import_vs_torch_load": import_s / base_s,
        "import_peak_mib": import_mib,
        "torch_load_peak_mib": base_mib,
        "import_peak_vs_checkpoint": import_mib / ckpt_mib,
        "logits_max_abs_diff": float((got - ref).abs().max()),
        "logits_max_abs": float(ref.abs().max()),
        "sample": {"tokens": min(args.tokens, grid * grid), "cfg_scale": 4.0, "top_k": 1, **sampled},
        "machine": machine_info(torch.device("cpu")),
    }


def print_table(r: dict) -> None:
    n, s = r["parameters"], r["sample"]
    base_s, import_s, ckpt_mib, import_mib = (
        r["torch_load_s"],
        r["import_s"],
        r["checkpoint_mib"],
        r["import_peak_mib"],
    )
    print(f"| {r['model']} at {r['image_size']} px | LlamaGen | vqgen |")
    print("|---|---:|---:|")
    print(f"| parameters | {n['llamagen']:,} | {n['vqgen']:,} |")
    print(
        f"| import (child process) | torch.load alone: {base_s:.1f} s | {import_s:.1f} s ({import_s / base_s:.2f}x) |"
    )
    print(
        f"| peak memory (checkpoint {ckpt_mib:.0f} MiB) | torch.load alone: {r['torch_load_peak_mib']:.0f} MiB | "
        f"{import_mib:.0f} MiB ({import_mib / ckpt_mib:.2f}x the checkpoint) |"
    )
    print(f"| logits, max abs diff | (max {r['logits_max_abs']:.2f}) | {r['logits_max_abs_diff']:.2e} |")
    print(
        f"| {s['tokens']} tokens, cfg 4, top-k 1 | {s['llamagen_s']:.1f} s | "
        f"{s['vqgen_s']:.1f} s, identical: {s['identical']} |"
    )


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(args.llamagen.resolve()))  # another project's checkout, named on the command line
    from autoregressive.models import gpt
    from autoregressive.models.generate import generate

    result = measure(args, gpt, generate)
    print_table(result)
    save_result(result, args.json)


if __name__ == "__main__":
    main()
