"""The one atomic file writer: every file vqgen writes (JSON, text, PNG, a model's files) goes through it; and
image_grid, the picture that save_png writes most.

A file is written to a fresh temporary file in the same folder (`mkstemp`: an unpredictable name, created with
O_EXCL, so a link placed there in advance is never followed), then renamed into place: a file under its final
name is always whole, and a failed write leaves nothing behind. The file gets the permissions a plain `open` would
give it (0666 less the umask), not mkstemp's owner-only 0600.
"""

import contextlib
import hashlib
import json
import math
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
