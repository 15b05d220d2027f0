"""Pixels read from a prepared split in batches, straight from Arrow (never a whole split in memory), and the
seeded augmentation of training batches."""

import ctypes
import functools
import os
import sys

import numpy as np
import torch

# Linux madvise(2): drop pages from the process's page tables (a file's pages stay in the page cache), and fault
# in only the pages a read touches (no read-around)
MADV_DONTNEED, MADV_RANDOM = 4, 1


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)  # loaded once: releases run after every training batch read


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


def release_mapped_pages(ds) -> None:
    """Unmap the pages of `ds`'s memory-mapped Arrow files that reads have faulted in (Linux; elsewhere nothing).
    `datasets` memory-maps a split's files, and every read through the map, with the kernel's read-around, leaves
    its pages in the process's resident set: random training batches over a 100,000-image split would end up
    holding most of the files. Only read-only mappings of the split's own cache files are touched, so no data is
    lost: the pages stay in the page cache and the next read maps them again."""
    if not sys.platform.startswith("linux"):
        return
    names = {os.path.realpath(f["filename"]) for f in getattr(ds, "cache_files", [])}
    if not names:
        return
    libc = _libc()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
            if len(fields) == 6 and "w" not in fields[1] and fields[5].rstrip("\n") in names:
                lo, hi = (int(a, 16) for a in fields[0].split("-"))
                for advice in (MADV_DONTNEED, MADV_RANDOM):  # later reads fault in only what they touch
                    libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), advice)


def read_rows(ds, key) -> torch.Tensor:
    """uint8 (B, C, S, S) pixels of some rows of a prepared split: a slice or a list of indices. The mapped pages
    the read touched are released afterwards, so that random reads do not pile a large split up in memory."""
    table = ds.select_columns(["pixels"]).with_format("arrow")[key]
    rows = torch.from_numpy(arrow_pixels(table.column("pixels"), ds.features["pixels"].shape).copy())
    del table
    release_mapped_pages(ds)
    return rows


def pixel_tensor(ds) -> torch.Tensor:
    """The whole uint8 pixel column (N, C, S, S) of a prepared split (small splits only: previews, tests)."""
    if len(ds) == 0:
        return torch.empty(0, *ds.features["pixels"].shape, dtype=torch.uint8)
    return read_rows(ds, slice(0, len(ds)))


def label_array(ds) -> np.ndarray:
    """The label column of a prepared split, read without its pixels (nor the pixel pages around the labels)."""
    labels = np.array(ds.select_columns(["label"]).with_format("numpy")[:]["label"], dtype=np.int64)
    release_mapped_pages(ds)
    return labels


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
