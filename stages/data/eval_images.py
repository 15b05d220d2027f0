"""An evaluation split from outside the run: a folder of image files (class subfolders = labels) or a folder with
MNIST's idx files (the one IDX reader of vqgen), fitted to the run's image size, channels and resize mode."""

import gzip
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from vqgen.stages.core.errors import UserError
from vqgen.stages.data.images import DataConfig, to_array
from vqgen.stages.data.pixels import label_array


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
    """The evaluation images and their (N,) labels (-1 = unknown): (N, C, S, S) uint8 from an idx folder (MNIST's
    10,000 test digits fit in 8 MB), or a prepared dataset read in batches from a folder of image files."""
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
    return _prepared_folder(path, cfg, class_names)


def _prepared_folder(path: Path, cfg: DataConfig, class_names: list[str]):
    """A folder of image files, prepared once like a training folder (the same Arrow cache, reused on the next
    evaluation) and read batch by batch: its two prepared splits as one dataset, and labels in the run's classes
    (a class folder the run does not know, or no class folder, is -1)."""
    from datasets import concatenate_datasets
    from vqgen.stages.data.folders import load_folder

    try:
        splits = load_folder(path, replace(cfg, dataset=str(path)))
    except UserError as exc:
        raise UserError(f"--test-images {str(exc).removeprefix(f'--dataset {path}: ')}") from None
    images = concatenate_datasets([splits.train, splits.heldout])
    run_index = [class_names.index(n) if n in class_names else -1 for n in splits.class_names]
    folder_labels = torch.as_tensor(label_array(images))
    labels = torch.tensor(run_index + [-1], dtype=torch.long)[folder_labels]  # -1 (no class folder) stays -1
    return images, labels
