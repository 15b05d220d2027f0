"""`vqgen encode --tokenizer DIR --dataset X --out CODES`: any dataset through any tokenizer (trained, imported or a
Hub id) into the codes dataset `train-prior` reads (vqgen.stages.artifacts.codes), without training.

The data options are tokenize's (folder, Hub id, --streaming, the same train / validation split); the image size
and channels are the tokenizer's. Every process (`accelerate launch ... encode`) encodes its own contiguous part of
each split and writes it in shards of --shard-size images as it goes, into CODES' staging folder
`.CODES.encoding/` beside it; no process holds more than one shard of codes. A shard is written whole or not at all,
so after a kill `--resume` (same options, same number of processes) encodes only the shards that are missing. At the
end the shards become CODES (read through memory maps) and the staging folder is removed. `--augment flip|ten-crop`
stores the codes of every augmented view of each training image (data/views.py), a view index per row.
"""

import itertools
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from vqgen.stages.artifacts.codes import VIEW_OF_VALIDATION, VIEWS, assemble_codes, write_shard
from vqgen.stages.artifacts.hub import looks_local
from vqgen.stages.core.device import check_device_name, resolve_device, training_accelerator_kwargs
from vqgen.stages.core.errors import UserError, read_json_object
from vqgen.stages.core.files import write_json
from vqgen.stages.data.images import DataConfig, to_float
from vqgen.stages.data.pixels import iter_pixel_batches, label_array
from vqgen.stages.data.sources import load_image_splits
from vqgen.stages.data.views import crop_size, make_views, validation_view

MANIFEST = "manifest.json"
STREAM_ID = 10**12  # a streamed image's id: rank * STREAM_ID + its position in the rank's stream


@dataclass
class EncodeConfig:
    tokenizer: str  # a tokenizer folder, run or published folder, or Hub id
    out: str | None = None  # the codes folder (default: `codes` beside a local tokenizer)
    data: DataConfig = field(default_factory=DataConfig)  # image_size and channels are set from the tokenizer
    augment: str = "none"  # none | flip | ten-crop (artifacts/codes.VIEWS)
    batch_size: int = 64  # images per encoder call (times the views with --augment)
    shard_size: int = 10000  # images per shard file
    device: str = "auto"
    overwrite: bool = False
    resume: bool = False


Batches = Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (uint8 pixels, labels, image ids)


def _prepared_shards(
    ds, rank: int, world: int, shard_size: int, batch_size: int
) -> Iterator[tuple[int, Batches]]:
    """(shard number, lazy batches) over this process's rows of a prepared split: nothing is read for a shard
    whose batches are not iterated."""
    n = len(ds)
    lo, hi = n * rank // world, n * (rank + 1) // world
    labels = torch.as_tensor(label_array(ds)) if n else torch.empty(0, dtype=torch.long)

    def rows(a: int, b: int) -> Batches:
        for pixels in iter_pixel_batches(ds, batch_size, a, b):
            m = len(pixels)
            yield pixels, labels[a : a + m], torch.arange(a, a + m)
            a += m

    for k, a in enumerate(range(lo, hi, shard_size)):
        yield k, rows(a, min(a + shard_size, hi))


def _stream_shards(
    split, rank: int, world: int, shard_size: int, batch_size: int
) -> Iterator[tuple[int, Batches]]:
    """The same over this process's part of a stream; a skipped shard's samples are read past (a stream cannot
    seek), not encoded."""
    samples = split.samples(split.node(rank, world))
    for k in itertools.count():
        first = next(samples, None)
        if first is None:
            return
        part = itertools.chain([first], itertools.islice(samples, shard_size - 1))

        def batches(part=part, start=rank * STREAM_ID + k * shard_size) -> Batches:
            while group := list(itertools.islice(part, batch_size)):
                pixels = torch.from_numpy(np.stack([p for p, _ in group]))
                yield pixels, torch.tensor([lab for _, lab in group]), torch.arange(start, start + len(group))
                start += len(group)

        yield k, batches()
        for _ in part:  # drain what the consumer did not read (a skipped shard)
            pass


