"""Image datasets through `datasets`: the embedded MNIST digits, a local folder of images, or a Hub dataset.

Every source becomes two `datasets.Dataset` splits (train, held-out) with a `pixels` column of uint8 arrays
(C, S, S) and an integer `label` column (-1 where there is no label). Images are converted to the configured
channels (RGBA and palette images are converted, not rejected; 16-bit and float images are scaled to 8 bits, never
clipped: `to_8bit`), fitted inside S x S keeping their aspect ratio and padded to a square, once, by
`Dataset.map` (cached on disk by `datasets`, memory-mapped rather than loaded).
Unreadable images are skipped and counted; a source with no readable image is an error.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from vqgen.stages.core.errors import UserError, one_line, redact

EMBEDDED = "mnist5k"
RESIZE_MODES = ("center-crop", "pad")
PREPARED_FORMAT = 1  # bump when the preparation changes: older prepared caches are then not reused
ASSETS = Path(__file__).parent / "assets"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class DataConfig:
    dataset: str = (
        EMBEDDED  # "mnist5k" (embedded), a folder of images (class subfolders = labels), or a Hub id
    )
    split: str = "train"  # Hub datasets: the training split
    heldout_split: str | None = None  # Hub datasets: the held-out split; None = hold out heldout_fraction
    image_column: str = "image"
    label_column: str | None = "label"  # None or a missing column = unlabelled
    image_size: int = 28
    channels: int = 1  # 1 = grey, 3 = RGB
    heldout_fraction: float = 0.1
    revision: str | None = None  # Hub datasets: branch, tag or commit
    resize: str | None = None  # "center-crop" | "pad"; None = center-crop for RGB folders/Hub data, else pad
    random_flip: bool = False  # tokenizer training: flip half of each batch left-right
    random_crop: bool = False  # tokenizer training: reflect-pad by size/8 and crop back at a random offset
    streaming: bool = (
        False  # train straight from a Hub dataset or local .tar shards / parquet files (streaming.py)
    )
    shuffle_buffer: int = 1000  # streaming: samples per shuffled block
    heldout_size: int = 500  # streaming: held-out samples (the first of --heldout-split, or of the stream)

    def resize_mode(self) -> str:
        """The resize mode in effect: the one asked for, or centre crop for RGB images of a folder or the Hub and
        the letterbox (pad) for grey images and the embedded digits, as before."""
        if self.resize is not None:
            return self.resize
        return "center-crop" if self.channels == 3 and self.dataset != EMBEDDED else "pad"


@dataclass
class ImageSplits:
    train: "object"  # datasets.Dataset with columns pixels (C, S, S) uint8 and label int
    heldout: "object"
    class_names: list[str] = field(default_factory=list)  # empty = unlabelled
    skipped: int = 0  # unreadable images left out

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit or float greyscale image as 8-bit "L", its range scaled rather than clipped (PIL's own `convert`
    clips, so a 16-bit PNG came out nearly binary and a float TIFF in [0, 1] black):
    - 16-bit (modes I;16*, and I, which PIL gives some 16-bit PNGs): 0..65535 -> 0..255, value / 257 rounded
      (values outside 0..65535 are clipped to it first);
    - float (mode F): an image whose values all lie in [0, 1] is scaled by 255; any other is scaled from its own
      [min, max] to 0..255 (a constant image becomes 0); NaN counts as 0, infinities are clipped to the finite range.
    Other modes are returned unchanged."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        values = np.clip(np.nan_to_num(values, nan=min(max(lo, 0.0), hi)), lo, hi)
        if lo >= 0 and hi <= 1:
            values = values * 255
        else:
            values = (values - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(values)
    else:
        return image
    return Image.fromarray(np.round(values).astype(np.uint8), "L")


def to_array(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """A PIL image -> (C, size, size) uint8: mode converted (16-bit and float images scaled to 8 bits, see
    `to_8bit`), fitted inside the square, padded with black."""
    image = to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    image = image.convert("L" if channels == 1 else "RGB")
    w, h = image.size
    if (w, h) != (size, size):
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), Image.Resampling.LANCZOS)
        canvas = Image.new(image.mode, (size, size))
        canvas.paste(image, ((size - nw) // 2, (size - nh) // 2))
        image = canvas
    arr = np.asarray(image, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)  # (C, S, S)


def center_square(image: Image.Image) -> Image.Image:
    """The largest centred square of an image (any mode): resized to S x S afterwards, this is the centre crop
    after resizing the short side to S (as ADM and LlamaGen prepare ImageNet)."""
    w, h = image.size
    side = min(w, h)
    if w == h:
        return image
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def fit_array(image: Image.Image, size: int, channels: int, resize: str = "pad") -> np.ndarray:
    """A PIL image -> (C, size, size) uint8 by `resize`: "pad" fits it inside the square and pads (to_array);
    "center-crop" crops its centred square first, so nothing is padded and the short side fills the square."""
    if resize == "center-crop":
        image = center_square(image)
    return to_array(image, size, channels)


def _preprocess(ds, cfg: DataConfig, image_column: str, label_of):
    """Map a dataset with an image column (decode=False) to pixels + label, dropping unreadable images."""
    from datasets import Array3D, Features, Value

    def convert(batch):
        pixels, labels = [], []
        for i, item in enumerate(batch[image_column]):
            try:
                if isinstance(item, dict):
                    src = item.get("path") if item.get("bytes") is None else io.BytesIO(item["bytes"])
                    image = Image.open(src)
                else:
                    image = item
                image.load()
                pixels.append(fit_array(image, cfg.image_size, cfg.channels, cfg.resize_mode()))
                labels.append(label_of(batch, i))
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
                continue  # unreadable, truncated or too large to decode safely: skipped, and counted by _finish
        return {"pixels": pixels, "label": labels}

    features = Features(
        {"pixels": Array3D((cfg.channels, cfg.image_size, cfg.image_size), "uint8"), "label": Value("int64")}
    )
    return ds.map(
        convert,
        batched=True,
        batch_size=256,
        remove_columns=ds.column_names,
        features=features,
        desc="preparing images",
    )


def _no_decode(ds, column: str):
    from datasets import Image as ImageFeature

    if isinstance(ds.features.get(column), ImageFeature):
        ds = ds.cast_column(column, ImageFeature(decode=False))
    return ds


def _finish(train, heldout, class_names: list[str], total: int) -> ImageSplits:
    kept = len(train) + len(heldout)
    if kept == 0:
        raise UserError("none of the dataset's images could be read; check the files")
    if total > kept:
        print(f"warning: skipped {total - kept} of {total} images that could not be read", file=sys.stderr)
    return ImageSplits(train, heldout, class_names, total - kept)


def _split(ds, cfg: DataConfig):
    if len(ds) < 2:
        raise UserError(
            f"the dataset has {len(ds)} usable image(s); at least 2 are needed (train and held-out)"
        )
    parts = ds.train_test_split(test_size=cfg.heldout_fraction, seed=0)
    return parts["train"], parts["test"]


def load_embedded(cfg: DataConfig) -> ImageSplits:
    from datasets import Dataset

    parts = [
        _no_decode(Dataset.from_parquet(str(ASSETS / f"{EMBEDDED}-{name}.parquet")), "image")
        for name in ("train", "heldout")
    ]
    label_of = lambda batch, i: int(batch["label"][i])  # noqa: E731
    train, heldout = (_preprocess(p, cfg, "image", label_of) for p in parts)
    return _finish(train, heldout, [str(d) for d in range(10)], sum(len(p) for p in parts))


def _prepared_root() -> Path:
    from datasets import config

    return Path(config.HF_DATASETS_CACHE) / "vqgen-prepared"


def _source_key(path: Path, cfg: DataConfig) -> tuple[str, list[Path]]:
    """The prepared cache's name: a hash of the source (its path and every file's name, size and modification
    time) and of the settings that shape the prepared pixels; and the folder's image files."""
    h = hashlib.sha256()
    settings = {
        "format": PREPARED_FORMAT, "source": str(path.resolve()), "size": cfg.image_size,
        "channels": cfg.channels, "resize": cfg.resize_mode(), "heldout_fraction": cfg.heldout_fraction,
        "image_column": cfg.image_column, "label_column": cfg.label_column,
    }  # fmt: skip
    h.update(json.dumps(settings, sort_keys=True).encode())
    images = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            f = Path(root) / name
            st = f.stat()
            h.update(f"{f.relative_to(path).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            if f.suffix.lower() in IMAGE_SUFFIXES:
                images.append(f)
    return h.hexdigest()[:20], images


def _label_reader(ds, label_column: str | None):
    """(class names, label_of(batch, i)) for a dataset's label column: a ClassLabel's names, or the sorted
    distinct values of another column; no classes and -1 labels without one."""
    from datasets import ClassLabel

    label_col = label_column if label_column in ds.column_names else None
    feature = ds.features.get(label_col) if label_col else None
    class_names = list(feature.names) if isinstance(feature, ClassLabel) else []
    if label_col and not class_names:
        class_names = sorted({str(v) for v in ds.select_columns([label_col])[label_col]})

    def label_of(batch, i):
        if label_col is None:
            return -1
        value = batch[label_col][i]
        return int(value) if isinstance(feature, ClassLabel) else class_names.index(str(value))

    return class_names, label_of


def load_folder(path: Path, cfg: DataConfig) -> ImageSplits:
    """A local folder through `datasets`' imagefolder builder (class sub-folders = a ClassLabel, `train/` and
    `test/` split folders and metadata.jsonl honoured), prepared once into an Arrow cache named by a hash of the
    source and the preparation settings (`_source_key`) and memory-mapped from there by every later run."""
    from datasets import load_dataset, load_from_disk

    if not path.is_dir():
        raise UserError(
            f"--dataset {path}: not a folder; give a folder of images, a Hub dataset id, or {EMBEDDED}"
        )
    started = time.perf_counter()  # the listing of the files counts: it is part of every later run
    key, files = _source_key(path, cfg)
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
    cache = _prepared_root() / key
    if (cache / "vqgen.json").is_file():
        try:
            meta = json.loads((cache / "vqgen.json").read_text())
            train, heldout = load_from_disk(str(cache / "train")), load_from_disk(str(cache / "heldout"))
            print(
                f"data: reusing the prepared cache {cache} ({len(train)} + {len(heldout)} images of {path}) "
                f"in {time.perf_counter() - started:.2f} s",
                file=sys.stderr,
            )
            return ImageSplits(train, heldout, meta["class_names"], meta["skipped"])
        except (OSError, ValueError, KeyError, FileNotFoundError):
            shutil.rmtree(cache, ignore_errors=True)  # damaged: prepared again below
    tmp = cache.with_name(f".{key}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            raw = load_dataset("imagefolder", data_dir=str(path), cache_dir=str(tmp / "builder"))
        except Exception as exc:  # a layout the builder refuses: one line
            raise UserError(f"--dataset {path}: cannot read the folder as images ({one_line(exc)})") from None
        train_raw = raw["train"] if "train" in raw else raw[next(iter(raw))]
        held_name = next((n for n in ("test", "validation", "heldout") if n in raw and n != "train"), None)
        column = cfg.image_column if cfg.image_column in train_raw.column_names else "image"
        class_names, label_of = _label_reader(train_raw, cfg.label_column or None)
        prep = lambda ds: _preprocess(_no_decode(ds, column), cfg, column, label_of)  # noqa: E731
        total = sum(len(raw[n]) for n in raw)
        if held_name:
            train, heldout = prep(train_raw), prep(raw[held_name])
        else:
            prepared = prep(train_raw)
            if len(prepared) == 0:
                raise UserError(f"--dataset {path}: none of the {len(files)} images could be read")
            train, heldout = _split(prepared, cfg)
        splits = _finish(train, heldout, class_names, total)
        train.save_to_disk(str(tmp / "train"), max_shard_size="64MB")  # bounded memory while flattening
        heldout.save_to_disk(str(tmp / "heldout"), max_shard_size="64MB")
        (tmp / "vqgen.json").write_text(json.dumps({"class_names": class_names, "skipped": splits.skipped}))
        shutil.rmtree(tmp / "builder", ignore_errors=True)
        with contextlib.suppress(OSError):  # another process prepared it meanwhile: use theirs
            tmp.rename(cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    train, heldout = load_from_disk(str(cache / "train")), load_from_disk(str(cache / "heldout"))
    print(
        f"data: prepared {len(train)} + {len(heldout)} images of {path} in {time.perf_counter() - started:.1f} s "
        f"into {cache}",
        file=sys.stderr,
    )
    return ImageSplits(train, heldout, class_names, splits.skipped)


def load_hub(cfg: DataConfig) -> ImageSplits:
    from datasets import load_dataset
    from vqgen.stages.artifacts.hub import ensure_hub_reachable

    ensure_hub_reachable(f"--dataset {cfg.dataset}")

    def fetch(split: str):
        try:
            return load_dataset(cfg.dataset, split=split, revision=cfg.revision)
        except Exception as exc:  # offline, missing repo, missing split: one line, no retries stack
            first = redact(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"--dataset {cfg.dataset!r}: could not load split {split!r} from the Hugging Face Hub ({first}); "
                "check the id and your network, or pass a local folder"
            ) from None

    train_raw = fetch(cfg.split)
    if cfg.image_column not in train_raw.column_names:
        raise UserError(
            f"--image-column {cfg.image_column!r} not in the dataset; columns: {train_raw.column_names}"
        )
    class_names, label_of = _label_reader(train_raw, cfg.label_column)

    prep = lambda ds: _preprocess(_no_decode(ds, cfg.image_column), cfg, cfg.image_column, label_of)  # noqa: E731
    if cfg.heldout_split:
        heldout_raw = fetch(cfg.heldout_split)
        return _finish(prep(train_raw), prep(heldout_raw), class_names, len(train_raw) + len(heldout_raw))
    train, heldout = _split(prep(train_raw), cfg)
    return _finish(train, heldout, class_names, len(train_raw))


def load_image_splits(cfg: DataConfig) -> ImageSplits:
    """Resolve --dataset to the embedded data, a local folder, or a Hub id."""
    if cfg.channels not in (1, 3):
        raise UserError(f"--channels must be 1 (grey) or 3 (RGB), got {cfg.channels}")
    if cfg.image_size < 4:
        raise UserError(f"--image-size must be at least 4, got {cfg.image_size}")
    if cfg.resize is not None and cfg.resize not in RESIZE_MODES:
        raise UserError(f"--resize must be {' or '.join(RESIZE_MODES)}, got {cfg.resize!r}")
    if cfg.streaming:
        from vqgen.stages.data.streaming import load_stream

        return load_stream(cfg)
    if cfg.dataset == EMBEDDED:
        return load_embedded(cfg)
    path = Path(cfg.dataset).expanduser()
    if path.exists():
        return load_folder(path, cfg)
    from vqgen.stages.artifacts.hub import check_hub_id, looks_local

    if looks_local(cfg.dataset):
        raise UserError(f"--dataset {cfg.dataset}: no such folder")
    check_hub_id(cfg.dataset, "--dataset")
    return load_hub(cfg)


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, S, S) -> float in [-1, 1]."""
    return pixels.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def arrow_pixels(column, shape) -> np.ndarray:
    """An Arrow pixels column (Array3D, chunked or not, sliced or not) -> (N, C, S, S) uint8 numpy, through Arrow's
    flat values: no Python object per pixel (datasets' numpy formatting of Array3D costs several times the data)."""
    import pyarrow as pa

    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        storage = chunk.storage if isinstance(chunk, pa.ExtensionArray) else chunk
        parts.append(storage.flatten().flatten().flatten().to_numpy(zero_copy_only=False))
    values = np.concatenate(parts) if len(parts) != 1 else parts[0]
    return values.reshape(-1, *shape).astype(np.uint8, copy=False)


def read_rows(ds, key) -> torch.Tensor:
    """uint8 (B, C, S, S) pixels of some rows of a prepared split: a slice or a list of indices."""
    table = ds.select_columns(["pixels"]).with_format("arrow")[key]
    return torch.from_numpy(arrow_pixels(table.column("pixels"), ds.features["pixels"].shape).copy())


def pixel_tensor(ds) -> torch.Tensor:
    """The whole uint8 pixel column (N, C, S, S) of a prepared split (small splits only: previews, tests)."""
    if len(ds) == 0:
        return torch.empty(0, *ds.features["pixels"].shape, dtype=torch.uint8)
    return read_rows(ds, slice(0, len(ds)))


def label_array(ds) -> np.ndarray:
    """The label column of a prepared split, read without its pixels."""
    return np.asarray(ds.select_columns(["label"]).with_format("numpy")[:]["label"], dtype=np.int64)


def iter_pixel_batches(ds, batch_size: int, start: int = 0, stop: int | None = None):
    """uint8 (B, C, S, S) tensors of rows start..stop of a prepared split, batch by batch: only one batch of
    pixels is held at a time. A split stored as plain Arrow files (no index mapping, as prepared caches and
    `map` outputs are) is read with ordinary reads rather than through the memory map, so that the pages of a
    large split do not pile up in the process's resident memory."""
    import pyarrow as pa

    stop = len(ds) if stop is None else min(stop, len(ds))
    files = [f["filename"] for f in ds.cache_files]
    if getattr(ds, "_indices", None) is not None or not files:
        for i in range(start, stop, batch_size):
            yield read_rows(ds, slice(i, min(i + batch_size, stop)))
        return
    shape = ds.features["pixels"].shape
    pending, held, row = [], 0, 0
    for name in files:
        with pa.OSFile(name) as source:
            for record in pa.ipc.open_stream(source):
                n = record.num_rows
                lo, hi = max(start - row, 0), min(stop - row, n)
                row += n
                if hi <= lo:
                    if row >= stop:
                        break
                    continue
                column = record.column(record.schema.get_field_index("pixels")).slice(lo, hi - lo)
                pending.append(arrow_pixels(column, shape))
                held += hi - lo
                while held >= batch_size:
                    merged = np.concatenate(pending)
                    yield torch.from_numpy(merged[:batch_size].copy())
                    pending, held = ([merged[batch_size:]], held - batch_size)
        if row >= stop:
            break
    if row < min(stop, len(ds)):
        raise RuntimeError(f"the Arrow files of the split hold {row} rows, fewer than {len(ds)}")
    if held:
        yield torch.from_numpy(np.concatenate(pending).copy())


def augment(images: torch.Tensor, flip: bool, crop: bool, generator: torch.Generator) -> torch.Tensor:
    """Tokenizer-training augmentation of a float (B, C, S, S) batch, drawn from `generator` (seeded from the run's
    seed and step, so a resumed run draws the same): a left-right flip of each image with probability 1/2, and a
    random crop: reflect-padded by S/8 on every side and cropped back to S x S at a random offset."""
    b, _, s, _ = images.shape
    if flip:
        flipped = torch.rand(b, generator=generator) < 0.5
        images = torch.where(flipped.view(b, 1, 1, 1).to(images.device), images.flip(-1), images)
    if crop:
        pad = max(1, s // 8)
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator).tolist()
        images = torch.stack([padded[i, :, y : y + s, x : x + s] for i, (y, x) in enumerate(offsets)])
    return images


class PixelSplit:
    """The uint8 pixels (N, C, S, S) of a prepared split, read when asked: `split[indices]` (a slice, a list or a
    tensor of indices, or a boolean mask) reads those rows, `batches(b)` iterates in batches, `shape` and `len` need
    no reading. Wraps a tensor too (test images from outside the run), so the evaluation reads both alike."""

    dtype = torch.uint8

    def __init__(self, source):
        self.tensor = source if isinstance(source, torch.Tensor) else None
        self.ds = None if self.tensor is not None else source
        if self.ds is not None:
            c, h, w = self.ds.features["pixels"].shape
            self.shape = torch.Size((len(self.ds), c, h, w))
        else:
            self.shape = self.tensor.shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor[key]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1 and stop > start:
                return read_rows(self.ds, slice(start, stop))
            key = list(range(start, stop, step))
        if isinstance(key, torch.Tensor) and key.dtype == torch.bool:
            key = key.nonzero().flatten()
        index = key.tolist() if isinstance(key, torch.Tensor) else list(key)
        if not index:
            return torch.empty(0, *self.shape[1:], dtype=torch.uint8)
        return read_rows(self.ds, index)

    def batches(self, batch_size: int):
        if self.tensor is not None:
            return (self.tensor[i : i + batch_size] for i in range(0, len(self), batch_size))
        return iter_pixel_batches(self.ds, batch_size)
