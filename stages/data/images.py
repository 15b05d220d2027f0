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
from enum import Enum
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from vqgen.stages.core.errors import UserError

EMBEDDED = "mnist5k"


class Resize(str, Enum):
    """How an image is made square: crop its centred square, or fit it inside the square and pad with black."""

    center_crop = "center-crop"
    pad = "pad"

    def __str__(self) -> str:
        return self.value


PREPARED_FORMAT = 3  # bump when the preparation changes: older prepared caches are then not reused
EXIF_ORIENTATION = 0x0112  # applied since format 3 (ImageOps.exif_transpose)
ASSETS = Path(__file__).parent / "assets"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class DataConfig:
    # "mnist5k" (embedded), a folder of images (class subfolders = labels), or a Hub id
    dataset: str = EMBEDDED
    split: str = "train"  # Hub datasets: the training split
    heldout_split: str | None = None  # Hub datasets: the held-out split; None = hold out heldout_fraction
    image_column: str = "image"
    label_column: str | None = "label"  # None or a missing column = unlabelled
    image_size: int = 28
    channels: int = 1  # 1 = grey, 3 = RGB
    heldout_fraction: float = 0.1
    revision: str | None = None  # Hub datasets: branch, tag or commit
    resize: Resize | None = None  # None = center-crop for RGB folders and Hub data, else pad (resize_mode)
    random_flip: bool = False  # tokenizer training: flip half of each batch left-right
    random_crop: bool = False  # tokenizer training: reflect-pad by size/8 and crop back at a random offset
    # train straight from a Hub dataset or local .tar shards / parquet files (streaming.py)
    streaming: bool = False
    shuffle_buffer: int = 1000  # streaming: samples per shuffled block
    heldout_size: int = 500  # streaming: held-out samples (the first of --heldout-split, or of the stream)

    # each number's range (vqgen.stages.core.runconfig.check_limits: flags, --config files and saved runs alike)
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "image_size": (4, 4096), "channels": (1, 3), "heldout_fraction": (0.001, 0.5),
        "shuffle_buffer": (1, 10**7), "heldout_size": (1, 10**7),
    }  # fmt: skip

    def resize_mode(self) -> Resize:
        """The resize mode in effect: the one asked for, or centre crop for RGB images of a folder or the Hub and
        the letterbox (pad) for grey images and the embedded digits, as before."""
        if self.resize is not None:
            return Resize(self.resize)
        return Resize.center_crop if self.channels == 3 and self.dataset != EMBEDDED else Resize.pad


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


def fit_array(image: Image.Image, size: int, channels: int, resize: str = Resize.pad) -> np.ndarray:
    """A PIL image -> (C, size, size) uint8 by `resize`: "pad" fits it inside the square and pads (to_array);
    "center-crop" crops its centred square first, so nothing is padded and the short side fills the square."""
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:  # a phone photo stored sideways: turned as it is shown
        image = ImageOps.exif_transpose(image)
    if resize == Resize.center_crop:
        image = center_square(image)
    return to_array(image, size, channels)


def not_an_image(item, column: str) -> UserError:
    """The one line for an image column whose values are no images (numbers, lists, ...)."""
    return UserError(
        f"the column {column!r} holds {type(item).__name__} values, not images; name the image column with "
        "--image-column"
    )


def _preprocess(ds, cfg: DataConfig, image_column: str, label_of, cache_file_name: str | None = None):
    """Map a dataset with an image column (decode=False) to pixels + label, dropping unreadable images; written
    to `cache_file_name` when given (else datasets' own cache), 256 rows per Arrow record batch."""
    from datasets import Array3D, Features, Value

    def convert(batch):
        pixels, labels = [], []
        for i, item in enumerate(batch[image_column]):
            try:
                if isinstance(item, dict):
                    src = item.get("path") if item.get("bytes") is None else io.BytesIO(item["bytes"])
                    image = Image.open(src)
                elif isinstance(item, Image.Image):
                    image = item
                else:
                    raise not_an_image(item, image_column)
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
        cache_file_name=cache_file_name,
        writer_batch_size=256,  # rows the writer holds before it writes them: 50 MB at 256 px
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


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, S, S) -> float in [-1, 1]."""
    return pixels.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
