"""Run folders: created once, never overwritten without --overwrite, continued with --resume."""

import shutil
from pathlib import Path

from vqgen.stages.core.errors import UserError

RUN_MARKERS = (
    "run_config.json",
    "metrics.json",
    "checkpoints",
    "tokenizer",
    "codes",
    "samples",
    "model.safetensors",
)


def is_run_dir(path: Path) -> bool:
    return any((path / m).exists() for m in RUN_MARKERS)


def prepare_run_dir(path: Path, overwrite: bool, resume: bool) -> Path:
    """Create `path`, or accept an existing run for --resume, or clear an existing vqgen run for --overwrite."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder; choose another run folder")
    if path.exists() and any(path.iterdir()):
        if resume:
            return path
        if not overwrite:
            raise UserError(
                f"{path} already holds a run; pass --overwrite to replace it or --resume to continue it"
            )
        if not is_run_dir(path):
            raise UserError(f"{path} is not empty and does not look like a vqgen run; refusing to delete it")
        shutil.rmtree(path)
    elif resume:
        raise UserError(f"--resume: {path} holds no run to continue")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to the run folder {path}: {exc.strerror or exc}") from None
    return path
