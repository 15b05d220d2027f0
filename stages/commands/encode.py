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

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vqgen.stages.artifacts.codes import assemble_codes, codes_meta, write_shard
from vqgen.stages.artifacts.hub import looks_local
from vqgen.stages.core.device import check_device_name, resolve_device
from vqgen.stages.core.errors import UserError, read_json_object
from vqgen.stages.core.files import write_json
from vqgen.stages.data.encode import encode_shard, prepared_shards, stream_shards
from vqgen.stages.data.images import DataConfig
from vqgen.stages.data.sources import load_image_splits
from vqgen.stages.data.views import check_augment, resolve_augment, source_size
from vqgen.stages.training.distribution import new_accelerator

MANIFEST = "manifest.json"


@dataclass
class EncodeConfig:
    tokenizer: str  # a tokenizer folder, run or published folder, or Hub id
    out: str | None = None  # the codes folder (default: `codes` beside a local tokenizer)
    data: DataConfig = field(default_factory=DataConfig)  # image_size and channels are set from the tokenizer
    augment: str = "auto"  # none | flip | ten-crop (data/views.VIEWS); auto: flip for RGB, none for grey
    batch_size: int = 64  # images per encoder call (times the views with --augment)
    shard_size: int = 10000  # images per shard file
    device: str = "auto"
    overwrite: bool = False
    resume: bool = False


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


def _codes_folder(cfg: EncodeConfig) -> Path:
    """CODES: --out, or `codes` beside a local tokenizer folder."""
    local = Path(cfg.tokenizer).expanduser()
    if looks_local(cfg.tokenizer) and not local.exists():
        raise UserError(f"--tokenizer {cfg.tokenizer}: no such folder")
    out = Path(cfg.out) if cfg.out else (local.parent / "codes" if local.is_dir() else None)
    if out is None:
        raise UserError(
            f"--tokenizer {cfg.tokenizer} is not a local folder; name the codes folder with --out"
        )
    return out


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
        "tokenizer_fingerprint": model.fingerprint(),
        "data": asdict(cfg.data),
        "augment": cfg.augment,
        "shard_size": cfg.shard_size,
        "processes": world,
    }


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
    from vqgen.stages.artifacts.models import load_tokenizer

    check_augment(cfg.augment)
    if cfg.batch_size < 1 or cfg.shard_size < 1:
        raise UserError("--batch-size and --shard-size must be at least 1")
    check_device_name(cfg.device)
    if cfg.device != "auto":
        resolve_device(cfg.device)
    out = _codes_folder(cfg)
    staging = _staging(out)
    _check_target(cfg, out, staging)
    model = load_tokenizer(cfg.tokenizer).eval()
    cfg.augment = resolve_augment(cfg.augment, model.config.channels)
    check_augment(cfg.augment, model.config.image_size)
    cfg.data.image_size = source_size(cfg.augment, model.config.image_size)
    cfg.data.channels = model.config.channels
    accelerator = new_accelerator(cfg.device)
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
        make = stream_shards if hasattr(ds, "samples") else prepared_shards
        source = make(ds, rank, world, cfg.shard_size, cfg.batch_size)
        encode_split_to_shards(model, source, staging, split, cfg.augment, accelerator, progress)
    accelerator.wait_for_everyone()
    result = {"out": str(out), "images": progress.images, "skipped_shards": progress.skipped}
    result["images_per_s"] = progress.images / max(time.perf_counter() - progress.started, 1e-9)
    if accelerator.is_main_process:
        meta = codes_meta(model, splits.num_classes, splits.class_names, link, cfg.augment)
        shards = {s: sorted((staging / s).glob("*.arrow")) for s in ("train", "validation")}
        assemble_codes(out, shards, meta)  # built beside CODES, then renamed into place
        shutil.rmtree(staging, ignore_errors=True)
        result["rows"] = {s: _rows(out, s) for s in shards}
    accelerator.wait_for_everyone()
    return result


def _rows(out: Path, split: str) -> int:
    from datasets import load_from_disk

    return len(load_from_disk(str(out / split)))