@torch.no_grad()
def encode_shard(model, batches: Batches, augment: str, validation: bool, device) -> tuple:
    """(codes (R, h, w) int32, labels, image ids, view indices) of one shard's images: every view of a training
    image (consecutive rows), the one validation view of a validation image."""
    size = model.config.image_size
    views = 1 if validation else len(VIEWS[augment])
    out: list[list[torch.Tensor]] = [[], [], [], []]
    for pixels, labels, ids in batches:
        x = to_float(pixels.to(device))
        x = validation_view(x, augment, size) if validation else make_views(x, augment, size)
        view = (
            torch.full((len(ids),), VIEW_OF_VALIDATION[augment])
            if validation
            else torch.arange(views).repeat(len(ids))
        )
        parts = (
            model.encode(x).cpu().to(torch.int32),
            labels.repeat_interleave(views),
            ids.repeat_interleave(views),
            view,
        )
        for bucket, part in zip(out, parts):
            bucket.append(part)
    return tuple(torch.cat(b) for b in out)


@dataclass
class Progress:
    """images/s over this run of the command (shards found done are not counted), printed once a shard."""

    started: float = field(default_factory=time.perf_counter)
    images: int = 0
    skipped: int = 0

    def line(self, split: str, shard: int, rank: int, world: int) -> str:
        rate = self.images / max(time.perf_counter() - self.started, 1e-9)
        return (
            f"{split}: shard {shard} of process {rank + 1}/{world} written; {self.images:,} images encoded by this "
            f"process ({rate:,.1f} images/s), {self.skipped} shard(s) found done"
        )


def encode_split_to_shards(
    model, source, folder: Path, split: str, augment: str, accelerator, progress
) -> None:
    rank, world = accelerator.process_index, accelerator.num_processes
    validation = split == "validation"
    for k, batches in source:
        path = folder / split / f"{rank:05d}-of-{world:05d}-{k:07d}.arrow"
        if path.exists():  # written whole by an earlier run (--resume)
            progress.skipped += 1
            continue
        codes, labels, ids, views = encode_shard(model, batches, augment, validation, accelerator.device)
        write_shard(path, codes, labels, ids, views)
        progress.images += int(ids.unique_consecutive().numel())
        if rank == 0:
            print(progress.line(split, k, rank, world), flush=True)


def _staging(out: Path) -> Path:
    return out.parent / f".{out.name}.encoding"


def _check_target(cfg: EncodeConfig, out: Path, staging: Path) -> None:
    """Refuse, before anything is read, to overwrite CODES or to start over an interrupted encode unasked."""
    if cfg.resume and cfg.overwrite:
        raise UserError("give --resume or --overwrite, not both")
    if cfg.resume and not staging.is_dir():
        raise UserError(f"--resume: no interrupted encode of {out} to continue (no {staging})")
    if staging.is_dir() and not (cfg.resume or cfg.overwrite):
        raise UserError(
            f"an interrupted encode of {out} is in {staging}; pass --resume to continue it or --overwrite to start over"
        )
    if out.exists() and any(out.iterdir() if out.is_dir() else [out]) and not cfg.overwrite:
        raise UserError(f"--out {out} already exists; pass --overwrite to replace it")


def _manifest(cfg: EncodeConfig, model, world: int) -> dict:
    """What must not change between a run and its --resume: the shards would not fit together."""
    return {
        "tokenizer_fingerprint": model.fingerprint(), "data": asdict(cfg.data), "augment": cfg.augment,
        "shard_size": cfg.shard_size, "processes": world,
    }  # fmt: skip


def _check_manifest(staging: Path, manifest: dict) -> None:
    saved = read_json_object(staging / MANIFEST, f"--resume: {staging / MANIFEST}")
    saved["data"] = {**manifest["data"], **saved.get("data", {})}
    for key, value in manifest.items():
        if saved.get(key) != value:
            raise UserError(
                f"--resume: {key} differs from the interrupted encode ({saved.get(key)!r} then, {value!r} now); "
                "resume with the same options and number of processes, or start over with --overwrite"
            )


