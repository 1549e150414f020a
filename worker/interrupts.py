"""SIGTERM and SIGINT in every phase of a command: one log line and a non-zero exit, no traceback.

The entry point (`worker.__main__`) calls `catch_stop_signals()` before it imports anything else.
From then on either signal raises `Interrupted` in the main thread, wherever it is (importing,
reading settings, loading a model), and the entry point turns it into one line naming the signal
and what the command was doing (`entering`), and exit code 128 + the signal's number: 143 for
SIGTERM, 130 for SIGINT. While the worker's event loop runs, the loop handles both signals itself
(it stops fetching and drains); once the loop is closed the process is only exiting, and they
are ignored.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

__all__ = [
    "STOP_SIGNALS",
    "Interrupted",
    "catch_stop_signals",
    "entering",
    "ignore_stop_signals",
    "received",
    "report",
    "stop_line",
]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger(__name__)

_phase = "starting"
# The first stop signal, kept in case the exception it raised was swallowed: a handler that
# runs inside a __del__ or a callback has its exception printed and dropped by Python.
_received: int | None = None


class Interrupted(BaseException):
    """A stop signal, raised where the main thread was. A BaseException, like KeyboardInterrupt,
    so that no `except Exception` on its way takes it for an error of the code it interrupted."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _interrupt(signum: int, frame: FrameType | None) -> None:
    global _received
    # Once: a second signal while the first unwinds would interrupt the line it writes.
    ignore_stop_signals()
    _received = signum
    raise Interrupted(signum)


def received() -> int | None:
    """The stop signal received so far, if any (whether or not its exception got through)."""
    return _received


def catch_stop_signals() -> None:
    """Makes SIGTERM and SIGINT raise `Interrupted` in the main thread."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)


def ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def entering(phase: str) -> None:
    """Logs `phase` (what the command starts doing) and names it in the line a stop writes."""
    global _phase
    if _received is not None:
        raise Interrupted(_received)
    _phase = phase
    log.info("%s", phase)


def stop_line(signum: int, phase: str | None = None) -> str:
    """What a stop before any event was consumed says: the signal and the phase it ended."""
    name = signal.Signals(signum).name
    return f"stopped while {phase or _phase} ({name}); nothing was consumed"


def report(stop: Interrupted, command: str | None) -> int:
    """Writes the one line about `stop`: a log line once logging is configured, else a line on
    stderr; returns the exit code."""
    line = stop_line(stop.signum)
    if logging.getLogger().handlers:
        log.error("%s", line)
    else:
        print(f"qa-worker{f' {command}' if command else ''}: {line}", file=sys.stderr)
    return stop.exit_code
