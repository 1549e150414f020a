"""SIGTERM and SIGINT in every phase of start-up: one log line and a non-zero exit, no traceback.

The entry point (`worker.__main__`) blocks both signals on its first line, before it imports
anything but `signal`, and calls `catch_stop_signals()`, which installs the handler and unblocks
them: a signal sent meanwhile was held pending and reaches the handler then. From then on, until
the worker's event loop takes the signals over, either signal ends the process at once: one line
naming the signal and what it was doing (`entering`), then exit code 128 + the signal's number
(143 for SIGTERM, 130 for SIGINT). Nothing has been consumed by then, so there is nothing to
finish or commit, and exiting from the handler itself means no code is interrupted half-way (an
import, a model load, an event loop being built) to unwind with a traceback. While the loop runs
it handles both signals (it stops fetching and drains); once it is closed the process is only
exiting, and they are ignored.

What no code of the package can cover is the interpreter's own start-up before that first line
(some 10 to 40 ms: `site` and the installed packages' `.pth` files, the script's `import re`): a
SIGTERM there ends the process by the signal with no line (status 143 all the same to a shell or
Kubernetes), a SIGINT with Python's `KeyboardInterrupt` traceback.

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
    """Makes SIGTERM and SIGINT end the process at once with one line (see the module), then
    unblocks them: one the entry point held while this module was imported arrives now."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop_now)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


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
