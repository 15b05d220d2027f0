"""The codes dataset: the one interface between the two stages, and the one file that reads and writes it.

    RUN/codes/             a datasets.DatasetDict saved with save_to_disk: splits `train` and `validation`, each
                           with `codes` (H x W int32) and `label` (int64, -1 = unlabelled); a train split with
                           augmented views has a `view` column too (int64, an index into codes.json's `views`)
    RUN/codes/codes.json   what a prior is built from: vocab_size, grid_height, grid_width, num_classes,
                           tokenizer_fingerprint, class_names, `tokenizer` (the tokenizer folder, relative), and
                           `views` (the names of the image views encoded, VIEWS; absent: ["identity"])

Views: with `tokenize --code-views hflip` the train split holds, after the rows of the images as they are (view 0,
"identity"), the rows of each further view of the same images in the same order: row i of view v is image i seen
through VIEWS[views[v]] and then encoded. `train-prior` draws one view per image and step (stages/training/tasks.py);
the held-out split holds the images as they are only, so held-out NLL is measured on real images.

(Runs written before vqgen 0.2 call codes.json `vqgen.json`; they are still read.)
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from vqgen.stages.core.errors import UserError, one_line, read_json_object
from vqgen.stages.core.files import write_json

CODES_META = "codes.json"
LEGACY_META = "vqgen.json"
META_FIELDS = {
    "vocab_size": int,
    "grid_height": int,
    "grid_width": int,
    "num_classes": int,
    "tokenizer_fingerprint": str,
}


# The image views `tokenize --code-views` can encode: name -> (B, C, H, W) images -> the same images seen that way.
# Each keeps the image size, so any tokenizer encodes them; a crop or a rescale would not be a view of this kind.
VIEWS = {
    "identity": lambda images: images,
    "hflip": lambda images: images.flip(-1),  # left-right
    "vflip": lambda images: images.flip(-2),  # upside down
}


def check_views(names: list[str]) -> list[str]:
    """["identity", *names] for `tokenize --code-views NAMES`; a view the tokenizer cannot encode is a UserError."""
    unknown = [n for n in names if n not in VIEWS]
    if unknown:
        raise UserError(
            f"--code-views {','.join(unknown)}: not a view the tokenizer can encode (it encodes whole images of one "
            f"size: crops and rescales are not views); choose from {', '.join(n for n in VIEWS if n != 'identity')}"
        )
    return ["identity", *dict.fromkeys(n for n in names if n != "identity")]


@dataclass
class CodeSplits:
    train_codes: torch.Tensor  # (N, H, W) long: the images as they are
    train_labels: torch.Tensor  # (N,) long, -1 where unlabelled
    val_codes: torch.Tensor
    val_labels: torch.Tensor
    meta: dict  # codes.json: vocab_size, grid_height, grid_width, num_classes, tokenizer_fingerprint, ...
    train_views: torch.Tensor | None = None  # (V, N, H, W) long, view 0 = train_codes; None: one view only


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

    def arrays(split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rows = dd[split].with_format("numpy")[:]
        view = torch.as_tensor(np.asarray(rows["view"]), dtype=torch.long) if "view" in rows else None
        codes = torch.as_tensor(np.asarray(rows["codes"]), dtype=torch.long)
        return codes, torch.as_tensor(np.asarray(rows["label"]), dtype=torch.long), view

    train_codes, train_labels, train_view = arrays("train")
    val_codes, val_labels, val_view = arrays("validation")
    if val_view is not None:  # held-out scores are of the images as they are
        val_codes, val_labels = val_codes[val_view == 0], val_labels[val_view == 0]
    views = None
    if train_view is not None:
        views = split_views(train_codes, train_labels, train_view, len(meta.get("views", ["identity"])), path)
        train_codes, train_labels = views[0], train_labels[train_view == 0]
    return CodeSplits(
        train_codes,
        train_labels,
        val_codes,
        val_labels,
        meta,
        views if views is not None and len(views) > 1 else None,
    )


def split_views(codes: torch.Tensor, labels: torch.Tensor, view: torch.Tensor, count: int, path: Path):
    """(V, N, H, W): the rows of each view in image order; the views must hold the same images (same labels)."""
    parts = [codes[view == v] for v in range(count)]
    labels_of = [labels[view == v] for v in range(count)]
    if (
        int(view.min()) < 0
        or int(view.max()) >= count
        or any(
            len(p) != len(parts[0]) or not torch.equal(lab, labels_of[0]) for p, lab in zip(parts, labels_of)
        )
    ):
        raise UserError(
            f"--codes {path}: its views do not hold the same images; rewrite the codes with `tokenize`"
        )
    return torch.stack(parts)


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
    views = meta.get("views", ["identity"])
    if not (isinstance(views, list) and views[:1] == ["identity"] and all(isinstance(v, str) for v in views)):
        raise UserError(
            f'--codes: {meta_file} field views should be a list of names starting with "identity"'
        )
    if not isinstance(meta.get("tokenizer", ""), str):
        raise UserError(f"--codes: {meta_file} field tokenizer should be a relative path (str)")
    return meta


def write_codes(folder: Path, splits: dict[str, tuple], meta: dict) -> None:
    """Save {split: ((N, H, W) codes, (N,) labels[, (N,) view indices])} and the description `meta` (see the module
    docstring; with view indices, meta["views"] names them)."""
    from datasets import Dataset, DatasetDict, DatasetInfo

    parts = {}  # named fingerprints: datasets would otherwise hash every code to make one (4x their size in memory)
    for name, (codes, labels, *view) in splits.items():
        features = _features(meta, with_view=bool(view))
        parts[name] = Dataset(
            _codes_table(codes, labels, features, view[0] if view else None),
            info=DatasetInfo(features=features),
            fingerprint=f"vqgen-codes-{meta.get('tokenizer_fingerprint')}-{name}-{len(codes)}",
        )
    DatasetDict(parts).save_to_disk(str(folder))
    write_json(meta, Path(folder) / CODES_META)


def save_codes(
    run_dir: Path, model, splits, batch_size: int, accelerator, views: list[str] = ("identity",)
) -> dict:
    """Encode both image splits (a vqgen.stages.data.images.ImageSplits) with the trained tokenizer `model` and
    write them as the run's codes dataset; the train split also through every further view in `views` (names of
    VIEWS, "identity" first). Returns its description (codes.json)."""
    from vqgen.stages.data.encode import encode_split

    train = [encode_split(model, splits.train, batch_size, accelerator, VIEWS[name]) for name in views]
    encoded = {"train": train[0], "validation": encode_split(model, splits.heldout, batch_size, accelerator)}
    if len(train) > 1:  # each view's rows in image order, after the images as they are
        view = torch.arange(len(train)).repeat_interleave(len(train[0][0]))
        encoded["train"] = (torch.cat([c for c, _ in train]), torch.cat([lab for _, lab in train]), view)
    g = model.config.grid_size
    meta = {
        "tokenizer": "../tokenizer",
        "tokenizer_fingerprint": model.fingerprint(),
        "vocab_size": model.config.quantizer.codebook_size,
        "grid_height": g,
        "grid_width": g,
        "num_classes": splits.num_classes,
        "class_names": splits.class_names,
        **({"views": list(views)} if len(views) > 1 else {}),
    }
    if accelerator.is_main_process:
        write_codes(Path(run_dir) / "codes", encoded, meta)
    return meta


def _features(meta: dict, with_view: bool):
    from datasets import Array2D, Features, Value

    columns = {"codes": Array2D((meta["grid_height"], meta["grid_width"]), "int32"), "label": Value("int64")}
    return Features({**columns, **({"view": Value("int64")} if with_view else {})})


def _codes_table(codes: torch.Tensor, labels: torch.Tensor, features, view=None, rows: int = 65536):
    """The Arrow table of (N, H, W) codes, (N,) labels and optional (N,) view indices, built from the arrays
    themselves in record batches of `rows` (no Python object per code: `Dataset.from_dict` would take five times the
    codes' size on the way)."""
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
        arrays = [column, pa.array(lab[lo : lo + rows])]
        if view is not None:
            arrays.append(pa.array(view.to(torch.int64).numpy()[lo : lo + rows]))
        batches.append(pa.record_batch(arrays, names=list(features)))
    schema = pa.schema([(n, codes_type if n == "codes" else pa.int64()) for n in features])
    return pa.Table.from_batches(batches, schema=schema)


def meta_file(folder: Path) -> Path | None:
    """The codes description in `folder`, or None when it holds none."""
    for name in (CODES_META, LEGACY_META):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None
