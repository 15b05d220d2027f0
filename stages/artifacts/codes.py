"""The codes dataset: the one interface between the two stages, and the one file that reads and writes it.

    RUN/codes/             a datasets.DatasetDict saved with save_to_disk: splits `train` and `validation`, each
                           with `codes` (H x W int32) and `label` (int64, -1 = unlabelled)
    RUN/codes/codes.json   what a prior is built from: vocab_size, grid_height, grid_width, num_classes,
                           tokenizer_fingerprint, class_names, and `tokenizer` (the tokenizer folder, relative)

Codes written by `vqgen encode` carry two more columns: `image` (int64, the source image's id: its row in the
prepared split, or rank * 10**12 + position for a stream) and `view` (int32, which augmented view of it the row
encodes: data/views.VIEWS). With `--augment`, codes.json adds `augment` and `views` (views per training image); a training
image's views are consecutive rows with the same `image`. They are encoded shard by shard (`write_shard`) and put
together at the end (`assemble_codes`), so no process holds more than one shard of codes.

(Runs written before vqgen 0.2 call codes.json `vqgen.json`; they are still read.)
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from vqgen.stages.core.errors import UserError, one_line, read_json_object
from vqgen.stages.core.files import disk_writes, write_json

CODES_META = "codes.json"
LEGACY_META = "vqgen.json"
META_FIELDS = {
    "vocab_size": int,
    "grid_height": int,
    "grid_width": int,
    "num_classes": int,
    "tokenizer_fingerprint": str,
}


@dataclass
class CodeSplits:
    train_codes: torch.Tensor  # (N, H, W) long
    train_labels: torch.Tensor  # (N,) long, -1 where unlabelled
    val_codes: torch.Tensor
    val_labels: torch.Tensor
    meta: dict  # codes.json: vocab_size, grid_height, grid_width, num_classes, tokenizer_fingerprint, ...
    # `vqgen encode --augment`: (V, N, H, W) long, every training image's V views (train_codes = view 0, the labels
    # those of the N images); None: one code grid per image. `train-prior` draws one view per image and step.
    train_views: torch.Tensor | None = None


def load_codes(path: Path) -> CodeSplits:
    from datasets import load_from_disk

    path = Path(path)
    found = meta_file(path)
    if found is None:
        raise UserError(
            f"--codes {path}: no {CODES_META} here; give the codes folder written by `vqgen tokenize`"
        )
    meta = read_codes_meta(found)
    try:
        dd = load_from_disk(str(path))
        if not {"train", "validation"} <= set(dd):
            raise ValueError(f"splits {sorted(dd)}, expected train and validation")
    except Exception as exc:
        raise UserError(f"--codes {path}: cannot read the codes dataset ({one_line(exc)})") from None

    def arrays(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows = dd[split].with_format("numpy")[:]
        return torch.as_tensor(np.asarray(rows["codes"]), dtype=torch.long), torch.as_tensor(
            np.asarray(rows["label"]), dtype=torch.long
        )

    codes = CodeSplits(*arrays("train"), *arrays("validation"), meta)
    views = meta.get("views", 1)
    if isinstance(views, int) and views > 1 and "view" in dd["train"].column_names:
        codes = grouped_views(
            codes, dd["train"].select_columns(["image", "view"]).with_format("numpy")[:], path
        )
    return codes


def grouped_views(codes: CodeSplits, rows: dict, path: Path) -> CodeSplits:
    """The train split of `vqgen encode --augment` (each image's V views in consecutive rows, `image` and `view`
    columns) as (V, N, H, W) views of N images."""
    v = codes.meta["views"]
    n = len(codes.train_codes) // v
    image = torch.as_tensor(np.asarray(rows["image"])).view(-1)
    view = torch.as_tensor(np.asarray(rows["view"])).long().view(-1)
    if n * v != len(codes.train_codes) or not (
        torch.equal(view.view(n, v), torch.arange(v).expand(n, v))
        and torch.equal(image.view(n, v), image.view(n, v)[:, :1].expand(n, v))
        and torch.equal(codes.train_labels.view(n, v), codes.train_labels.view(n, v)[:, :1].expand(n, v))
    ):
        raise UserError(
            f"--codes {path}: its train rows are not {v} views of each image in turn; encode them again"
        )
    # (V, N, H, W)
    grids = codes.train_codes.view(n, v, *codes.train_codes.shape[1:]).transpose(0, 1).contiguous()
    codes.train_views, codes.train_codes = grids, grids[0]
    codes.train_labels = codes.train_labels.view(n, v)[:, 0].contiguous()
    return codes


def read_codes_meta(meta_file: Path) -> dict:
    """codes.json, checked: valid JSON holding every field a prior is built from, each of the right type."""
    meta = read_json_object(meta_file, f"--codes: {meta_file}")
    for key, kind in META_FIELDS.items():
        value = meta.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise UserError(
                f"--codes: {meta_file} field {key} should be a {'non-negative int' if kind is int else kind.__name__}, "
                f"got {json.dumps(value)}; rewrite the codes with `cli.py tokenize`"
            )
    if not isinstance(meta.get("tokenizer", ""), str):
        raise UserError(f"--codes: {meta_file} field tokenizer should be a relative path (str)")
    return meta


def write_codes(folder: Path, splits: dict[str, tuple[torch.Tensor, ...]], meta: dict) -> None:
    """Save {split: ((N, H, W) codes, (N,) labels)}, or {split: (codes, labels, (N,) image ids, (N,) view
    indices)} for augmented views, and the description `meta` (see the module docstring)."""
    from datasets import Array2D, Dataset, DatasetDict, DatasetInfo, Features, Value

    h, w = meta["grid_height"], meta["grid_width"]
    views = all(len(columns) == 4 for columns in splits.values())
    features = (
        shard_features(h, w)
        if views
        else Features({"codes": Array2D((h, w), "int32"), "label": Value("int64")})
    )

    def table(codes, labels, images=None, view=None):
        if not views:
            return _codes_table(codes, labels, features)
        extra = {"image": np.asarray(images, dtype=np.int64), "view": np.asarray(view, dtype=np.int32)}
        return _codes_table(codes, labels, features, extra=extra)

    parts = {  # named fingerprints: datasets would otherwise hash every code to make one (4x their size in memory)
        name: Dataset(
            table(*columns),
            info=DatasetInfo(features=features),
            fingerprint=f"vqgen-codes-{meta.get('tokenizer_fingerprint')}-{name}-{len(columns[0])}",
        )
        for name, columns in splits.items()
    }
    needed = sum(sum(c.numel() * c.element_size() for c in columns) for columns in splits.values())
    _save_whole(Path(folder), DatasetDict(parts), meta, needed)


def _save_whole(folder: Path, dataset, meta: dict, needed: int) -> None:
    """A codes DatasetDict and its codes.json saved beside `folder` and renamed into place, so that a codes folder
    is never half-written; a full disk is one line (vqgen.stages.core.files.disk_writes)."""
    with disk_writes(folder.parent, needed, f"the codes ({folder.name})"):
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            dataset.save_to_disk(str(tmp / "codes"))
            write_json(meta, tmp / "codes" / CODES_META)
            if folder.exists():
                os.replace(folder, tmp / "old")
            os.replace(tmp / "codes", folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def save_codes(run_dir: Path, model, splits, batch_size: int, accelerator, augment: str = "none") -> dict:
    """Encode both image splits (a vqgen.stages.data.images.ImageSplits) with the trained tokenizer `model` and
    write them as the run's codes dataset; returns its description (codes.json). With `augment` (data/views.VIEWS)
    every training image's views are stored as `vqgen encode --augment` stores them (`image` and `view` columns,
    the images prepared at data/views.source_size), the held-out images in their one validation view."""
    from vqgen.stages.data.encode import encode_split, encode_views

    encoded = {
        name: (
            encode_split(model, ds, batch_size, accelerator)
            if augment == "none"
            else encode_views(model, ds, augment, name == "validation", batch_size, accelerator)
        )
        for name, ds in (("train", splits.train), ("validation", splits.heldout))
    }
    meta = codes_meta(
        model, splits.num_classes, splits.class_names, augment=None if augment == "none" else augment
    )
    if accelerator.is_main_process:
        write_codes(Path(run_dir) / "codes", encoded, meta)
    return meta


def codes_meta(
    model, num_classes: int, class_names, tokenizer: str = "../tokenizer", augment: str | None = None
):
    """codes.json for codes of `model` (see the module docstring); with `augment`, also `augment`, `views` (views
    per training image) and `view_names`."""
    g = model.config.grid_size
    meta = {
        "tokenizer": tokenizer,
        "tokenizer_fingerprint": model.fingerprint(),
        "vocab_size": model.config.quantizer.codebook_size,
        "grid_height": g,
        "grid_width": g,
        "num_classes": num_classes,
        "class_names": class_names,
    }
    if augment is not None:
        from vqgen.stages.data.views import VIEWS

        meta.update(augment=augment, views=len(VIEWS[augment]), view_names=VIEWS[augment])
    return meta


def _codes_table(
    codes: torch.Tensor, labels: torch.Tensor, features, rows: int = 65536, extra: dict | None = None
):
    """The Arrow table of (N, H, W) codes and (N,) labels (and the `extra` columns, name -> (N,) numpy array, of
    `features`), built from the arrays themselves in record batches of `rows` (no Python object per code:
    `Dataset.from_dict` would take five times the codes' size on the way)."""
    import numpy as np
    import pyarrow as pa

    n, h, w = codes.shape
    codes_type = features["codes"]()  # the Array2D extension type
    flat, lab = codes.to(torch.int32).contiguous().numpy().reshape(n, h * w), labels.to(torch.int64).numpy()
    batches = []
    for lo in range(0, n, rows):
        part = flat[lo : lo + rows]
        m = len(part)
        inner = pa.ListArray.from_arrays(np.arange(0, m * h * w + 1, w, dtype=np.int32), part.reshape(-1))
        outer = pa.ListArray.from_arrays(np.arange(0, m * h + 1, h, dtype=np.int32), inner)
        column = pa.ExtensionArray.from_storage(codes_type, outer)
        more = [pa.array(a[lo : lo + rows]) for a in (extra or {}).values()]
        names = ["codes", "label", *(extra or {})]
        batches.append(pa.record_batch([column, pa.array(lab[lo : lo + rows]), *more], names=names))
    more_types = [(k, pa.from_numpy_dtype(a.dtype)) for k, a in (extra or {}).items()]
    schema = pa.schema([("codes", codes_type), ("label", pa.int64()), *more_types])
    return pa.Table.from_batches(batches, schema=schema)


def meta_file(folder: Path) -> Path | None:
    """The codes description in `folder`, or None when it holds none."""
    for name in (CODES_META, LEGACY_META):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def shard_features(height: int, width: int):
    from datasets import Array2D, Features, Value

    return Features(
        {
            "codes": Array2D((height, width), "int32"),
            "label": Value("int64"),
            "image": Value("int64"),
            "view": Value("int32"),
        }
    )


def write_shard(path: Path, codes: torch.Tensor, labels, images, views) -> None:
    """Rows of (N, H, W) codes with their (N,) labels, image ids and view indices as one Arrow file that
    `datasets` reads, written under a temporary name and renamed: a shard under its final name is whole."""
    from datasets.arrow_writer import ArrowWriter
    from vqgen.stages.core.files import atomic_write

    n, h, w = codes.shape
    features = shard_features(h, w)
    extra = {"image": np.asarray(images, dtype=np.int64), "view": np.asarray(views, dtype=np.int32)}
    table = _codes_table(codes, torch.as_tensor(labels), features, extra=extra)

    def write(f) -> None:
        writer = ArrowWriter(features=features, stream=f)
        writer.write_table(table)
        writer.finalize()

    atomic_write(path, write)


def assemble_codes(folder: Path, shards: dict[str, list[Path]], meta: dict) -> None:
    """The codes dataset (splits in `shards`, each a list of write_shard files in row order) saved to `folder`,
    read through memory maps (no split is loaded whole), and its description `meta` as codes.json."""
    from datasets import Dataset, DatasetDict, concatenate_datasets

    features = shard_features(meta["grid_height"], meta["grid_width"])
    parts = {}
    for split, files in shards.items():
        if files:
            parts[split] = concatenate_datasets([Dataset.from_file(str(f)) for f in files])
        else:
            parts[split] = Dataset.from_dict({k: [] for k in features}, features=features)
    needed = sum(Path(f).stat().st_size for files in shards.values() for f in files)
    _save_whole(Path(folder), DatasetDict(parts), meta, needed)
