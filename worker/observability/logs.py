"""Log lines as text or as JSON objects, with the ids of the event a line is about.

Every event is handled in its own asyncio task, so a context variable set while handling it
(`bind_event`) holds for exactly the log lines that task writes: the event's id, and its trace
and span ids when it carries a trace. `--log-format json` writes one object per line:

    {"time": "2026-12-02T01:02:03.456Z", "level": "WARNING", "logger": "worker.stream.delivery",
     "message": "...", "event_id": "q1", "trace_id": "4bf9...", "span_id": "00f0..."}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["JsonFormatter", "bind_event", "configure_logging", "event_fields", "event_scope"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_event_fields: ContextVar[Mapping[str, str] | None] = ContextVar(
    "qa_worker_event_log_fields", default=None
)


@contextmanager
def event_scope() -> Iterator[None]:
    """Fields bound inside the block are gone when it ends, even where it ran in no task of its
    own (a caller's thread or task handling events one after another)."""
    token = _event_fields.set(None)
    try:
        yield
    finally:
        _event_fields.reset(token)


def bind_event(**fields: str) -> None:
    """Adds fields (event_id, trace_id, span_id) to every later log line of this task."""
    _event_fields.set({**event_fields(), **fields})


def event_fields() -> Mapping[str, str]:
    """The fields bound for the event this task is handling; empty outside of one."""
    return _event_fields.get() or {}


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
        return json.dumps(line, ensure_ascii=False)


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """The root logger writes `text` or `json` lines to stderr (replacing its handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
