"""The one atomic file writer: every file vqgen writes (JSON, text, PNG, a model's files) goes through it; and
image_grid, the picture that save_png writes most.

A file is written to a fresh temporary file in the same folder (`mkstemp`: an unpredictable name, created with
O_EXCL, so a link placed there in advance is never followed), then renamed into place: a file under its final
name is always whole, and a failed write leaves nothing behind. The file gets the permissions a plain `open` would
give it (0666 less the umask), not mkstemp's owner-only 0600.

A full disk, a quota or a file-size limit (ENOSPC, EDQUOT, EFBIG) is recognised whichever library met it (an
OSError from Python or Arrow, safetensors' own SafetensorError "... (os error 28)") and becomes one line naming
the folder and the bytes needed (`disk_writes`); every writer of vqgen runs under it.
"""

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from vqgen.stages.core.errors import DISK_ERRNOS, UserError, disk_errno

TMP_SUFFIX = ".tmp"  # temporary files are named .<final name>.<random>.tmp


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # read once at import, before any thread of ours writes


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_bytes(folder: Path) -> int | None:
    """Free bytes on the file system of `folder` (or of its nearest existing parent)."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_message(code: int, folder: Path, needed: int | None, what: str = "") -> str:
    """The one line for a full disk, a quota or a file-size limit met while writing `what` into `folder`."""
    meaning, remedy = DISK_ERRNOS[code]
    free = free_bytes(folder)
    sizes = [
        f"needs about {human_bytes(needed)}" if needed else "",
        f"{human_bytes(free)} free" if free is not None else "",
    ]
    sizes_text = ", ".join(s for s in sizes if s)
    return (
        f"{meaning} {folder}{f' while writing {what}' if what else ''}"
        f"{f' ({sizes_text})' if sizes_text else ''}; {remedy} and run again (nothing was half-written; "
        "training continues from its last complete checkpoint with --resume)"
    )


@contextlib.contextmanager
def disk_writes(folder: str | Path, needed: int | None = None, what: str = ""):
    """`with disk_writes(folder, needed):` a full disk, a quota or a file-size limit met inside becomes one
    UserError line naming `folder` and the `needed` bytes (see the module docstring)."""
    try:
        yield
    except Exception as exc:
        code = disk_errno(exc)
        if code is None:
            raise
        raise UserError(disk_message(code, Path(folder), needed, what)) from None


def atomic_write(
    path: str | Path, write: Callable[[IO[bytes]], Any], fsync: bool = False, needed: int | None = None
) -> Path:
    """Call `write(f)` on a temporary binary file beside `path`, then rename it to `path` (`needed`: the bytes it
    will take, for the message on a full disk)."""
    path = Path(path)
    with disk_writes(path.parent, needed, path.name):
        return _atomic_write(path, write, fsync)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], Any], fsync: bool) -> Path:
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
    return atomic_write(path, lambda f: f.write(data), needed=len(data))


def write_text(text: str, path: str | Path) -> Path:
    return write_bytes(text.encode(), path)


def write_json(data: Any, path: str | Path) -> Path:
    """Indented, key-sorted JSON with a final newline."""
    return write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", path)


def save_png(image, path: str | Path) -> Path:
    """A PIL image (or a matplotlib figure) as a PNG (encoded in memory first: its size is known when it is written)."""
    buffer = io.BytesIO()
    if hasattr(image, "savefig"):
        image.savefig(buffer, format="png")
    else:
        image.save(buffer, format="PNG")
    return write_bytes(buffer.getvalue(), path)


def image_grid(images, nrow: int, pad: int = 2):
    """(B, C, H, W) images in [-1, 1] (a torch tensor) -> a PIL grid image with `nrow` images per row."""
    import torch
    from PIL import Image

    images = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    b, c, h, w = images.shape
    rows = math.ceil(b / nrow)
    grid = torch.zeros(c, rows * (h + pad) + pad, nrow * (w + pad) + pad, dtype=torch.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    arr = grid.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()
