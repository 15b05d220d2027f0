"""Image datasets through `datasets`: the embedded MNIST digits, a local folder of images, or a Hub dataset.

Every source becomes two `datasets.Dataset` splits (train, held-out) with a `pixels` column of uint8 arrays
(C, S, S) and an integer `label` column (-1 where there is no label). Images are converted to the configured
channels (RGBA and palette images are converted, not rejected; 16-bit and float images are scaled to 8 bits, never
clipped: `to_8bit`), fitted inside S x S keeping their aspect ratio and padded to a square, once, by
`Dataset.map` (cached on disk by `datasets`, memory-mapped rather than loaded).
Unreadable images are skipped and counted; a source with no readable image is an error.
"""

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from vqgen.stages.core.errors import UserError, redact

EMBEDDED = "mnist5k"
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
                pixels.append(to_array(image, cfg.image_size, cfg.channels))
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


def load_folder(path: Path, cfg: DataConfig) -> ImageSplits:
    from datasets import Dataset

    if not path.is_dir():
        raise UserError(
            f"--dataset {path}: not a folder; give a folder of images, a Hub dataset id, or {EMBEDDED}"
        )
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"--dataset {path}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    parents = sorted({f.parent.relative_to(path).as_posix() for f in files})
    labelled = all(p != "." for p in parents)
    if not labelled and len(parents) > 1:  # class folders beside loose images at the root
        loose = sum(f.parent == path for f in files)
        print(
            f"warning: --dataset {path}: {loose} image(s) at its root have no class folder, so they have no label and "
            f"the whole folder is read as unlabelled (its {len(parents) - 1} class folder(s) are not used as "
            "labels); move them into a class folder, or out of the dataset, to keep the labels",
            file=sys.stderr,
        )
    class_names = parents if labelled else []
    labels = [parents.index(f.parent.relative_to(path).as_posix()) if labelled else -1 for f in files]
    ds = Dataset.from_dict({"image": [{"path": str(f), "bytes": None} for f in files], "label": labels})
    prepared = _preprocess(ds, cfg, "image", lambda batch, i: int(batch["label"][i]))
    if len(prepared) == 0:
        raise UserError(f"--dataset {path}: none of the {len(files)} images could be read")
    train, heldout = _split(prepared, cfg)
    return _finish(train, heldout, class_names, len(files))


def load_hub(cfg: DataConfig) -> ImageSplits:
    from datasets import ClassLabel, load_dataset
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
    label_col = cfg.label_column if cfg.label_column in train_raw.column_names else None
    feature = train_raw.features.get(label_col) if label_col else None
    class_names = list(feature.names) if isinstance(feature, ClassLabel) else []
    if label_col and not class_names:
        class_names = sorted({str(v) for v in train_raw[label_col]})

    def label_of(batch, i):
        if label_col is None:
            return -1
        value = batch[label_col][i]
        return int(value) if isinstance(feature, ClassLabel) else class_names.index(str(value))

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


def pixel_tensor(ds) -> torch.Tensor:
    """The whole uint8 pixel column (N, C, S, S) of a prepared split."""
    return torch.from_numpy(np.asarray(ds.with_format("numpy")[:]["pixels"], dtype=np.uint8))
