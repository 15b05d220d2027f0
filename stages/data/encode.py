"""Stage one's encoder pass: a prepared split or a stream turned into code grids by a trained tokenizer, each
process encoding its own shard and the parts gathered (accelerate)."""

import torch
from vqgen.stages.data.images import to_float
from vqgen.stages.data.pixels import iter_pixel_batches, label_array


def _same(images: torch.Tensor) -> torch.Tensor:
    return images


@torch.no_grad()
def encode_split(model, ds, batch_size: int, accelerator, view=_same) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (N, h, w) and labels (N,) for a prepared split; each process encodes its own contiguous shard. `view`
    maps the (B, C, S, S) float images before they are encoded (a left-right flip: the codes of mirrored images)."""
    from accelerate.utils import gather_object

    model.eval()
    if hasattr(ds, "batches"):  # a stream (--streaming): one pass over each process's shards, in stream order
        return encode_stream(model, ds, batch_size, accelerator, view)
    n, rank, world = len(ds), accelerator.process_index, accelerator.num_processes
    lo, hi = n * rank // world, n * (rank + 1) // world
    codes = [
        model.encode(view(to_float(pixels.to(accelerator.device)))).cpu().to(torch.int32)
        for pixels in iter_pixel_batches(ds, batch_size, lo, hi)
    ]
    local = (
        torch.cat(codes)
        if codes
        else torch.empty(0, model.config.grid_size, model.config.grid_size, dtype=torch.int32)
    )
    parts = gather_object([local]) if world > 1 else [local]
    return torch.cat(parts), torch.as_tensor(label_array(ds))


def encode_stream(
    model, stream, batch_size: int, accelerator, view=_same
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (N, h, w) and labels (N,) for a stream (streaming.py), gathered from every process's shards."""
    from accelerate.utils import gather_object

    rank, world = accelerator.process_index, accelerator.num_processes
    codes, labels = [], []
    for pixels, label in stream.batches(batch_size, rank, world):
        codes.append(model.encode(view(to_float(pixels.to(accelerator.device)))).cpu().to(torch.int32))
        labels.append(label)
    g = model.config.grid_size
    local = (
        (torch.cat(codes) if codes else torch.empty(0, g, g, dtype=torch.int32)),
        (torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)),
    )
    parts = gather_object([local]) if world > 1 else [local]
    return torch.cat([c for c, _ in parts]), torch.cat([lab for _, lab in parts])
