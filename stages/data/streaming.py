"""Streaming (`--streaming`): training straight from a Hub dataset or from local WebDataset `.tar` shards or parquet
files, through `datasets`' IterableDataset, without preparing the whole dataset first.

- Held out: the first `heldout_size` samples of `--heldout-split` (Hub datasets), or else the first
  `heldout_size` samples of the stream, which training then skips. They are prepared like any split (small).
- Each process reads its own shards (`datasets.distributed.split_dataset_by_node`).
- Shuffling: a block shuffle buffer. The stream is read in blocks of `shuffle_buffer` samples and each block is
  served in an order drawn from (seed, epoch, block). The position is resumable exactly: the checkpoint holds the
  IterableDataset's `state_dict()` at the start of the current block and how many of the block's samples were
  served; `--resume` re-reads that block, draws the same order and continues with the next sample.
- Labels come from a ClassLabel column (Hub datasets); other streams are unlabelled.
"""

import copy
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from vqgen.stages.core.errors import UserError, one_line
from vqgen.stages.data.images import DataConfig, ImageSplits, fit_array, not_an_image

IMAGE_KEYS = ("image", "img", "png", "jpg", "jpeg", "webp")
UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def _local_files(path: Path) -> tuple[str, list[str]]:
    """The builder ("webdataset" or "parquet") and the shard files of a local path."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    tars = [str(p) for p in files if p.suffix == ".tar"]
    parquets = [str(p) for p in files if p.suffix == ".parquet"]
    if tars and parquets:
        raise UserError(f"--dataset {path}: both .tar and .parquet files; stream one kind")
    if not tars and not parquets:
        raise UserError(
            f"--dataset {path}: --streaming reads WebDataset .tar shards or .parquet files; found none"
        )
    return ("webdataset", tars) if tars else ("parquet", parquets)


def _open(cfg: DataConfig, split: str):
    from datasets import load_dataset

    path = Path(cfg.dataset).expanduser()
    try:
        if path.exists():
            builder, files = _local_files(path)
            return load_dataset(builder, data_files={"train": files}, split="train", streaming=True)
        from vqgen.stages.artifacts.hub import check_hub_id, ensure_hub_reachable, looks_local

        if looks_local(cfg.dataset):
            raise UserError(f"--dataset {cfg.dataset}: no such file or folder")
        check_hub_id(cfg.dataset, "--dataset")
        ensure_hub_reachable(f"--dataset {cfg.dataset}")
        return load_dataset(cfg.dataset, split=split, revision=cfg.revision, streaming=True)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"--dataset {cfg.dataset}: cannot open it as a stream ({one_line(exc)})") from None


def _image_column(ds, cfg: DataConfig) -> str:
    columns = list(ds.column_names or (ds.features or {}).keys())
    for name in (cfg.image_column, *IMAGE_KEYS):
        if name in columns:
            return name
    raise UserError(
        f"--dataset {cfg.dataset}: the stream has no image column (--image-column {cfg.image_column!r}); "
        f"columns: {columns}"
    )


def _decode(item, cfg: DataConfig) -> np.ndarray | None:
    """A streamed image (PIL, {bytes, path} or bytes) -> (C, S, S) uint8, or None when it cannot be read."""
    try:
        if isinstance(item, dict):
            item = io.BytesIO(item["bytes"]) if item.get("bytes") is not None else item.get("path")
        elif isinstance(item, bytes):
            item = io.BytesIO(item)
        elif not isinstance(item, (Image.Image, str)):
            raise not_an_image(item, cfg.image_column)
        image = item if isinstance(item, Image.Image) else Image.open(item)
        image.load()
        return fit_array(image, cfg.image_size, cfg.channels, cfg.resize_mode())
    except UNREADABLE:
        return None


@dataclass
class StreamSplit:
    """The training side of a streamed dataset: the raw IterableDataset (held-out samples already skipped)."""

    raw: object
    cfg: DataConfig
    image_column: str
    label_column: str | None

    def __len__(self) -> int:  # unknown in advance
        raise TypeError("a streamed split has no length")

    def node(self, rank: int, world: int):
        from datasets.distributed import split_dataset_by_node

        # a fresh copy each time: load_state_dict() sets where the copy starts, never where self.raw does
        fresh = copy.deepcopy(self.raw)
        return split_dataset_by_node(fresh, rank=rank, world_size=world) if world > 1 else fresh

    def samples(self, stream):
        """(uint8 image, label) of each readable sample of `stream`; a shard that cannot be read is a UserError."""
        iterator = iter(stream)
        while True:
            try:
                example = next(iterator)
            except StopIteration:
                return
            except Exception as exc:  # a .tar that is no tar, a damaged parquet file: one line
                raise UserError(
                    f"--dataset {self.cfg.dataset}: cannot read the stream ({one_line(exc)})"
                ) from None
            pixels = _decode(example[self.image_column], self.cfg)
            if pixels is not None:
                label = int(example[self.label_column]) if self.label_column else -1
                yield pixels, label

    def batches(self, batch_size: int, rank: int = 0, world: int = 1):
        """(uint8 (B, C, S, S), labels (B,)) over one pass of this process's shards, in stream order."""
        images, labels = [], []
        for pixels, label in self.samples(self.node(rank, world)):
            images.append(pixels)
            labels.append(label)
            if len(images) == batch_size:
                yield torch.from_numpy(np.stack(images)), torch.tensor(labels)
                images, labels = [], []
        if images:
            yield torch.from_numpy(np.stack(images)), torch.tensor(labels)


