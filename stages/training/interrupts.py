"""Ctrl-C and SIGTERM during training: finish the step, save a checkpoint, stop (a second signal stops at once)."""

import contextlib
import signal
import sys
import threading


@contextlib.contextmanager
def graceful_interrupt(trainer):
    """While training, the first SIGINT (Ctrl-C) or SIGTERM only sets a flag: the loop finishes the step it is
    in, saves a checkpoint and stops, so the checkpoint never holds a half-done step. A second signal raises
    KeyboardInterrupt at once (no checkpoint: the state may be mid-step). Signals go to the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum, frame):
        if trainer._stop_requested:
            raise KeyboardInterrupt
        trainer._stop_requested = True
        print(
            f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
        )

    trainer._stop_requested = False
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
