"""Progress reporting for long work: a bar on a terminal, plain lines otherwise.

Engine functions take an optional ``progress`` callable ``progress(fraction, message)``
with ``fraction`` in [0, 1]; they never print themselves.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

ProgressCallback = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """Progress callback that ignores all reports."""


class ConsoleProgress:
    """Progress callback writing to a stream (stderr by default).

    On a terminal it redraws one line with a bar; otherwise (logs, batch jobs) it
    writes a plain line whenever the message changes or another 10 % is done.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_message = None
        self._last_decile = -1
        self._start = time.monotonic()

    def __call__(self, fraction: float, message: str) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        elapsed = time.monotonic() - self._start
        if self.is_tty:
            filled = int(round(fraction * self.width))
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(
                f"\r[{bar}] {fraction * 100:5.1f}% {elapsed:6.1f}s {message[:60]:<60}"
            )
            if fraction >= 1.0:
                self.stream.write("\n")
            self.stream.flush()
            return
        decile = int(fraction * 10)
        if message != self._last_message or decile != self._last_decile:
            self.stream.write(f"[{fraction * 100:5.1f}%] {elapsed:7.1f}s {message}\n")
            self.stream.flush()
            self._last_message = message
            self._last_decile = decile


def sub_progress(progress: ProgressCallback | None, start: float, stop: float) -> ProgressCallback:
    """Map a sub-task's [0, 1] progress onto [start, stop] of a parent callback."""
    if progress is None:
        return no_progress

    def report(fraction: float, message: str) -> None:
        progress(start + (stop - start) * min(max(fraction, 0.0), 1.0), message)

    return report
