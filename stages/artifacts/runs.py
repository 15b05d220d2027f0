"""Run folders: created once, never overwritten without --overwrite, continued with --resume, and locked.

Every command that writes a run, prior or output folder holds an exclusive lock on it for as long as it runs:
`fcntl.flock` on `.vqgen.lock` inside the folder, a file that holds the holder's pid. A second command on the same
folder is refused in one line naming that pid. The kernel drops a flock when its process dies, so the lock of a
killed command (SIGKILL, a power cut of the process) is simply taken over by the next one. The lock file is
removed when the lock is released; it never counts as content of the run and is never published. It is opened
with O_NOFOLLOW | O_CLOEXEC: a symbolic link placed at its path is refused, never followed, and a child process
does not inherit the lock. Where the file system does not support flock (some NFS and Lustre mounts answer ENOLCK
or EOPNOTSUPP), the lock is the file itself, created with O_EXCL and holding `pid host`: a second command is refused
naming both, and a file left by a dead process of the same host is taken over.
"""

import atexit
import contextlib
import errno
import fcntl
import functools
import os
import socket
import time
from pathlib import Path

from vqgen.stages.artifacts import replaced
from vqgen.stages.core.errors import UserError

LOCK_FILE = ".vqgen.lock"
_NO_LINKS = os.O_NOFOLLOW | os.O_CLOEXEC  # a link placed at the lock file's path is never followed
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}  # flock is not supported here

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
    """What a folder holds, vqgen's own bookkeeping (its lock file, what --overwrite set aside) left out."""
    return [p for p in path.iterdir() if not p.name.startswith(replaced.INTERNAL)]


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
        self.exclusive_file = False  # True: no flock on this file system, the lock is the O_EXCL file itself

    def acquire(self) -> "FolderLock":
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.created = [p for p in missing if p.is_dir()]
            self.fd = self._take()
            if not self.exclusive_file:
                os.ftruncate(self.fd, 0)
                os.write(self.fd, f"{os.getpid()}\n".encode())
        except UserError:
            self._remove_created()
            raise
        except OSError as exc:
            self._remove_created()
            if exc.errno == errno.ELOOP:
                raise UserError(
                    f"{self.file} is a symbolic link; vqgen never follows one for its lock file: remove it"
                ) from None
            raise UserError(f"cannot write to the run folder {self.folder}: {exc.strerror or exc}") from None
        return self

    def _take(self) -> int:
        """The descriptor of the held lock file: flock'ed, or, where the file system has no flock, created with
        O_EXCL and holding `pid host` (`exclusive_file`)."""
        while True:
            created = True
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NO_LINKS, 0o644)
            except FileExistsError:
                created = False
                try:
                    fd = os.open(self.file, os.O_RDWR | _NO_LINKS)
                except FileNotFoundError:  # its holder removed it meanwhile: again
                    continue
            except FileNotFoundError:  # a command that failed just now removed the empty folder: again
                self.folder.mkdir(parents=True, exist_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"pid {holder}" if holder else "a process whose pid is not written yet"
                raise self._in_use(who) from None
            except OSError as exc:
                if exc.errno in NO_FLOCK and created:  # no flock here, and this file is ours: it is the lock
                    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
                    self.exclusive_file = True
                    return fd
                os.close(fd)
                if exc.errno not in NO_FLOCK:
                    raise
                return self._take_exclusive_file()
            # the holder before us may have removed the file between our open and our flock: then this lock
            # is on a file nobody else will open again; start over on the file now at that path
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.file, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def _take_exclusive_file(self) -> int:
        """No flock here (some NFS and Lustre mounts): the lock is the lock file's existence. It is created with
        O_EXCL and holds `pid host`; one left by a dead process of this host is taken over, one of another host
        is refused (its process cannot be checked from here)."""
        host = socket.gethostname()
        for _ in range(3):
            with contextlib.suppress(FileNotFoundError):
                text = self.file.read_text(errors="replace").split()
                pid, where = (int(text[0]), text[1]) if len(text) == 2 and text[0].isdigit() else (None, "")
                if where == host and pid is not None and not _alive(pid):
                    self.file.unlink()  # a stale lock of a dead process of this host
                else:
                    who = f"pid {pid} on {where}" if pid else "a process whose pid is not written yet"
                    raise self._in_use(who, f"; if that process is gone, remove {self.file}")
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NO_LINKS, 0o644)
            except FileExistsError:
                continue
            os.write(fd, f"{os.getpid()} {host}\n".encode())
            self.exclusive_file = True
            return fd
        raise self._in_use("another process")

    def _in_use(self, who: str, hint: str = "") -> UserError:
        return UserError(
            f"{self.folder} is in use by another vqgen command ({who}); wait for it to finish or stop it, or "
            f"choose another folder{hint}"
        )

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            # while still holding it: whoever opened it before sees another file and retries
            os.unlink(self.file)
        os.close(self.fd)
        self.fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        """Folders that only the lock created are removed again when nothing else was written into them."""
        for folder in self.created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        self.created = []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _read_pid(fd: int) -> int | None:
    """The pid written in a lock file; it is written just after the flock, so wait a moment for it."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.05)
    return None


_HELD: dict[Path, FolderLock] = {}


def _main_process() -> bool:
    """Rank 0 under `accelerate launch` (or a plain process): the one that locks, sets aside and recovers."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _key(folder: Path, name: str) -> Path:
    return Path(os.path.abspath(folder)) / name


def hold_lock(folder: str | Path, name: str = LOCK_FILE) -> FolderLock:
    """Lock `folder` (created if missing) for the rest of the command: until the `@locked_command` function it
    runs under returns, or the process ends. Re-entrant within one process. Under `accelerate launch` only the
    process of rank 0 takes it (the others work in the same folder as its helpers)."""
    if not _main_process():
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
    returns or fails; locks held before it started stay held. What its `--overwrite` set aside (vqgen.stages.
    artifacts.replaced) is deleted when it returns and moved back when it fails, before the locks are released."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = set(_HELD)
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            for key in set(_HELD) - before:
                replaced.restore(key.parent)
            release_locks(keep=before)
            raise
        for key in set(_HELD) - before:
            replaced.commit(key.parent)
        release_locks(keep=before)
        return result

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
    """Lock `path` (see hold_lock), then create it, or accept an existing run for --resume, or set an existing
    vqgen run aside for --overwrite (vqgen.stages.artifacts.replaced: deleted only once the new run is safe). The
    checks run under the lock, so two commands can never both pass them."""
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
    main = _main_process()  # the others work in the same folder as rank 0's helpers
    if path.is_dir() and main:  # not there yet for a process that took no lock
        replaced.recover(path, lambda: _contents(path))
    contents = _contents(path) if path.is_dir() else []
    if contents:
        if resume:
            return
        if not overwrite:
            raise UserError(
                f"{path} already holds a run; pass --overwrite to replace it or --resume to continue it"
            )
        if not is_run_dir(path):
            raise UserError(f"{path} is not empty and does not look like a vqgen run; refusing to delete it")
    elif resume:
        raise UserError(f"--resume: {path} holds no run to continue")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to the run folder {path}: {exc.strerror or exc}") from None
    if contents and main:  # kept aside until the new run's first checkpoint (vqgen.stages.artifacts.replaced)
        replaced.set_aside(path, contents, lambda: _contents(path))
