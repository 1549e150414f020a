"""SIGTERM and SIGINT in every phase of start-up: one log line and a non-zero exit, no traceback.

The entry point (`worker.__main__`) calls `catch_stop_signals()` before it imports anything else.
From then on, until the worker's event loop takes the signals over, either signal ends the
process at once: one line naming the signal and what it was doing (`entering`), then exit code
128 + the signal's number (143 for SIGTERM, 130 for SIGINT). Nothing has been consumed by then,
so there is nothing to finish or commit, and exiting from the handler itself means no code is
interrupted half-way (an import, a model load, an event loop being built) to unwind with a
traceback. While the loop runs it handles both signals (it stops fetching and drains); once it
is closed the process is only exiting, and they are ignored.

Only `run` keeps these handlers: every other command gets Python's usual handling back
(`release_stop_signals`), since their cleanups (stopping a child broker or worker) need it.
"""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType

__all__ = [
    "STOP_SIGNALS",
    "catch_stop_signals",
    "entering",
    "ignore_stop_signals",
    "release_stop_signals",
    "stop_line",
]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger(__name__)

_phase = "starting"


def _stop_now(signum: int, frame: FrameType | None) -> None:
    # Once: a second signal must not interrupt the line this one writes.
    ignore_stop_signals()
    line = stop_line(signum)
    if logging.getLogger().handlers:
        log.error("%s", line)
    else:  # logging is not configured yet
        os.write(2, f"qa-worker: {line}\n".encode())
    os._exit(128 + signum)


def catch_stop_signals() -> None:
    """Makes SIGTERM and SIGINT end the process at once with one line (see the module)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop_now)


def release_stop_signals() -> None:
    """Gives the signals Python's own handling back, if `catch_stop_signals` took them."""
    if signal.getsignal(signal.SIGTERM) is _stop_now:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) is _stop_now:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def entering(phase: str) -> None:
    """Logs `phase` (what the command starts doing) and names it in the line a stop writes."""
    global _phase
    _phase = phase
    log.info("%s", phase)


def stop_line(signum: int, phase: str | None = None) -> str:
    """What a stop before any event was consumed says: the signal and the phase it ended."""
    name = signal.Signals(signum).name
    return f"stopped while {phase or _phase} ({name}); nothing was consumed"