def load_stream(cfg: DataConfig) -> ImageSplits:
    """--streaming: ImageSplits whose train is a StreamSplit and whose held-out split is prepared (see above)."""
    from datasets import ClassLabel, Dataset
    from datasets import Image as ImageFeature

    if cfg.heldout_size < 1 or cfg.shuffle_buffer < 1:
        raise UserError("--heldout-size and --shuffle-buffer must be at least 1")
    raw = _open(cfg, cfg.split)
    column = _image_column(raw, cfg)
    if isinstance((raw.features or {}).get(column), ImageFeature):
        raw = raw.cast_column(column, ImageFeature(decode=False))
    feature = (raw.features or {}).get(cfg.label_column) if cfg.label_column else None
    label_column = cfg.label_column if isinstance(feature, ClassLabel) else None
    class_names = list(feature.names) if label_column else []
    if cfg.heldout_split:
        held_raw = _open(cfg, cfg.heldout_split)
        if isinstance((held_raw.features or {}).get(column), ImageFeature):
            held_raw = held_raw.cast_column(column, ImageFeature(decode=False))
        train_raw = raw
    else:
        held_raw, train_raw = raw, raw.skip(cfg.heldout_size)
    split = StreamSplit(train_raw, cfg, column, label_column)
    held_split = StreamSplit(held_raw.take(cfg.heldout_size), cfg, column, label_column)
    held = list(held_split.samples(held_raw.take(cfg.heldout_size)))
    if not held:
        raise UserError(
            f"--dataset {cfg.dataset}: no readable image in the stream's first {cfg.heldout_size} samples"
        )
    from datasets import Array3D, Features, Value

    features = Features(
        {"pixels": Array3D((cfg.channels, cfg.image_size, cfg.image_size), "uint8"), "label": Value("int64")}
    )
    heldout = Dataset.from_dict(
        {"pixels": [p for p, _ in held], "label": [lab for _, lab in held]}, features=features
    )
    return ImageSplits(split, heldout, class_names, 0)


