"""Stage one's encoder pass: a prepared split or a stream turned into code grids by a trained tokenizer, each
process encoding its own shard and the parts gathered (accelerate); and, for `vqgen encode`, the same shard by
shard (`prepared_shards`, `stream_shards`, `encode_shard`: never more than one shard of codes held), with the
augmented views of data/views.py."""

import itertools
from collections.abc import Iterator

import numpy as np
import torch
from vqgen.stages.core.progress import progress
from vqgen.stages.data.images import to_float
from vqgen.stages.data.pixels import iter_pixel_batches, label_array
from vqgen.stages.data.views import VIEW_OF_VALIDATION, VIEWS, make_views, source_size, validation_view

STREAM_ID = 10**12  # a streamed image's id: rank * STREAM_ID + its position in the rank's stream


@torch.no_grad()
def encode_split(model, ds, batch_size: int, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (N, h, w) and labels (N,) for a prepared split; each process encodes its own contiguous shard."""
    from accelerate.utils import gather_object

    model.eval()
    if hasattr(ds, "batches"):  # a stream (--streaming): one pass over each process's shards, in stream order
        return encode_stream(model, ds, batch_size, accelerator)
    n, rank, world = len(ds), accelerator.process_index, accelerator.num_processes
    lo, hi = n * rank // world, n * (rank + 1) // world
    bar = progress(total=hi - lo, desc="encode", unit="img", disable=not accelerator.is_local_main_process)
    codes = []
    for pixels in iter_pixel_batches(ds, batch_size, lo, hi):
        codes.append(model.encode(to_float(pixels.to(accelerator.device))).cpu().to(torch.int32))
        bar.update(len(pixels))
    bar.close()
    local = (
        torch.cat(codes)
        if codes
        else torch.empty(0, model.config.grid_size, model.config.grid_size, dtype=torch.int32)
    )
    parts = gather_object([local]) if world > 1 else [local]
    return torch.cat(parts), torch.as_tensor(label_array(ds))


def encode_stream(model, stream, batch_size: int, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (N, h, w) and labels (N,) for a stream (streaming.py), gathered from every process's shards."""
    from accelerate.utils import gather_object

    rank, world = accelerator.process_index, accelerator.num_processes
    codes, labels = [], []
    for pixels, label in stream.batches(batch_size, rank, world):
        codes.append(model.encode(to_float(pixels.to(accelerator.device))).cpu().to(torch.int32))
        labels.append(label)
    g = model.config.grid_size
    local = (
        (torch.cat(codes) if codes else torch.empty(0, g, g, dtype=torch.int32)),
        (torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)),
    )
    parts = gather_object([local]) if world > 1 else [local]
    return torch.cat([c for c, _ in parts]), torch.cat([lab for _, lab in parts])


Batches = Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (uint8 pixels, labels, image ids)


def prepared_shards(
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


def stream_shards(
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


@torch.no_grad()
def encode_views(model, ds, augment: str, validation: bool, batch_size: int, accelerator) -> tuple:
    """encode_shard's (codes, labels, image ids, view indices) for a whole split (prepared or a stream), each
    process encoding its own part in one shard, gathered in process order: what `tokenize --augment` stores."""
    from accelerate.utils import gather_object

    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    make = stream_shards if hasattr(ds, "samples") else prepared_shards
    g = model.config.grid_size
    empty = (torch.empty(0, g, g, dtype=torch.int32), *(torch.empty(0, dtype=torch.long) for _ in range(3)))
    local = [
        encode_shard(model, batches, augment, validation, accelerator.device)
        for _, batches in make(ds, rank, world, 2**62, batch_size)
    ]
    parts = gather_object([local]) if world > 1 else [local]
    shards = [shard for part in parts for shard in part if len(shard[0])] or [empty]
    return tuple(torch.cat(columns) for columns in zip(*shards))


def splits_for_views(splits, data, augment: str):
    """The image splits the views of `augment` are cut from: `splits` themselves (prepared by `data`), or for
    ten-crop the same images prepared again at data/views.source_size."""
    from dataclasses import replace

    from vqgen.stages.data.sources import load_image_splits

    size = source_size(augment, data.image_size)
    return splits if size == data.image_size else load_image_splits(replace(data, image_size=size))
