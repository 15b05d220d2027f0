"""`vqgen import FORMAT SOURCE --run RUN`: a released model of another project as an ordinary vqgen folder; and
`vqgen export TOKENIZER --format FORMAT --out DIR`, the way back.

The format (vqgen.stages.interop: llamagen-vq, taming, diffusers, or an installed one) reads SOURCE and builds the
vqgen model; this command checks everything it can before reading a byte (the format, its options, the target
folder), then runs the imported model once on `--device` (a finite reconstruction of one image, for a tokenizer),
and writes RUN/<folder> (config.json with the provenance, model.safetensors, README.md) in one step: the folder
appears whole or not at all, and an existing one is replaced only with --overwrite.
"""

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from vqgen.priors import Prior
from vqgen.stages.artifacts.models import save_model
from vqgen.stages.core.device import check_device_name, resolve_device
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.files import write_text
from vqgen.stages.interop.base import EXPORT_FORMATS, IMPORT_FORMATS, Imported, ImportRequest
from vqgen.stages.tokenizer.base import Tokenizer


@dataclass
class ImportConfig:
    fmt: str
    source: str
    run: str
    overwrite: bool = False
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)  # format options given (None values dropped)


def run_import(cfg: ImportConfig) -> dict:
    """Import, check and write; returns what was written and how long it took."""
    started = time.perf_counter()
    fmt = IMPORT_FORMATS.get(cfg.fmt)()
    options = {k: v for k, v in cfg.options.items() if v is not None}
    foreign = sorted(set(options) - fmt.options)
    if foreign:
        takes = ", ".join("--" + o.replace("_", "-") for o in sorted(fmt.options)) or "none"
        raise UserError(
            f"--{foreign[0].replace('_', '-')} does not apply to import format {cfg.fmt!r} (it takes: {takes})"
        )
    check_device_name(cfg.device)
    device = resolve_device(cfg.device)
    request = ImportRequest(cfg.fmt, cfg.source, Path(cfg.run), str(device), options)
    target = Path(cfg.run) / fmt.folder(request)
    if target.exists() and not cfg.overwrite:
        raise UserError(f"{target} already exists; pass --overwrite to replace it")
    imported = fmt.convert(request)
    check_runs(imported.model, device)
    write_imported(imported, target)
    return {"folder": str(target), "summary": imported.summary, "seconds": time.perf_counter() - started}


@torch.no_grad()
def check_runs(model, device: torch.device) -> None:
    """Run an imported tokenizer once (encode and decode one random image) or an imported prior once (the logits
    of one code grid) on `device`: an import that loads but cannot run is refused before anything is written."""
    if isinstance(model, Prior):
        check_prior_runs(model, device)
        return
    if not isinstance(model, Tokenizer):
        return
    c = model.config
    x = torch.rand(1, c.channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(0))
    model.to(device)
    try:
        recon = model.decode(model.encode(x.to(device) * 2 - 1))
    finally:
        model.to("cpu")
    if not bool(torch.isfinite(recon).all()):
        raise UserError(
            "the imported tokenizer reconstructs non-finite values; the checkpoint's weights are broken"
        )


def check_prior_runs(prior: Prior, device: torch.device) -> None:
    c = prior.config
    codes = torch.zeros(1, c.grid_height, c.grid_width, dtype=torch.long, device=device)
    prior.to(device)
    try:
        logits = prior(codes).logits
    finally:
        prior.to("cpu")
    if not bool(torch.isfinite(logits).all()):
        raise UserError("the imported prior gives non-finite logits; the checkpoint's weights are broken")


def card(imported: Imported) -> str:
    """README.md of an imported folder: where it came from, under which licence, how to use it."""
    p, prior = imported.provenance, isinstance(imported.model, Prior)
    licence = p.get("licence") or "unknown"
    lines = [
        "---",
        "library_name: vqgen",
        f"license: {licence if p.get('licence') else 'other'}",
        f"tags: [vqgen, {'autoregressive-prior' if prior else 'image-tokenizer'}, imported]",
        "---",
        "",
        f"# Imported with `vqgen import {p['format']}`",
        "",
        imported.summary + ".",
        "",
        "| provenance | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in sorted(p.items()) if v is not None],
        "",
        f"Licence of the original weights: {licence}; the original project's terms apply to this copy.",
        "",
        *(
            [
                "Use: `vqgen generate --prior THIS_FOLDER --label 207` (the run's `tokenizer` beside it decodes), or in "
                'Python `vqgen.Pipeline.from_pretrained("THIS_FOLDER")`.',
                "",
            ]
            if prior
            else [
                "Use: `vqgen encode --tokenizer THIS_FOLDER --dataset DATA --out CODES`, or in Python",
                '`vqgen.stages.artifacts.models.load_tokenizer("THIS_FOLDER")`.',
                "",
            ]
        ),
    ]
    return "\n".join(lines)


def write_imported(imported: Imported, target: Path) -> None:
    """config.json (with the provenance), model.safetensors and README.md into `target`, all at once."""
    imported.model.config.provenance = imported.provenance

    def write(tmp: Path) -> None:
        save_model(imported.model, tmp)
        write_text(card(imported), tmp / "README.md")

    write_folder(target, write)


def write_folder(target: Path, write) -> None:
    """`write(tmp)` into a fresh folder beside `target`, then renamed into place: the folder appears whole or not
    at all, and an existing one is replaced only once the new one is complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.new.", dir=target.parent))
    old = None
    try:
        write(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@dataclass
class ExportConfig:
    tokenizer: str  # a vqgen tokenizer folder (RUN/tokenizer), a run or published folder, or a Hub id
    fmt: str
    out: str
    overwrite: bool = False


def run_export(cfg: ExportConfig) -> dict:
    """Write the tokenizer in another project's layout; returns the folder and its files."""
    from vqgen.stages.artifacts.models import load_tokenizer

    exporter = EXPORT_FORMATS.get(cfg.fmt)()
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not cfg.overwrite:
        raise UserError(f"--out {out} already exists and is not empty; pass --overwrite to replace it")
    model = load_tokenizer(cfg.tokenizer)
    files: list[str] = []
    write_folder(out, lambda tmp: files.extend(exporter.export(model, tmp)))
    return {"folder": str(out), "files": files}