def reference_sample(split: StreamSplit, n: int):
    """The first `n` readable training samples of a stream as a prepared split (written by `datasets` into its
    cache and memory-mapped, never held whole): the real images that `evaluate` trains its classifier on and
    measures the floor with, for a run trained with --streaming."""
    from datasets import Array3D, Dataset, Features, Value

    cfg = split.cfg
    features = Features(
        {"pixels": Array3D((cfg.channels, cfg.image_size, cfg.image_size), "uint8"), "label": Value("int64")}
    )

    def rows():
        for i, (pixels, label) in enumerate(split.samples(split.node(0, 1))):
            if i == n:
                return
            yield {"pixels": pixels, "label": label}

    ds = Dataset.from_generator(rows, features=features, writer_batch_size=256)
    if len(ds) == 0:
        raise UserError(f"--dataset {cfg.dataset}: the stream holds no readable training image")
    return ds


class StreamReader:
    """One process's training batches from a StreamSplit, block-shuffled, with an exactly resumable position.

    The position: the epoch, the block, how many samples of the epoch came before the block (`base`), the node
    stream's `state_dict()` at the start of the block (None: the start of the epoch) and how many of the block's
    samples were served (`offset`). Sample ids (what the data digest and --record-data-order record) are
    epoch * 2**40 + the sample's position in this process's stream."""

    def __init__(self, split: StreamSplit, rank: int, world: int, batch_size: int, seed: int):
        self.split, self.rank, self.world, self.bs, self.seed = split, rank, world, batch_size, seed
        self.block_size = split.cfg.shuffle_buffer
        self.epoch, self.block, self.base, self.offset, self.stream_state = 0, 0, 0, 0, None
        self._node = self._samples = None
        self._items: list = []  # the current block in serving order: (sample id, pixels)
        self._last: tuple | None = None

    def _fill(self) -> None:
        """Read the current block from the stream (a new epoch when it has ended) and draw its serving order."""
        for _ in range(2):
            if self._samples is None:
                self._node = self.split.node(self.rank, self.world)
                if self.stream_state is not None:
                    self._node.load_state_dict(copy.deepcopy(self.stream_state))
                self._samples = (pixels for pixels, _ in self.split.samples(self._node))
            block = []
            for pixels in self._samples:
                block.append(pixels)
                if len(block) == self.block_size:
                    break
            if block:
                seed = ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + self.block) % 2**63
                order = torch.randperm(len(block), generator=torch.Generator().manual_seed(seed)).tolist()
                self._items = [(self.epoch * 2**40 + self.base + i, block[i]) for i in order]
                return
            if self.block == 0:
                break  # a whole epoch without a readable image
            self.epoch, self.block, self.base, self.stream_state, self._samples = (
                self.epoch + 1,
                0,
                0,
                None,
                None,
            )
        raise UserError(
            f"--dataset {self.split.cfg.dataset}: this process's share of the stream has no images"
        )

    def _next(self):
        # the block is used up: the next starts where it ended
        if self._items and self.offset == len(self._items):
            self.base += len(self._items)
            self.block, self.offset, self._items = self.block + 1, 0, []
            self.stream_state = copy.deepcopy(self._node.state_dict())
        if not self._items:
            self._fill()
        item = self._items[self.offset]
        self.offset += 1
        return item

    def get(self, micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._last is not None and self._last[0] == micro_batch:
            return self._last[1]  # the same step tried again (after a non-finite loss)
        items = [self._next() for _ in range(self.bs)]
        batch = torch.tensor([i for i, _ in items]), torch.from_numpy(np.stack([p for _, p in items]))
        self._last = (micro_batch, batch)
        return batch

    def close(self) -> None:
        self._node = self._samples = None

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "block": self.block,
            "base": self.base,
            "offset": self.offset,
            "stream_state": copy.deepcopy(self.stream_state),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.block, self.base = state["epoch"], state["block"], state["base"]
        self.stream_state, self._samples, self._items, self._last = state["stream_state"], None, [], None
        self.offset = 0
        if state["offset"]:
            self._fill()  # the same block again, drawn in the same order
            self.offset = state["offset"]
