"""Where images come from: `--dataset` resolved to the embedded MNIST digits, a local folder (folders.py), a
stream (streaming.py) or a Hub dataset, each prepared into two splits by the conversions of images.py."""

from pathlib import Path

from vqgen.stages.artifacts.hub import check_hub_id, ensure_hub_reachable, looks_local
from vqgen.stages.core.errors import UserError, first_line
from vqgen.stages.core.runconfig import check_limits
from vqgen.stages.data.folders import load_folder
from vqgen.stages.data.images import (
    ASSETS,
    EMBEDDED,
    DataConfig,
    ImageSplits,
    _finish,
    _label_reader,
    _no_decode,
    _preprocess,
    _split,
)
from vqgen.stages.data.streaming import load_stream


def load_embedded(cfg: DataConfig) -> ImageSplits:
    from datasets import Dataset

    parts = [
        _no_decode(Dataset.from_parquet(str(ASSETS / f"{EMBEDDED}-{name}.parquet")), "image")
        for name in ("train", "heldout")
    ]
    label_of = lambda batch, i: int(batch["label"][i])  # noqa: E731
    train, heldout = (_preprocess(p, cfg, "image", label_of) for p in parts)
    return _finish(train, heldout, [str(d) for d in range(10)], sum(len(p) for p in parts))


def load_hub(cfg: DataConfig) -> ImageSplits:
    from datasets import load_dataset

    ensure_hub_reachable(f"--dataset {cfg.dataset}")

    def fetch(split: str):
        try:
            return load_dataset(cfg.dataset, split=split, revision=cfg.revision)
        except Exception as exc:  # offline, missing repo, missing split: one line, no retries stack
            first = first_line(exc, 300)
            raise UserError(
                f"--dataset {cfg.dataset!r}: could not load split {split!r} from the Hugging Face Hub ({first}); "
                "check the id and your network, or pass a local folder"
            ) from None

    train_raw = fetch(cfg.split)
    if cfg.image_column not in train_raw.column_names:
        raise UserError(
            f"--image-column {cfg.image_column!r} not in the dataset; columns: {train_raw.column_names}"
        )
    class_names, label_of = _label_reader(train_raw, cfg.label_column)

    prep = lambda ds: _preprocess(_no_decode(ds, cfg.image_column), cfg, cfg.image_column, label_of)  # noqa: E731
    if cfg.heldout_split:
        heldout_raw = fetch(cfg.heldout_split)
        return _finish(prep(train_raw), prep(heldout_raw), class_names, len(train_raw) + len(heldout_raw))
    train, heldout = _split(prep(train_raw), cfg)
    return _finish(train, heldout, class_names, len(train_raw))


def load_image_splits(cfg: DataConfig) -> ImageSplits:
    """Resolve --dataset to the embedded data, a local folder, or a Hub id."""
    if cfg.channels not in (1, 3):
        raise UserError(f"--channels must be 1 (grey) or 3 (RGB), got {cfg.channels}")
    if cfg.image_size < 4:
        raise UserError(f"--image-size must be at least 4, got {cfg.image_size}")
    check_limits(cfg)  # the ranges and choices (--resize) declared on DataConfig
    if cfg.streaming:
        return load_stream(cfg)
    if cfg.dataset == EMBEDDED:
        return load_embedded(cfg)
    path = Path(cfg.dataset).expanduser()
    if path.exists():
        return load_folder(path, cfg)
    if looks_local(cfg.dataset):
        raise UserError(f"--dataset {cfg.dataset}: no such folder")
    check_hub_id(cfg.dataset, "--dataset")
    return load_hub(cfg)
