"""What `--overwrite` replaces is moved aside, never deleted, until the new work is safe on disk.

A package manager or a database replaces nothing before the replacement is complete; vqgen does the same. When a
command is told to `--overwrite` a run (or a generation), it first runs every check it can, then moves the old
files into `FOLDER/.vqgen-replaced/` (a rename on the same file system: instant, no copy, no extra space), and:
- `commit(folder)` deletes them once the new run has written its first checkpoint (the trainer calls it) or the
  command finished (`locked_command` calls it);
- `restore(folder)` moves them back, after removing what the new work wrote, when the command fails for any
  reason, Ctrl-C before the first checkpoint included (`locked_command` calls it);
- a command killed in between (SIGKILL, a power cut) leaves the folder under its old name; the next command that
  locks the folder (`recover`) finds it and moves the old files back before it looks at the folder.

`.vqgen-replaced/index.json` names where each entry came from (relative to the folder, so a moved run recovers
too); the entries themselves are named by number, so no file name a user chose becomes part of another path.
"""

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

INTERNAL = ".vqgen"  # vqgen's own bookkeeping in a folder (lock, set-aside, trash): never content of a run
ASIDE = ".vqgen-replaced"
TRASH = ".vqgen-trash-"
_INDEX = "index.json"

# folder -> a function listing what the new work wrote there (removed before the old files come back)
_PENDING: dict[Path, Callable[[], list[Path]]] = {}


def _key(folder: Path) -> Path:
    return Path(os.path.abspath(folder))


def set_aside(folder: Path, paths: list[Path], written: Callable[[], list[Path]]) -> None:
    """Move `paths` (inside `folder`, or beside it) into FOLDER/.vqgen-replaced; `written()` lists what the new
    work has put in their place, for `restore`."""
    folder = Path(folder)
    aside = folder / ASIDE
    aside.mkdir()
    names = {}
    for i, path in enumerate(paths):
        names[str(i)] = os.path.relpath(path, folder)
        # written before each move: a crash never loses an entry's origin
        (aside / _INDEX).write_text(json.dumps(names))
        os.replace(path, aside / str(i))
    _PENDING[_key(folder)] = written


def pending(folder: Path) -> bool:
    return _key(folder) in _PENDING


def commit(folder: Path | None = None) -> None:
    """The new work is safe: delete what was set aside in `folder` (or in every folder, when None)."""
    for key in [k for k in _PENDING if folder is None or k == _key(folder)]:
        _PENDING.pop(key)
        _delete(key / ASIDE)


def restore(folder: Path | None = None) -> None:
    """The new work failed: remove what it wrote and move the old files back (in `folder`, or in every one)."""
    for key in [k for k in _PENDING if folder is None or k == _key(folder)]:
        _undo(key, _PENDING.pop(key))


def recover(folder: Path, written: Callable[[], list[Path]]) -> bool:
    """Move back what a killed `--overwrite` left set aside in `folder`, removing what it wrote in their place
    (`written()`), and clear a half-done deletion; call it holding the folder's lock. True if it moved files back."""
    folder = Path(folder)
    for trash in folder.glob(f"{TRASH}*"):
        shutil.rmtree(trash, ignore_errors=True)
    if not (folder / ASIDE).is_dir() or pending(folder):
        return False
    _undo(folder, written)
    print(
        f"warning: {folder}: an earlier --overwrite was interrupted before the new run was safe; what it "
        "replaced is back in place",
        file=sys.stderr,
    )
    return True


def _undo(folder: Path, written: Callable[[], list[Path]]) -> None:
    for path in written():
        if path.name.startswith(INTERNAL):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    aside = folder / ASIDE
    for number, rel in _index(aside).items():
        if os.path.lexists(aside / number):
            os.replace(aside / number, folder / rel)
    _delete(aside)


def _index(aside: Path) -> dict[str, str]:
    try:
        return json.loads((aside / _INDEX).read_text())
    except (OSError, ValueError):
        return {}


def _delete(aside: Path) -> None:
    """Rename first, then delete: a half-deleted folder is never taken for something to restore."""
    if not aside.exists():
        return
    trash = aside.with_name(f"{TRASH}{os.getpid()}")
    os.replace(aside, trash)
    shutil.rmtree(trash, ignore_errors=True)
