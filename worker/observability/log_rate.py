"""Repeated lines at a bounded rate: one line per cause per interval, with a count of the rest.

When the broker goes away, aiokafka and faust log every failed connection attempt, about 60 lines
a second, which buries the line that says what happened. A cause is the logger and the message
template (the text before its arguments are filled in); the first record of a cause passes, the
same cause's records within `interval_s` after it are dropped and counted, and the next one after
the interval passes with that count appended. Critical records always pass.

Lines that differ only in the objects they name are one cause: asyncio writes the handle or
task concerned into the message itself (`Exception in callback ...` / `handle: <TimerHandle
when=5306.12 BaseSelectorEventLoop._start_serving(<socket.socket fd=6, ...>)>`), so a storm
of them had as many causes as lines. Before messages are compared, hexadecimal addresses
(`0x7f3a...`) and the numbers inside object representations (`<Name ...>`: times, file
descriptors, ports, task numbers) are masked; numbers elsewhere in a message still tell causes
apart.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MAX_CAUSES", "REPEAT_INTERVAL_S", "RepeatFilter", "cause_of", "quiet_repeats"]

REPEAT_INTERVAL_S = 10.0
# The package whose INFO lines always pass.
WORKER_LOGGER = "worker"
# Causes remembered at most; messages that carry values of their own (an offset, an id) make a
# cause each, and would otherwise grow the table for the life of the process.
MAX_CAUSES = 1_000

_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]+\b")
# An object representation opens with `<` and a name (`<TimerHandle`, `<socket.socket`); what
# matters inside one is told by the tokens below, each either a bracket or a number.
_REPR_TOKENS = re.compile(r"<(?=[A-Za-z_])|>|[0-9]+(?:\.[0-9]+)?")


def cause_of(message: str) -> str:
    """`message` with what differs between lines of one cause masked: addresses anywhere, and
    numbers inside `<...>` object representations (nested ones too)."""
    message = _ADDRESS.sub("0x?", message)
    if "<" not in message:
        return message
    parts: list[str] = []
    depth = 0
    end = 0
    for token in _REPR_TOKENS.finditer(message):
        text = token.group()
        if text == "<":
            depth += 1
        elif text == ">":
            depth = max(0, depth - 1)
        elif depth:
            parts.append(message[end : token.start()])
            parts.append("#")
            end = token.end()
    parts.append(message[end:])
    return "".join(parts)


@dataclass
class _Cause:
    passed_at: float
    suppressed: int = 0


class RepeatFilter(logging.Filter):
    """Passes one WARNING or ERROR record per cause per `interval_s`, and one INFO record of
    another package's (`mode`, `faust`, `aiokafka`); the worker's own INFO lines, DEBUG and
    CRITICAL all pass. A starved event loop makes `mode` log each late timer at INFO, one line
    a second or more; the worker's own INFO lines are each about something that happened once.

    For one handler: the record that passes after an interval has its message changed.
    """

    def __init__(
        self, interval_s: float = REPEAT_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._causes: dict[tuple[str, int, str], _Cause] = {}

    @property
    def causes(self) -> int:
        """Causes remembered, at most MAX_CAUSES."""
        return len(self._causes)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO or record.levelno >= logging.CRITICAL:
            return True
        if record.levelno < logging.WARNING and _is_the_workers(record.name):
            return True
        key = (record.name, record.levelno, cause_of(str(record.msg)))
        now = self._clock()
        cause = self._causes.get(key)
        if cause is None:
            if len(self._causes) >= MAX_CAUSES:
                # The table is in the order causes last passed: the first one is the stalest.
                del self._causes[next(iter(self._causes))]
            self._causes[key] = _Cause(now)
            return True
        if now - cause.passed_at < self._interval_s:
            cause.suppressed += 1
            return False
        if cause.suppressed:
            # Appended to the template (it holds no %), so the record's arguments still fill it.
            elapsed = now - cause.passed_at
            record.msg = f"{record.msg} ({cause.suppressed} more like this in {elapsed:.0f} s)"
        del self._causes[key]
        self._causes[key] = _Cause(now)
        return True


def _is_the_workers(logger: str) -> bool:
    return logger == WORKER_LOGGER or logger.startswith(WORKER_LOGGER + ".")


def quiet_repeats(interval_s: float = REPEAT_INTERVAL_S) -> None:
    """Installs a RepeatFilter on every handler of the root logger that has none yet.

    One each: a filter shared by two handlers would count the second's copy of a record as a
    repeat.
    """
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, RepeatFilter) for existing in handler.filters):
            handler.addFilter(RepeatFilter(interval_s))
