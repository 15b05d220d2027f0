"""Tensors too large for one file, as size-limited safetensors shards with an index (the Hub's layout).

A state that fits `max_shard_bytes` is one file, `NAME.safetensors`. A larger one is split, in the order of its
keys, into `NAME-00001-of-0000N.safetensors`, ... and `NAME.safetensors.index.json`:

    {"metadata": {"total_size": <bytes of tensor data>}, "weight_map": {"<tensor name>": "<shard file>", ...}}

as `transformers` and `huggingface_hub` write sharded weights (`split_torch_state_dict_into_shards`), so the
Hub's tools read ours. No pickle anywhere: safetensors and JSON only. This module writes into a folder the caller
then renames into place (stages/training/checkpoint.py): a shard set is never seen half-written.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

INDEX_SUFFIX = ".safetensors.index.json"
DEFAULT_SHARD_BYTES = 4 << 30  # 4 GiB per file, under the 5 GB a Hub upload takes in one piece


class MissingShard(OSError):
    """A shard that the index names is not on disk."""


def shard_name(name: str, i: int, n: int) -> str:
    return f"{name}-{i + 1:05d}-of-{n:05d}.safetensors"


def plan_shards(tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> list[list[str]]:
    """Keys grouped into shards of at most `max_shard_bytes` of tensor data each (a larger tensor alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def save_sharded(
    tensors: dict[str, torch.Tensor], folder: Path, name: str, max_shard_bytes: int = DEFAULT_SHARD_BYTES
) -> list[Path]:
    """Write `tensors` under `folder` as NAME.safetensors, or as shards + index; returns the files written."""
    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    groups = plan_shards(tensors, max_shard_bytes)
    if len(groups) == 1:
        path = folder / f"{name}.safetensors"
        save_file(tensors, str(path))
        return [path]
    files, weight_map = [], {}
    for i, keys in enumerate(groups):
        path = folder / shard_name(name, i, len(groups))
        save_file({k: tensors[k] for k in keys}, str(path))
        files.append(path)
        weight_map.update(dict.fromkeys(keys, path.name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = folder / f"{name}{INDEX_SUFFIX}"
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return [*files, index]


def shard_files(folder: Path, name: str) -> list[Path]:
    """The tensor files of NAME under `folder`: the single file, or every shard its index names (present or not).
    Raises OSError (FileNotFoundError) when there is neither a single file nor an index."""
    folder = Path(folder)
    single = folder / f"{name}.safetensors"
    index = folder / f"{name}{INDEX_SUFFIX}"
    if single.is_file() or not index.is_file():
        if not single.is_file():
            raise FileNotFoundError(f"{single} not found (nor {index.name})")
        return [single]
    weight_map = json.loads(index.read_text())["weight_map"]
    return [folder / f for f in sorted(set(weight_map.values()))]


def check_shards(folder: Path, name: str) -> None:
    """Raise MissingShard naming the first shard of NAME that the index lists and the folder lacks."""
    for path in shard_files(folder, name):
        if not path.is_file():
            raise MissingShard(f"{path.parent}: shard {path.name} is missing (its index lists it)")


def load_sharded(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """All tensors of NAME under `folder`, from the single file or from every shard."""
    check_shards(folder, name)
    tensors: dict[str, torch.Tensor] = {}
    for path in shard_files(folder, name):
        tensors.update(load_file(str(path)))
    return tensors
