"""A local folder of images, prepared once: through `datasets`' imagefolder builder (class sub-folders = a
ClassLabel, `train/` and `test/` split folders and metadata.jsonl honoured) into an Arrow cache named by a hash of
the files and the preparation settings, memory-mapped from there by every later run."""

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from vqgen.stages.core.errors import UserError, one_line
from vqgen.stages.core.files import disk_writes, write_json
from vqgen.stages.data.images import (
    EMBEDDED,
    IMAGE_SUFFIXES,
    PREPARED_FORMAT,
    DataConfig,
    ImageSplits,
    _finish,
    _label_reader,
    _no_decode,
    _preprocess,
    _split,
)

PREPARED_META = "prepared.json"  # beside a prepared cache's splits: class names and skipped images


def _prepared_root() -> Path:
    from datasets import config

    return Path(config.HF_DATASETS_CACHE) / "vqgen-prepared"


def _source_key(path: Path, cfg: DataConfig) -> tuple[str, list[Path], list[Path]]:
    """The prepared cache's name: a hash of the source (its path and every file's name, size and modification
    time) and of the settings that shape the prepared pixels; and the folder's image files."""
    h = hashlib.sha256()
    settings = {
        "format": PREPARED_FORMAT,
        "source": str(path.resolve()),
        "size": cfg.image_size,
        "channels": cfg.channels,
        "resize": cfg.resize_mode(),
        "heldout_fraction": cfg.heldout_fraction,
        "image_column": cfg.image_column,
        "label_column": cfg.label_column,
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    images, unusable = [], []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            f = Path(root) / name
            try:
                st = f.stat()
                h.update(f"{f.relative_to(path).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            except (OSError, UnicodeEncodeError):  # a dangling link, a name that is not UTF-8
                unusable.append(f)
                h.update(f"unusable\t{ascii(str(f.relative_to(path)))}\n".encode())
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES:
                images.append(f)
    return h.hexdigest()[:20], images, unusable


def load_folder(path: Path, cfg: DataConfig) -> ImageSplits:
    """A local folder through `datasets`' imagefolder builder (class sub-folders = a ClassLabel, `train/` and
    `test/` split folders and metadata.jsonl honoured), prepared once into an Arrow cache named by a hash of the
    source and the preparation settings (`_source_key`) and memory-mapped from there by every later run."""
    if not path.is_dir():
        raise UserError(
            f"--dataset {path}: not a folder; give a folder of images, a Hub dataset id, or {EMBEDDED}"
        )
    started = time.perf_counter()  # the listing of the files counts: it is part of every later run
    key, files, unusable = _listed(path, cfg)
    cache = _prepared_root() / key
    reused = _reuse_prepared(cache, path, started)
    if reused is not None:
        return reused
    skipped, class_names = _prepare_cache(path, cfg, cache, files, unusable)
    train, heldout = _open_prepared(cache)
    print(
        f"data: prepared {len(train)} + {len(heldout)} images of {path} in {time.perf_counter() - started:.1f} s "
        f"into {cache}",
        file=sys.stderr,
    )
    return ImageSplits(train, heldout, class_names, skipped)


def _listed(path: Path, cfg: DataConfig) -> tuple[str, list[Path], list[Path]]:
    """`_source_key` of the folder, with a warning for the files that cannot be read and for loose images beside
    class folders; a folder without images is refused."""
    key, files, unusable = _source_key(path, cfg)
    if unusable:
        print(
            f"warning: --dataset {path}: skipped {len(unusable)} file(s) that cannot be read: dangling links or "
            f"names that are not UTF-8 (such as {ascii(unusable[0].name)}); rename or remove them",
            file=sys.stderr,
        )
    if not files:
        raise UserError(f"--dataset {path}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    parents = sorted({f.parent.relative_to(path).as_posix() for f in files})
    if "." in parents and len(parents) > 1:  # class folders beside loose images at the root
        loose = sum(f.parent == path for f in files)
        print(
            f"warning: --dataset {path}: {loose} image(s) at its root have no class folder, so they have no label and "
            f"the whole folder is read as unlabelled (its {len(parents) - 1} class folder(s) are not used as "
            "labels); move them into a class folder, or out of the dataset, to keep the labels",
            file=sys.stderr,
        )
    return key, files, unusable


def _reuse_prepared(cache: Path, path: Path, started: float) -> ImageSplits | None:
    """The splits of an intact prepared cache; None when there is none (a damaged one is removed)."""
    if not (cache / PREPARED_META).is_file():
        return None
    try:
        meta = json.loads((cache / PREPARED_META).read_text())
        damaged = [n for n, digest in meta["files"].items() if _digest(cache / n) != digest]
        if damaged:
            raise ValueError(f"{', '.join(damaged)} changed since it was prepared")
        train, heldout = _open_prepared(cache)
        print(
            f"data: reusing the prepared cache {cache} ({len(train)} + {len(heldout)} images of {path}) "
            f"in {time.perf_counter() - started:.2f} s",
            file=sys.stderr,
        )
        return ImageSplits(train, heldout, meta["class_names"], meta["skipped"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        print(f"warning: the prepared cache {cache} is damaged ({exc}); preparing it again", file=sys.stderr)
        shutil.rmtree(cache, ignore_errors=True)
    return None


def _prepare_cache(
    path: Path, cfg: DataConfig, cache: Path, files: list[Path], unusable: list[Path]
) -> tuple[int, list[str]]:
    """Prepare the folder into a temporary folder beside `cache`, renamed into place when whole; returns
    (skipped images, class names)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    # unpredictable: no link followed
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", suffix=".tmp", dir=cache.parent))
    needed = len(files) * cfg.channels * cfg.image_size**2  # the decoded uint8 pixels
    try:
        with disk_writes(cache.parent, needed, "the prepared data cache"):
            source = _without(path, unusable, tmp / "source") if unusable else path
            skipped, class_names = _prepare(source, cfg, tmp, len(files))
            skipped += sum(f.suffix.lower() in IMAGE_SUFFIXES for f in unusable)
            digests = {f"{name}.arrow": _digest(tmp / f"{name}.arrow") for name in ("train", "heldout")}
            write_json(
                {"class_names": class_names, "skipped": skipped, "files": digests}, tmp / PREPARED_META
            )
        shutil.rmtree(tmp / "builder", ignore_errors=True)
        with contextlib.suppress(OSError):  # another process prepared it meanwhile: use theirs
            tmp.rename(cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return skipped, class_names


# prepared files up to this size are hashed whole on every reuse; larger, sampled
FULL_CHECK_BYTES = 256 << 20


def _digest(path: Path) -> list:
    """[size, sha256] of a prepared file, checked on every reuse: of the whole file up to FULL_CHECK_BYTES (about
    0.2 s), beyond that of 64 blocks of 1 MiB spread over it, so that a check stays cheap whatever the size."""
    size = path.stat().st_size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_CHECK_BYTES:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        else:
            for i in range(64):
                f.seek((size - (1 << 20)) * i // 63)
                h.update(f.read(1 << 20))
    return [size, h.hexdigest()]


def _open_prepared(cache: Path):
    """The prepared train and held-out splits, memory-mapped (nothing is read until asked)."""
    from datasets import Dataset

    return tuple(Dataset.from_file(str(cache / f"{name}.arrow")) for name in ("train", "heldout"))


def _without(path: Path, unusable: list[Path], shadow: Path) -> Path:
    """A mirror of the folder `path` made of links to its files, the `unusable` ones left out (the imagefolder
    builder stops at a name that is not UTF-8), so that the builder sees the same layout without them."""
    for root, _, names in os.walk(path):
        for name in names:
            f = Path(root) / name
            if f in unusable:
                continue
            link = shadow / f.relative_to(path)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f.absolute())
    return shadow


def _prepare(path: Path, cfg: DataConfig, tmp: Path, n_files: int) -> tuple[int, list[str]]:
    """Decode the folder once into tmp/train.arrow and tmp/heldout.arrow; returns (images skipped, class names).
    The held-out images are drawn from the listing before decoding (the split folders, or a seeded
    `train_test_split` of the file table), so each split is written once, straight from the decoded batches:
    no later pass reads the pixels back through the memory map, and memory does not grow with the folder."""
    from datasets import load_dataset

    try:
        raw = load_dataset("imagefolder", data_dir=str(path), cache_dir=str(tmp / "builder"))
    except Exception as exc:  # a layout the builder refuses: one line
        raise UserError(f"--dataset {path}: cannot read the folder as images ({one_line(exc)})") from None
    train_raw = raw["train"] if "train" in raw else raw[next(iter(raw))]
    held_name = next((n for n in ("test", "validation", "heldout") if n in raw and n != "train"), None)
    column = cfg.image_column if cfg.image_column in train_raw.column_names else "image"
    class_names, label_of = _label_reader(train_raw, cfg.label_column or None)
    if held_name:
        parts = (train_raw, raw[held_name])
    else:  # fewer than 2 files: decoded anyway, so that unreadable ones are reported as such
        parts = _split(train_raw, cfg) if len(train_raw) >= 2 else (train_raw, train_raw.select([]))
    train, heldout = (
        _preprocess(_no_decode(part, column), cfg, column, label_of, str(tmp / f"{name}.arrow"))
        for part, name in zip(parts, ("train", "heldout"), strict=True)
    )
    if len(train) + len(heldout) == 0:
        raise UserError(f"--dataset {path}: none of the {n_files} images could be read")
    if not len(train) or not len(heldout):
        missing = "training" if not len(train) else "held-out"
        raise UserError(
            f"--dataset {path}: {len(train) + len(heldout)} usable image(s) and no {missing} image; at least 2 are "
            "needed (train and held-out)"
        )
    splits = _finish(train, heldout, class_names, sum(len(raw[n]) for n in raw))
    return splits.skipped, class_names
