"""Progress bars that suit where they are read.

In a terminal: tqdm as usual, redrawn in place ten times a second. In a log (stderr not a terminal: CI, a job
scheduler, `2> log.txt`): one plain line per update, at most every $VQGEN_PROGRESS_SECONDS (default 30 s) and
at the end, so a long run leaves a few dozen readable lines instead of thousands of carriage-return redraws; a
log line has no bar graphic and no width limit, so every figure of the postfix (the held-out NLL last) is in it.
`quiet_library_bars()` turns off the bars of `datasets` and `huggingface_hub` in a log (their progress is
summarised by our own lines).
"""

import os
import sys

from tqdm.auto import tqdm

DEFAULT_LOG_SECONDS = 30.0
LOG_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def interactive(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class _Lines:
    """A file for tqdm that turns each redraw into one line (a log has no carriage returns to honour)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip("\n")
        if text.strip():
            self.stream.write(text.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(
    iterable=None,
    total=None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
    **kwargs,
):
    """A tqdm bar (over `iterable`, or updated by hand): live in a terminal, a line every few seconds in a log."""
    if interactive() or disable:
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, **kwargs)
    seconds = float(os.environ.get("VQGEN_PROGRESS_SECONDS", DEFAULT_LOG_SECONDS))
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        file=_Lines(sys.stderr),
        mininterval=seconds,
        maxinterval=seconds,
        miniters=1,
        bar_format=LOG_FORMAT if total is not None or hasattr(iterable, "__len__") else None,
        ascii=True,
        **kwargs,
    )


def quiet_library_bars() -> None:
    """In a log, no per-batch bars from `datasets` (preparing, saving) or `huggingface_hub` (downloads)."""
    if interactive():
        return
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
