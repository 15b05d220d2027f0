"""Sampling: a prior draws code grids, the tokenizer it was trained on decodes them into images.

Writes every image on its own in a folder beside `--out` (`<out stem>/00000_label7.png`), a PNG grid of a bounded
selection of them (`--out`), and a manifest of the settings (`<out stem>.json`). A prior paired with the wrong
tokenizer (codebook size, grid shape or fingerprint) is refused.

Any number of images in bounded memory: images are sampled, decoded and written chunk by chunk (`--batch-size`
per chunk), each PNG as soon as it is decoded (written to a temporary name and renamed, so a file under its
final name is always whole). Chunk c draws from its own generator, seeded from (--seed, c), so any chunk can be
regenerated on its own with the same result: an interrupted run continues with `--resume`, which redoes exactly
the chunks with a missing image, and ends with the same files, byte for byte, as an uninterrupted run.
"""

import hashlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from vqgen.priors import Prior
from vqgen.stages.artifacts import replaced
from vqgen.stages.artifacts.models import load_prior, load_tokenizer
from vqgen.stages.artifacts.runs import hold_lock, holds_files, locked_command
from vqgen.stages.core.device import resolve_device
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.files import image_grid, save_png, write_json
from vqgen.stages.core.progress import progress
from vqgen.stages.sampling.sampler import (
    SamplingConfig,
    check_pair,
    compile_sampling_step,
    decode,
    resolve_labels,
    sample_chunks,
    to_pil,
)


@dataclass
class GenerateConfig:
    prior: str = "runs/demo/prior-gru"  # prior folder (or Hub id)
    tokenizer: str | None = None  # default: the `tokenizer` folder beside the prior
    labels: list[int] | None = None  # one label for all, or one per sample; None = a row per class
    n: int = 100
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int = 0
    batch_size: int = 100  # images per chunk; part of the result (chunk c has its own seed)
    out: str | None = None  # grid PNG; default <prior>/generated.png
    overwrite: bool = False
    resume: bool = False  # continue an interrupted run with the same settings
    device: str = "auto"  # cpu | cuda | cuda:N | mps | auto (vqgen.stages.core.device)
    compile: bool = False  # torch.compile the prior's per-token step (falls back to eager with a warning)


def validate(cfg: GenerateConfig, prior: Prior) -> torch.Tensor | None:
    """Check the options; return the (n,) labels to sample, or None for unconditional sampling."""
    cfg.sampling.validate()
    if cfg.out is not None and Path(cfg.out).suffix.lower() != ".png":
        raise UserError(
            f"--out {cfg.out} must be a .png file (the images go into a folder beside it, named after it)"
        )
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    return resolve_labels(prior, cfg.n, cfg.labels)


GRID_MAX_PER_ROW = 10  # the grid PNG shows at most this many images per row ...
GRID_MAX_ROWS = 10  # ... and this many rows, except with one row per class
# an image written here, its temporary file, or a chunk's record of what it wrote (and that record's temporary file)
OWN_FILE = re.compile(r"(\.?\d+(_label\d+)?\.png|\.chunk-\d+\.json)(\.\w+\.tmp)?")


def _record_path(folder: Path, c: int) -> Path:
    return folder / f".chunk-{c:06d}.json"


def _digest(path: Path) -> list:
    data = path.read_bytes()
    return [len(data), hashlib.sha256(data).hexdigest()]


def chunk_intact(folder: Path, c: int, names: list[str]) -> bool:
    """Whether chunk c's images are all there, each with the size and sha256 its record says: a resumed run
    keeps only what it can verify, and redoes a chunk with a missing, truncated or altered image."""
    try:
        record = json.loads(_record_path(folder, c).read_text())
        return all((folder / name).is_file() and record.get(name) == _digest(folder / name) for name in names)
    except (OSError, ValueError, AttributeError):
        return False


def image_names(n: int, labels: torch.Tensor | None) -> list[str]:
    width = max(5, len(str(n - 1)))
    return [
        f"{i:0{width}d}" + (f"_label{int(labels[i])}" if labels is not None else "") + ".png"
        for i in range(n)
    ]


def grid_selection(
    n: int, labels: torch.Tensor | None, class_rows: bool, num_classes: int
) -> tuple[list[int], int]:
    """(indices of the images shown in the grid PNG, images per row): a row per class of up to 10 images each
    when sampling a row per class, else the first up to 100 images, 10 per row."""
    if class_rows:
        per_class = n // num_classes
        shown = min(per_class, GRID_MAX_PER_ROW)
        return [c * per_class + j for c in range(num_classes) for j in range(shown)], shown
    m = min(n, GRID_MAX_PER_ROW * GRID_MAX_ROWS)
    return list(range(m)), min(m, GRID_MAX_PER_ROW)


def weights_fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def manifest_settings(
    cfg: GenerateConfig, prior: Prior, tokenizer, labels: torch.Tensor | None, n: int
) -> dict:
    """Everything that decides the images: a resumed run must match it exactly."""
    label_bytes = labels.numpy().astype("<i8").tobytes() if labels is not None else b""
    return {
        "prior": weights_fingerprint(prior),
        "tokenizer": tokenizer.fingerprint(),
        "n": n,
        "labels": hashlib.sha256(label_bytes).hexdigest()[:16] if labels is not None else None,
        **json.loads(json.dumps(asdict(cfg.sampling))),  # as the manifest holds them (tuples become lists)
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
    }