def _tokenizer_link(cfg: EncodeConfig, out: Path, model) -> str:
    """codes.json's `tokenizer`: the tokenizer folder relative to CODES, which train-prior accepts inside the run
    folder (CODES' parent) only; a tokenizer from elsewhere is saved there as RUN/tokenizer."""
    from vqgen.stages.artifacts.models import load_tokenizer, save_model

    local = Path(cfg.tokenizer).expanduser()
    run = out.resolve().parent
    if local.is_dir() and (local / "config.json").is_file() and local.resolve().is_relative_to(run):
        return str(Path("..") / local.resolve().relative_to(run))
    beside = run / "tokenizer"
    if beside.exists() and load_tokenizer(beside).fingerprint() == model.fingerprint():
        return "../tokenizer"  # the same tokenizer, saved there by an earlier encode
    if beside.exists():
        raise UserError(
            f"--out {out}: its run folder already holds {beside}, another tokenizer than --tokenizer {cfg.tokenizer}; "
            "choose --out in another folder"
        )
    save_model(model, beside)
    return "../tokenizer"


def run_encode(cfg: EncodeConfig, log=print) -> dict:
    """Encode both splits into CODES; returns the counts and the speed."""
    from accelerate import Accelerator
    from vqgen.stages.artifacts.models import load_tokenizer

    if cfg.augment not in VIEWS:
        raise UserError(f"--augment must be one of {', '.join(VIEWS)}, got {cfg.augment!r}")
    if cfg.batch_size < 1 or cfg.shard_size < 1:
        raise UserError("--batch-size and --shard-size must be at least 1")
    check_device_name(cfg.device)
    if cfg.device != "auto":
        resolve_device(cfg.device)
    local = Path(cfg.tokenizer).expanduser()
    if looks_local(cfg.tokenizer) and not local.exists():
        raise UserError(f"--tokenizer {cfg.tokenizer}: no such folder")
    out = Path(cfg.out) if cfg.out else (local.parent / "codes" if local.is_dir() else None)
    if out is None:
        raise UserError(
            f"--tokenizer {cfg.tokenizer} is not a local folder; name the codes folder with --out"
        )
    staging = _staging(out)
    _check_target(cfg, out, staging)
    model = load_tokenizer(cfg.tokenizer).eval()
    size = model.config.image_size
    cfg.data.image_size = crop_size(size) if cfg.augment == "ten-crop" else size
    cfg.data.channels = model.config.channels
    accelerator = Accelerator(**training_accelerator_kwargs(cfg.device))
    rank, world = accelerator.process_index, accelerator.num_processes
    manifest = _manifest(cfg, model, world)
    link = _tokenizer_link(cfg, out, model) if accelerator.is_main_process else None
    if accelerator.is_main_process:
        if cfg.resume:
            _check_manifest(staging, manifest)
        else:
            shutil.rmtree(staging, ignore_errors=True)
            write_json(manifest, staging / MANIFEST)
    accelerator.wait_for_everyone()
    splits = load_image_splits(cfg.data)
    model.to(accelerator.device)
    progress = Progress()
    for split, ds in (("train", splits.train), ("validation", splits.heldout)):
        make = _stream_shards if hasattr(ds, "samples") else _prepared_shards
        source = make(ds, rank, world, cfg.shard_size, cfg.batch_size)
        encode_split_to_shards(model, source, staging, split, cfg.augment, accelerator, progress)
    accelerator.wait_for_everyone()
    result = {"out": str(out), "images": progress.images, "skipped_shards": progress.skipped}
    result["images_per_s"] = progress.images / max(time.perf_counter() - progress.started, 1e-9)
    if accelerator.is_main_process:
        g = model.config.grid_size
        meta = {
            "tokenizer": link, "tokenizer_fingerprint": model.fingerprint(),
            "vocab_size": model.config.quantizer.codebook_size, "grid_height": g, "grid_width": g,
            "num_classes": splits.num_classes, "class_names": splits.class_names, "augment": cfg.augment,
            "views": len(VIEWS[cfg.augment]), "view_names": VIEWS[cfg.augment],
        }  # fmt: skip
        shards = {s: sorted((staging / s).glob("*.arrow")) for s in ("train", "validation")}
        _assemble_into_place(out, shards, meta)
        shutil.rmtree(staging, ignore_errors=True)
        result["rows"] = {s: _rows(out, s) for s in shards}
    accelerator.wait_for_everyone()
    return result


def _assemble_into_place(out: Path, shards: dict, meta: dict) -> None:
    """The codes dataset built beside CODES, then renamed into place (an existing CODES goes only then)."""
    import os
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new.", dir=out.parent))
    try:
        assemble_codes(tmp / "codes", shards, meta)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp / "codes", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rows(out: Path, split: str) -> int:
    from datasets import load_from_disk

    return len(load_from_disk(str(out / split)))
