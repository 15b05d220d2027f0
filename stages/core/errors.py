"""The one exception type for a user's mistake: the CLI prints its message on one line and exits with code 2.

Every message that leaves the program goes through `redact`: a Hugging Face token, an `Authorization:` or
`Bearer` value, or a user and password inside a URL is never printed, whatever a library put into its message.
"""

import errno
import os
import re

_SECRETS = (
    # credentials inside a URL: scheme://user:password@host -> scheme://***@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@:]*(?::[^/\s@]*)?@"), r"\1***@"),
    # an Authorization header (any scheme) and a bare Bearer value
    (
        re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:(?:bearer|basic|token)\s+)?[^\s'\",;}]+"),
        r"\1***",
    ),
    (re.compile(r"(?i)\b(bearer\s+)[^\s'\",;}]+"), r"\1***"),
    # Hugging Face tokens (hf_..., and the api_org_... organisation tokens)
    (re.compile(r"\b(?:hf|api_org)_[A-Za-z0-9]{6,}"), "***"),
)


# errno -> what it means for the user, and what to do about it
DISK_ERRNOS = {
    errno.ENOSPC: ("no space left on the device of", "free some space"),
    errno.EDQUOT: ("disk quota exceeded in", "free some space or raise the quota"),
    errno.EFBIG: (
        "a file would exceed the file-size limit (ulimit -f, or the file system's) in",
        "raise the limit or write to another file system",
    ),
}
_OS_ERROR = re.compile(r"os error (\d+)")  # how Rust libraries (safetensors) report an errno


def disk_errno(exc: BaseException) -> int | None:
    """ENOSPC, EDQUOT or EFBIG if `exc` (or an exception it was raised from) is a full disk, a quota or a file-size
    limit, whichever library raised it; else None."""
    for _ in range(5):  # the exception and the ones it came from
        if exc is None:
            return None
        code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
        if code is None:
            match = _OS_ERROR.search(str(exc))
            code = int(match.group(1)) if match else None
        if code is None:
            code = next((c for c in DISK_ERRNOS if os.strerror(c) in str(exc)), None)
        if code in DISK_ERRNOS:
            return code
        exc = exc.__cause__ or exc.__context__
    return None


def redact(text: str) -> str:
    """`text` with every secret it may hold replaced by `***`: Hugging Face tokens, Authorization and Bearer
    values, and the user:password part of URLs."""
    text = str(text)
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class TrainingStopped(Exception):
    """The run cannot go on (diverged); the message says why and where its last good checkpoint is (exit code 1)."""


class UserError(Exception):
    """Bad input from the user: a wrong path, flag, value or a mismatched checkpoint. Never a bug of ours.
    Its message is redacted (see `redact`) when it is made."""

    def __init__(self, *args):
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


def one_line(exc: BaseException, limit: int = 300) -> str:
    """`TypeName: message` squeezed onto one line and cut to `limit` characters, for wrapping a library's
    exception (often several lines long) into a UserError."""
    text = " ".join(redact(str(exc)).split()) or "no details"
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (or its type's name), redacted and cut to `limit` characters."""
    lines = str(exc).strip().splitlines()
    return redact(lines[0] if lines else type(exc).__name__)[:limit]


def read_json_object(path, label: str) -> dict:
    """A JSON file that must hold an object (a config.json, vqgen.json, ...): a file that cannot be read, is not
    JSON or holds something else is a one-line UserError starting with `label`."""
    import json
    from pathlib import Path

    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{label} is not valid JSON ({one_line(exc)})") from None
    if not isinstance(value, dict):
        raise UserError(f"{label} must hold a JSON object")
    return value


def environment_error(exc: BaseException) -> str | None:
    """One line for an error that the user's environment causes (a full disk, a quota or a file-size limit met by
    any library, a read-only or forbidden path), or None for any other (a bug of ours, which keeps its traceback).
    Writers name their folder and the bytes they need themselves (vqgen.stages.core.files.disk_writes); this is
    the last resort for one that did not."""
    import errno

    code = disk_errno(exc)
    filename = getattr(exc, "filename", None)
    where = f" ({filename})" if filename else ""
    if code is not None:
        return (
            f"{DISK_ERRNOS[code][0]} {filename or 'the folder being written'}; {DISK_ERRNOS[code][1]} and run again "
            "(training continues from its last complete checkpoint with --resume)"
        )
    if not isinstance(exc, OSError):
        return None
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and exc.filename:
        return f"{exc.filename}: a file stands where a folder is needed; choose another path"
    if exc.errno == errno.ENAMETOOLONG:
        return f"a path is too long{where}; choose a shorter one"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{exc.strerror or 'not permitted'}{where}; choose a folder you can write to, or fix its permissions"
    return None
