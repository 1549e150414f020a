"""Log lines that cannot be forged: whatever a record's values hold, one record is one line."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider

from worker.observability.logs import (
    TRACEBACK_PREFIX,
    JsonFormatter,
    TextFormatter,
    bind_event,
    escape,
    event_scope,
)
from worker.observability.tracing_otel import OtelTracing

LOGGER = "tests.logs.forgery"
LEVELS = "DEBUG|INFO|WARNING|ERROR|CRITICAL"
# What a forged record would look like at the start of a line, in either format.
FORGED_TEXT = re.compile(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} (?:{LEVELS}) forged\b")
RECORD_LINE = re.compile(
    rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} (?:WARNING|ERROR) {re.escape(LOGGER)} "
)
# Every character some reader splits lines on, and the other controls.
BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
FORGERY = "2026-12-02 10:00:00,000 CRITICAL forged owned"

hostile_text = st.lists(
    st.one_of(
        st.text(max_size=20),
        st.sampled_from(BREAKS),
        st.just(FORGERY),
        st.just('{"level": "CRITICAL", "logger": "forged"}'),
        st.characters(codec="utf-8", categories=["Cc", "Cf", "Zl", "Zp", "Cs"]).map(str),
    ),
    max_size=8,
).map("".join)


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream, handler


@pytest.fixture
def restore_logger() -> Iterator[None]:
    yield
    logger = logging.getLogger(LOGGER)
    logger.handlers.clear()
    logger.propagate = True


def formatted_lines(
    formatter: logging.Formatter, message: str, header: str, event_id: str
) -> tuple[int, list[str]]:
    """How many records `log_records` wrote, and the lines `formatter` made of them: broken at
    "\n" alone, as str.splitlines breaks on every separator in BREAKS, so none is left raw."""
    logger, stream, handler = capture(formatter)
    try:
        written = log_records(logger, message, header, event_id)
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    lines = output.splitlines()
    assert lines == output.rstrip("\n").split("\n")
    return written, lines


def log_records(logger: logging.Logger, message: str, header: str, event_id: str) -> int:
    """Logs what a worker would about one event: an id, a header value, an error quoting input;
    returns how many records it wrote."""
    with event_scope():
        bind_event(event_id=event_id)
        logger.warning("dead letter for %s: reply topic %r", event_id, header)
        try:
            try:
                raise KeyError(header)
            except KeyError as inner:
                raise ValueError(f"cannot read {message}") from inner
        except ValueError:
            logger.exception("event %s failed: %s", event_id, message)
    return 2


@settings(max_examples=300, deadline=None)
@given(message=hostile_text, header=hostile_text, event_id=hostile_text)
def test_a_text_record_is_one_line_plus_prefixed_traceback_lines(
    message: str, header: str, event_id: str
) -> None:
    written, lines = formatted_lines(TextFormatter(), message, header, event_id)
    records = [line for line in lines if not line.startswith(TRACEBACK_PREFIX)]
    assert len(records) == written
    assert all(RECORD_LINE.match(line) for line in records), records
    assert not any(FORGED_TEXT.match(line) for line in lines)
    # The traceback is there, readable, its last line the exception on one line.
    traceback_lines = [line for line in lines if line.startswith(TRACEBACK_PREFIX)]
    assert traceback_lines[0] == TRACEBACK_PREFIX + "Traceback (most recent call last):"
    assert traceback_lines[-1] == TRACEBACK_PREFIX + "ValueError: " + escape(
        f"cannot read {message}"
    )
    assert records[0].endswith(f"[event_id={escape(event_id)}]")


@settings(max_examples=300, deadline=None)
@given(message=hostile_text, header=hostile_text, event_id=hostile_text)
def test_a_json_record_is_one_line_that_decodes_to_the_values_given(
    message: str, header: str, event_id: str
) -> None:
    written, lines = formatted_lines(JsonFormatter(), message, header, event_id)
    assert len(lines) == written
    first, second = map(json.loads, lines)
    assert first["message"] == f"dead letter for {event_id}: reply topic {header!r}"
    assert second["message"] == f"event {event_id} failed: {message}"
    assert first["event_id"] == second["event_id"] == event_id
    assert second["logger"] == LOGGER and second["level"] == "ERROR"


@pytest.mark.parametrize("formatter", [TextFormatter, JsonFormatter])
def test_a_tracestate_warning_is_one_line_with_the_events_id(
    formatter: type[logging.Formatter], restore_logger: None
) -> None:
    # The propagator warns about a malformed tracestate, quoting it, while the headers are read:
    # before the event's id is known. The warning is held until the id is bound.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter())
    root = logging.getLogger()
    root.addHandler(handler)
    tracing = OtelTracing(TracerProvider())
    record = SimpleNamespace(topic="questions", partition=0, offset=3, key=None)
    headers = [
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", f"a=1\n{FORGERY}\u2028{FORGERY}".encode()),
    ]
    try:
        with tracing.event(record, headers, "group") as trace:
            bind_event(event_id="q-forge")
            trace.finish("answers", None)
    finally:
        root.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    warned = [line for line in lines if "opentelemetry" in line]
    assert len(warned) == 1, lines
    assert not any(FORGED_TEXT.match(line) or line.startswith('{"level') for line in lines)
    if formatter is JsonFormatter:
        [warning] = map(json.loads, warned)
        assert warning["event_id"] == "q-forge" and "a=1\n2026-12-02" in warning["message"]
    else:
        # The propagator quotes the member up to the first comma.
        assert warned[0].endswith("event_id=q-forge]") and "a=1\\n2026-12-02" in warned[0]


def test_escape_leaves_ordinary_text_alone_and_names_line_breaks() -> None:
    assert escape("plain text, tabs\tand ünïcode") == "plain text, tabs\tand ünïcode"
    assert escape("a\nb\rc\x85d\u2028e\u2029f\x1bg") == "a\\nb\\rc\\x85d\\u2028e\\u2029f\\x1bg"
