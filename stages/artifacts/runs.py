"""Run folders: created once, never overwritten without --overwrite, continued with --resume, and locked.

Every command that writes a run, prior or output folder holds an exclusive lock on it for as long as it runs:
`fcntl.flock` on `.vqgen.lock` inside the folder, a file that holds the holder's pid. A second command on the same
folder is refused in one line naming that pid. The kernel drops a flock when its process dies, so the lock of a
killed command (SIGKILL, a power cut of the process) is simply taken over by the next one. The lock file is
removed when the lock is released; it never counts as content of the run and is never published.
"""

import atexit
import contextlib
import fcntl
import functools
import os
import shutil
import time
from pathlib import Path

from vqgen.stages.core.errors import UserError

LOCK_FILE = ".vqgen.lock"

RUN_MARKERS = (
    "run_config.json",
    "metrics.json",
    "checkpoints",
    "tokenizer",
    "codes",
    "samples",
    "model.safetensors",
)


def lexical(path: str | Path) -> Path:
    """`path` with `a/..` folded away before anything is created: `--run new/../run` makes `run`, never `new`."""
    return Path(os.path.normpath(Path(path).expanduser()))


def is_run_dir(path: Path) -> bool:
    return any((path / m).exists() for m in RUN_MARKERS)


def _contents(path: Path) -> list[Path]:
    """What a folder holds, its lock file left out."""
    return [p for p in path.iterdir() if p.name != LOCK_FILE]


def holds_files(path: Path) -> bool:
    """Whether `path` exists and is more than an empty folder (a lock file alone does not count)."""
    return Path(path).exists() and (not Path(path).is_dir() or bool(_contents(Path(path))))


class FolderLock:
    """An exclusive flock on FOLDER/.vqgen.lock (or another lock file name), held until `release()`."""

    def __init__(self, folder: Path, name: str = LOCK_FILE):
        folder = lexical(folder)
        self.folder, self.file = folder, folder / name
        self.fd: int | None = None
        self.created: list[Path] = []  # folders this lock created, removed again on release when left empty

    def acquire(self) -> "FolderLock":
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.created = [p for p in missing if p.is_dir()]
            while True:
                try:
                    fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                except FileNotFoundError:  # a command that failed just now removed the empty folder: again
                    self.folder.mkdir(parents=True, exist_ok=True)
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _read_pid(fd)
                    os.close(fd)
                    self._remove_created()
                    who = f"pid {holder}" if holder else "a process whose pid is not written yet"
                    raise UserError(
                        f"{self.folder} is in use by another vqgen command ({who}); wait for it to finish or "
                        "stop it, or choose another folder"
                    ) from None
                # the holder before us may have removed the file between our open and our flock: then this lock
                # is on a file nobody else will open again; start over on the file now at that path
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.file))
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            self._remove_created()
            raise UserError(f"cannot write to the run folder {self.folder}: {exc.strerror or exc}") from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(
                self.file
            )  # while still holding it: whoever opened it before sees another file and retries
        os.close(self.fd)
        self.fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        """Folders that only the lock created are removed again when nothing else was written into them."""
        for folder in self.created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        self.created = []


def _read_pid(fd: int) -> int | None:
    """The pid written in a lock file; it is written just after the flock, so wait a moment for it."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    return None


_HELD: dict[Path, FolderLock] = {}


def _key(folder: Path, name: str) -> Path:
    return Path(os.path.abspath(folder)) / name


def hold_lock(folder: str | Path, name: str = LOCK_FILE) -> FolderLock:
    """Lock `folder` (created if missing) for the rest of the command: until the `@locked_command` function it
    runs under returns, or the process ends. Re-entrant within one process. Under `accelerate launch` only the
    process of rank 0 takes it (the others work in the same folder as its helpers)."""
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return FolderLock(Path(folder), name)
    key = _key(Path(folder), name)
    lock = _HELD.get(key)
    if lock is None:
        lock = FolderLock(Path(folder), name).acquire()
        _HELD[key] = lock
    return lock


def release_locks(keep: set[Path] = frozenset()) -> None:
    """Release every lock this process holds except those in `keep`."""
    for key in [k for k in _HELD if k not in keep]:
        _HELD.pop(key).release()


def locked_command(fn):
    """A command function whose folder locks (taken with hold_lock or prepare_run_dir) are released when it
    returns or fails; locks held before it started stay held."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = set(_HELD)
        try:
            return fn(*args, **kwargs)
        finally:
            release_locks(keep=before)

    return wrapper


@contextlib.contextmanager
def run_lock(folder: str | Path, name: str = LOCK_FILE):
    """`with run_lock(folder):` the same lock as hold_lock, released when the block ends."""
    before = set(_HELD)
    hold_lock(folder, name)
    try:
        yield Path(folder)
    finally:
        release_locks(keep=before)


atexit.register(release_locks)


def prepare_run_dir(path: Path, overwrite: bool, resume: bool) -> Path:
    """Lock `path` (see hold_lock), then create it, or accept an existing run for --resume, or clear an existing
    vqgen run for --overwrite. The checks run under the lock, so two commands can never both pass them."""
    path = lexical(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder; choose another run folder")
    before = set(_HELD)
    hold_lock(path)
    try:
        _check_and_clear(path, overwrite, resume)
    except BaseException:
        release_locks(keep=before)  # a refused command leaves the folder as it found it
        raise
    return path


def _check_and_clear(path: Path, overwrite: bool, resume: bool) -> None:
    contents = _contents(path) if path.is_dir() else []  # not there yet for a process that took no lock
    if contents:
        if resume:
            return
        if not overwrite:
            raise UserError(
                f"{path} already holds a run; pass --overwrite to replace it or --resume to continue it"
            )
        if not is_run_dir(path):
            raise UserError(f"{path} is not empty and does not look like a vqgen run; refusing to delete it")
        for p in contents:  # everything but the lock file, which this command holds
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    elif resume:
        raise UserError(f"--resume: {path} holds no run to continue")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to the run folder {path}: {exc.strerror or exc}") from None
