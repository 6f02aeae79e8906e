"""User-facing errors and interruptions: the CLI prints these as one line, without a traceback."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class LatpruneError(Exception):
    """An error caused by user input or environment, with a message that says what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with a message saying exactly what was saved."""


@contextmanager
def no_interrupt() -> Iterator[None]:
    """Defer Ctrl-C until the block ends (for updates that must not stop half-way, such as an
    optimizer step). Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[tuple] = []
    previous = signal.signal(signal.SIGINT, lambda *a: pending.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending and callable(previous):
            previous(*pending[0])
