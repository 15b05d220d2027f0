"""`vqgen import` at full size: LlamaGen's VQ-16 (256 px, 16,384 codes of 8 dimensions) and taming-transformers'
ImageNet VQGAN f16-16384, with random weights, saved in the original checkpoint format, imported, and run once.

    python -m benchmarks.import_released --llamagen LLAMAGEN_CHECKOUT --taming TAMING_CHECKOUT [--json OUT.json]

With the checkouts (git clone of github.com/FoundationVision/LlamaGen and github.com/CompVis/taming-transformers;
taming's quantizer needs `pip install einops`), each original is built from its own code (LlamaGen's `VQ_16()`;
taming's Encoder, Decoder and VectorQuantizer2 with the f16-16384 yaml), so the table compares vqgen's parameter
count with the original's and the codes of one image from both (they must be identical). Without them, the
checkpoints are written in the originals' layout from a vqgen model (vqgan_layout), and only the import is measured.

Table: parameters (original, vqgen, equal?), checkpoint MiB, import seconds (read + convert + check + write),
peak resident MiB added by the import, seconds for one encode + decode at 256 px, identical codes.
"""

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.measure import PeakMemory, machine_info, save_result

ROOT = Path(__file__).resolve().parents[1]

TAMING_F16_16384 = {  # configs/imagenet_vqgan.yaml with n_embed 16384 (the released f16-16384 model)
    "embed_dim": 256, "n_embed": 16384,
    "ddconfig": {"double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                 "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0},
}  # fmt: skip


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def llamagen_original(checkout: Path | None):
    """(original model or None, its state dict in LlamaGen's layout)."""
    if checkout is None:
        from vqgen.stages.interop.llamagen_vq import llamagen_config
        from vqgen.stages.interop.vqgan_layout import LLAMAGEN, from_vqgen
        from vqgen.stages.tokenizer.vqgan import VQGAN

        return None, from_vqgen(VQGAN(llamagen_config("VQ-16", 16384, 8, 256)), LLAMAGEN)
    vq = _load(checkout / "tokenizer/tokenizer_image/vq_model.py", "llamagen_vq_model")
    model = vq.VQ_16(codebook_size=16384, codebook_embed_dim=8).eval()
    return model, model.state_dict()


class TamingVQModel(torch.nn.Module):
    """taming.models.vqgan.VQModel's modules (same names), without Lightning and the loss."""

    def __init__(self, checkout: Path, params: dict):
        super().__init__()
        model_py = _load(checkout / "taming/modules/diffusionmodules/model.py", "taming_model")
        quantize_py = _load(checkout / "taming/modules/vqvae/quantize.py", "taming_quantize")
        dd = params["ddconfig"]
        self.encoder, self.decoder = model_py.Encoder(**dd), model_py.Decoder(**dd)
        self.quantize = quantize_py.VectorQuantizer2(params["n_embed"], params["embed_dim"], beta=0.25)
        self.quant_conv = torch.nn.Conv2d(dd["z_channels"], params["embed_dim"], 1)
        self.post_quant_conv = torch.nn.Conv2d(params["embed_dim"], dd["z_channels"], 1)

    def encode(self, x):
        return self.quantize(self.quant_conv(self.encoder(x)))


def taming_original(checkout: Path | None):
    if checkout is None:
        from vqgen.stages.interop.taming import taming_config
        from vqgen.stages.interop.vqgan_layout import TAMING, from_vqgen
        from vqgen.stages.tokenizer.vqgan import VQGAN

        return None, from_vqgen(VQGAN(taming_config(TAMING_F16_16384, None)), TAMING)
    model = TamingVQModel(checkout, TAMING_F16_16384).eval()
    return model, model.state_dict()


@torch.no_grad()
def original_codes(name: str, model, x: torch.Tensor) -> torch.Tensor:
    _, _, (_, _, idx) = model.encode(x)
    return idx.reshape(x.shape[0], -1)


def run_one(name: str, fmt: str, original, state: dict, folder: Path, options: dict) -> dict:
    from vqgen.stages.artifacts.models import load_tokenizer
    from vqgen.stages.commands.interop import ImportConfig, run_import

    ckpt = folder / ("vq_ds16_c2i.pt" if fmt == "llamagen-vq" else "last.ckpt")
    torch.save({"model": state} if fmt == "llamagen-vq" else {"state_dict": state, "global_step": 0}, ckpt)
    del state
    with PeakMemory(torch.device("cpu")) as mem:
        started = time.perf_counter()
        run_import(ImportConfig(fmt, str(ckpt), str(folder / name), options=options))
        seconds = time.perf_counter() - started
    model = load_tokenizer(folder / name / "tokenizer")
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    started = time.perf_counter()
    with torch.no_grad():
        codes = model.encode(x)
        model.decode(codes)
    run_s = time.perf_counter() - started
    ours = sum(p.numel() for p in model.parameters())
    theirs = sum(p.numel() for p in original.parameters()) if original is not None else None
    same = (
        torch.equal(original_codes(name, original, x), codes.reshape(1, -1)) if original is not None else None
    )
    return {
        "name": name,
        "original_parameters": theirs,
        "vqgen_parameters": ours,
        "parameters_equal": None if theirs is None else theirs == ours,
        "checkpoint_mib": ckpt.stat().st_size / 2**20,
        "import_s": seconds,
        "import_peak_mib": mem.mib,
        "encode_decode_s": run_s,
        "codes_identical": same,
    }


def table(rows: list[dict]) -> str:
    head = ["model", "original params", "vqgen params", "equal", "checkpoint MiB", "import s", "import peak MiB",
            "encode+decode s (256 px)", "codes identical"]  # fmt: skip
    keys = ["name", "original_parameters", "vqgen_parameters", "parameters_equal", "checkpoint_mib", "import_s",
            "import_peak_mib", "encode_decode_s", "codes_identical"]  # fmt: skip

    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "NO"
        if isinstance(v, str):
            return v
        return f"{v:,}" if isinstance(v, int) else f"{v:,.1f}"

    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    return "\n".join(lines + ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llamagen", type=Path, help="a LlamaGen checkout (the original's code)")
    parser.add_argument("--taming", type=Path, help="a taming-transformers checkout")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "import_released.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        original, state = llamagen_original(args.llamagen)
        rows.append(run_one("LlamaGen VQ-16", "llamagen-vq", original, state, Path(tmp), {"model": "VQ-16"}))
        del original, state
        yaml = Path(tmp) / "model.yaml"
        yaml.write_text(_yaml(TAMING_F16_16384))
        original, state = taming_original(args.taming)
        rows.append(
            run_one("taming f16-16384", "taming", original, state, Path(tmp), {"model_config": str(yaml)})
        )
    print(table(rows))
    result = {"machine": machine_info(torch.device("cpu")), "rows": rows}
    save_result(result, args.json)
    return result


def _yaml(params: dict) -> str:
    import yaml

    return yaml.safe_dump({"model": {"target": "taming.models.vqgan.VQModel", "params": params}})


if __name__ == "__main__":
    main()
