"""Log lines as text or as JSON objects, with the ids of the event a line is about.

Every event is handled in its own asyncio task, so a context variable set while handling it
(`bind_event`) holds for exactly the log lines that task writes: the event's id, and its trace
and span ids when it carries a trace. `--log-format json` writes one object per line:

    {"time": "2026-12-02T01:02:03.456Z", "level": "WARNING", "logger": "worker.stream.delivery",
     "message": "...", "event_id": "q1", "trace_id": "4bf9...", "span_id": "00f0..."}

Text lines end with the same fields, `[event_id=q1 trace_id=4bf9...]`, when there are any.

One record is one line, in either format, whatever the values in it (ids, header values, topic
names, error messages quoting an event) contain: both formatters escape line breaks and other
control characters (`\\n`, `\\x85`, `\\u2028`, ...) by construction, not each call site. A text
traceback keeps one frame per line, each line starting with `TRACEBACK_PREFIX` so that none can
pass for a record of its own, and its exception messages escaped like the message.

An event's headers are read before its id is known (its value is decoded later), so what a
library logs while reading them (`hold_logs`) is held back and logged when the event's scope
ends, with the event's fields.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = [
    "TRACEBACK_PREFIX",
    "JsonFormatter",
    "TextFormatter",
    "bind_event",
    "configure_logging",
    "escape",
    "event_fields",
    "event_scope",
    "hold_logs",
    "hold_logs_of",
]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# What every line of a text traceback starts with: no record line does.
TRACEBACK_PREFIX = "  | "

# Every character some reader takes for a line break, and the other C0 and C1 controls (a
# terminal would act on them); a tab stays a tab.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r"}
# Left raw by json.dumps(ensure_ascii=False), yet line breaks to str.splitlines and others.
_JSON_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})

_event_fields: ContextVar[Mapping[str, str] | None] = ContextVar(
    "qa_worker_event_log_fields", default=None
)
# Records held back in the current event's scope while `hold_logs` is active, else None.
_held: ContextVar[list[logging.LogRecord] | None] = ContextVar("qa_worker_held_logs", default=None)
_holding: ContextVar[bool] = ContextVar("qa_worker_holding_logs", default=False)


def escape(text: str) -> str:
    """`text` on one line: line breaks and control characters as backslash escapes."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    )


@contextmanager
def event_scope() -> Iterator[None]:
    """Fields bound inside the block are gone when it ends, even where it ran in no task of its
    own (a caller's thread or task handling events one after another). Records held back in it
    (`hold_logs`) are logged as it ends, with its fields."""
    token = _event_fields.set(None)
    held: list[logging.LogRecord] = []
    held_token = _held.set(held)
    try:
        yield
    finally:
        _held.reset(held_token)
        for record in held:
            logging.getLogger(record.name).handle(record)
        _event_fields.reset(token)


@contextmanager
def hold_logs() -> Iterator[None]:
    """Inside the current event's scope, records of the loggers `hold_logs_of` named are held
    until the scope ends; outside of one, they are logged as usual."""
    token = _holding.set(True)
    try:
        yield
    finally:
        _holding.reset(token)


class _HoldFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        held = _held.get()
        if held is None or not _holding.get():
            return True
        held.append(record)
        return False


_HOLD = _HoldFilter()


def hold_logs_of(prefix: str) -> None:
    """Makes `hold_logs` hold the records of every logger created so far under `prefix` (a
    library's loggers exist once its modules are imported)."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        under = name == prefix or name.startswith(prefix + ".")
        if under and isinstance(logger, logging.Logger) and _HOLD not in logger.filters:
            logger.addFilter(_HOLD)


def bind_event(**fields: str) -> None:
    """Adds fields (event_id, trace_id, span_id) to every later log line of this task."""
    _event_fields.set({**event_fields(), **fields})


def event_fields() -> Mapping[str, str]:
    """The fields bound for the event this task is handling; empty outside of one."""
    return _event_fields.get() or {}


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT` with the message escaped, the event's fields, and prefixed tracebacks."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        # Not logging's own: it would reuse a traceback another formatter cached on the record.
        record.message = escape(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        fields = event_fields()
        if fields:
            line += " [" + " ".join(f"{k}={escape(v)}" for k, v in fields.items()) + "]"
        if record.exc_info and record.exc_info[1] is not None:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + _prefixed(record.exc_text)
        if record.stack_info:
            line += "\n" + _prefixed(record.stack_info)
        return line

    def formatException(self, ei: Any) -> str:
        lines: list[str] = []
        for chunk in traceback.TracebackException(*ei).format():
            # Frames, source lines and the chain's separators start with a space, a newline or
            # "Traceback"; anything else is an exception's message (or a note): one line.
            if chunk.startswith((" ", "\n", "Traceback")):
                lines.extend(chunk.removesuffix("\n").split("\n"))
            else:
                lines.append(chunk.removesuffix("\n"))
        return "\n".join(TRACEBACK_PREFIX + escape(line) for line in lines)


def _prefixed(text: str) -> str:
    return "\n".join(TRACEBACK_PREFIX + escape(line) for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ms), level, logger, message, the event's ids."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **event_fields(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False).translate(_JSON_LINE_BREAKS)


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """The root logger writes `text` or `json` lines to stderr (replacing its handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
