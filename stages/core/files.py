"""The one atomic file writer: every file vqgen writes (JSON, text, PNG, a model's files) goes through it.

A file is written to a fresh temporary file in the same folder (`mkstemp`: an unpredictable name, created with
O_EXCL, so a link placed there in advance is never followed), then renamed into place: a file under its final
name is always whole, and a failed write leaves nothing behind. The file gets the permissions a plain `open` would
give it (0666 less the umask), not mkstemp's owner-only 0600.
"""

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"  # temporary files are named .<final name>.<random>.tmp


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # read once at import, before any thread of ours writes


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], fsync: bool = False) -> Path:
    """Call `write(f)` on a temporary binary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        if hasattr(os, "fchmod"):  # POSIX; elsewhere the platform's default stays
            os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_bytes(data: bytes, path: str | Path) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_text(text: str, path: str | Path) -> Path:
    return write_bytes(text.encode(), path)


def write_json(data: Any, path: str | Path) -> Path:
    """Indented, key-sorted JSON with a final newline."""
    return write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", path)


def save_png(image, path: str | Path) -> Path:
    """A PIL image (or a matplotlib figure) as a PNG."""
    if hasattr(image, "savefig"):
        return atomic_write(path, lambda f: image.savefig(f, format="png"))
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()
