"""An evaluation split from outside the run: a folder of image files (class subfolders = labels) or a folder with
MNIST's idx files (the one IDX reader of vqgen), fitted to the run's image size and channels."""

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from vqgen.stages.core.errors import UserError
from vqgen.stages.data.images import IMAGE_SUFFIXES, DataConfig, to_array


def read_idx(path: Path) -> np.ndarray:
    """A uint8 IDX array (the MNIST file format, optionally gzipped): 0, 0, 0x08, ndim, ndim big-endian sizes."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise UserError(f"--test-images {path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    array = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise UserError(f"--test-images {path}: truncated IDX file ({array.size} values for shape {dims})")
    return array.reshape(dims)


def _fit(images: list[np.ndarray] | np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """(N, H, W) or a list of HxW(xC) uint8 arrays -> (N, C, S, S) uint8 in the run's size and channels."""
    size, c = cfg.image_size, cfg.channels
    if isinstance(images, np.ndarray) and images.shape[1:] == (size, size) and c == 1:
        return torch.from_numpy(images.copy())[:, None]
    return torch.from_numpy(np.stack([to_array(Image.fromarray(a), size, c) for a in images]))


def load_test_images(
    path: Path, cfg: DataConfig, class_names: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, S, S) uint8 and (N,) labels (-1 = unknown) from an idx folder or a folder of image files."""
    if not path.is_dir():
        raise UserError(f"--test-images {path}: not a folder (give a folder of images or of MNIST idx files)")
    idx = sorted(path.glob("*images-idx3-ubyte*"))
    if len(idx) > 1:
        raise UserError(f"--test-images {path}: several idx image files ({', '.join(p.name for p in idx)})")
    if idx:
        images = read_idx(idx[0])
        label_files = sorted(path.glob(idx[0].name.replace("images-idx3", "labels-idx1")))
        labels = read_idx(label_files[0]).astype(np.int64) if label_files else np.full(len(images), -1)
        if len(labels) != len(images):
            raise UserError(f"--test-images {path}: {len(images)} images but {len(labels)} labels")
        return _fit(images, cfg), torch.from_numpy(labels)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    arrays, labels = [], []
    for f in files:
        try:
            with Image.open(f) as image:
                arrays.append(to_array(image, cfg.image_size, cfg.channels))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
            continue
        parent = f.parent.relative_to(path).as_posix()
        labels.append(class_names.index(parent) if parent in class_names else -1)
    if not arrays:
        raise UserError(
            f"--test-images {path}: no readable images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.long)