def prepare_output(out: Path, folder: Path, manifest: Path, settings: dict, cfg: GenerateConfig) -> None:
    """Refuse to overwrite without --overwrite, check a --resume against the manifest, and write the manifest."""
    replaced.recover(folder, lambda: [*_own_files(folder), manifest])  # what a killed --overwrite set aside
    exists = out.exists() or holds_files(folder) or manifest.exists()  # its lock file aside
    if cfg.resume:
        if not manifest.is_file():
            raise UserError(f"--resume: {manifest} does not exist, so there is no generation to continue")
        try:
            previous = json.loads(manifest.read_text())
        except ValueError:
            raise UserError(f"--resume: {manifest} is unreadable; start again with --overwrite") from None
        if previous.get("complete"):
            raise UserError(f"--resume: {out} is already complete ({previous['settings']['n']} images)")
        changed = [k for k in settings if previous.get("settings", {}).get(k) != settings[k]]
        if changed:
            k = changed[0]
            raise UserError(
                f"--resume: {k} was {previous.get('settings', {}).get(k)!r} and is now {settings[k]!r}; "
                "resume with the same prior, tokenizer and options, or start again with --overwrite"
            )
    elif exists and not cfg.overwrite:
        raise UserError(
            f"{out} already exists; pass --overwrite to replace it, --resume to continue it, or choose another --out"
        )
    elif exists:  # the old grid stays until the new one is complete; its images and manifest are set aside
        folder.mkdir(parents=True, exist_ok=True)
        old = _own_files(folder) + ([manifest] if manifest.exists() else [])
        replaced.set_aside(folder, old, lambda: [*_own_files(folder), manifest])
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob(".*.tmp"):  # what a killed write left behind
        tmp.unlink()
    write_json({"settings": settings, "complete": False}, manifest)


def _own_files(folder: Path) -> list[Path]:
    """What a generation wrote into `folder` (only its own file names: never a user's files)."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_file() and OWN_FILE.fullmatch(p.name)]


@locked_command
def run_generate(cfg: GenerateConfig) -> dict:
    """Sample and decode cfg.n images chunk by chunk, writing each as soon as it exists (see the module docstring)."""
    device = resolve_device(cfg.device)
    prior = load_prior(cfg.prior)
    tok_path = cfg.tokenizer or str(Path(cfg.prior).parent / "tokenizer")
    tokenizer = load_tokenizer(tok_path)
    check_pair(prior, tokenizer)
    labels = validate(cfg, prior)
    cfg.sampling = cfg.sampling.for_prior(prior)  # the guidance scale resolved, so the manifest records it
    prior.to(device)
    tokenizer.to(device)
    if cfg.compile:
        compile_sampling_step(prior, warn=lambda line: print(line, file=sys.stderr))
    n = cfg.n if labels is None else labels.numel()
    out = Path(cfg.out) if cfg.out else Path(cfg.prior) / "generated.png"
    folder, manifest = out.with_suffix(""), out.with_suffix(".json")
    settings = manifest_settings(cfg, prior, tokenizer, labels, n)
    names = image_names(n, labels)
    prior.eval()
    tokenizer.eval()
    try:
        hold_lock(folder)  # the output folder stays locked while the command runs
        prepare_output(out, folder, manifest, settings, cfg)
        chunks = [names[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        todo = [c for c, chunk in enumerate(chunks) if not chunk_intact(folder, c, chunk)]
        done_images = n - sum(len(chunks[c]) for c in todo)
        seconds = _write_chunks(cfg, prior, tokenizer, labels, names, folder, todo, done_images)
        class_rows = labels is not None and not cfg.labels and n >= prior.config.num_classes
        shown, per_row = grid_selection(n, labels, class_rows, prior.config.num_classes)
        tiles = torch.stack([_read_image(folder / names[i]) for i in shown])  # (m, C, S, S)
        save_png(image_grid(tiles, nrow=max(1, per_row)), out)
        write_json({"settings": settings, "complete": True}, manifest)
        replaced.commit(folder)  # the new grid is complete: the old images can go
    except OSError as exc:
        raise UserError(f"cannot write samples to {out}: {exc.strerror or exc}") from None
    sampled = n - done_images
    return {
        "n": n,
        "out": str(out),
        "folder": str(folder),
        "manifest": str(manifest),
        "sampled": sampled,
        "seconds": seconds,
        "tokens_per_s": sampled * prior.config.seq_len / seconds if seconds else float("nan"),
    }


@torch.inference_mode()
def _write_chunks(
    cfg, prior, tokenizer, labels, names, folder: Path, todo: list[int], done_images: int
) -> float:
    """Sample, decode and write the given chunks; returns the seconds spent sampling."""
    seconds = 0.0
    n = len(names)
    with progress(total=n, initial=done_images, unit="img", desc="generate") as bar:
        start = time.perf_counter()
        for c, grids in sample_chunks(prior, n, cfg.batch_size, labels, cfg.sampling, cfg.seed, todo):
            seconds += time.perf_counter() - start
            lo = c * cfg.batch_size
            written = names[lo : lo + len(grids)]
            for name, image in zip(written, to_pil(decode(tokenizer, grids))):
                save_png(image, folder / name)
            write_json({name: _digest(folder / name) for name in written}, _record_path(folder, c))
            bar.update(len(grids))
            start = time.perf_counter()
    return seconds


def _read_image(path: Path) -> torch.Tensor:
    """A PNG written by this module back as (C, S, S) in [-1, 1] (exact: the grid rounds it to the same bytes)."""
    with Image.open(path) as image:
        t = torch.from_numpy(np.array(image)).float()  # (S, S) or (S, S, C)
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t / 127.5 - 1
