"""Traces through the stream: the hooks the worker calls, and the no-op used when tracing is off.

The consumer, the batcher and delivery call a `Tracing` and never OpenTelemetry itself, so the
worker imports and runs without the `tracing` extra. With `--tracing otlp` the implementation is
`worker.observability.tracing_otel.OtelTracing`; a trace then looks like this:

    process {topic} (CONSUMER, parent: the event's traceparent)
    │   span events, each with qa.duration_ms: tokenize, queue wait (until the batch holding
    │   its last window started), decode
    └── send {topic} (PRODUCER)     its context goes out in the answer's traceparent
    inference batch (a root span of its own: one batch serves many traces), linked to the
                    process span of every event it holds a window of

Every event is handled in its own asyncio task, so "the current event" is a context variable:
the batcher's hooks, called in that task, find it without being handed it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

from ..config import Settings, describe
from ..errors import ConfigError, ErrorCode
from .logs import bind_event, event_scope
from .tracing_interface import ConsumedRecord, EventTrace, Headers, Tracing

__all__ = ["NO_TRACING", "TRACEPARENT", "NoTracing", "build_tracing", "traceparent_ids"]

TRACEPARENT = "traceparent"
# W3C trace context, version 00: version-traceid-parentid-flags, lowercase hex.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16


def traceparent_ids(headers: Headers) -> tuple[str, str] | None:
    """(trace id, parent span id) of a valid W3C `traceparent` header, else None."""
    value = next((v for k, v in headers if k == TRACEPARENT and v is not None), None)
    if value is None:
        return None
    try:
        match = _TRACEPARENT.fullmatch(value.decode("ascii").strip())
    except UnicodeDecodeError:
        return None
    if match is None or match[1] == "ff" or match[2] == _INVALID_TRACE_ID:
        return None
    if match[3] == _INVALID_SPAN_ID:
        return None
    return match[2], match[3]


class _NoEventTrace:
    def finish(self, topic: str, dead_letter_reason: ErrorCode | None) -> None:
        pass


class NoTracing:
    """Tracing off: no spans; headers go out as they came in, and log lines still carry the
    trace id of an event that arrived with one."""

    _event_trace = _NoEventTrace()

    @contextmanager
    def event(self, record: ConsumedRecord, headers: Headers, group: str) -> Iterator[EventTrace]:
        with event_scope():
            ids = traceparent_ids(headers)
            if ids is not None:
                bind_event(trace_id=ids[0])
            yield self._event_trace

    def stage(self, name: str) -> AbstractContextManager[None]:
        return nullcontext()

    def interval(self, name: str, start_ns: int, end_ns: int) -> None:
        pass

    def produce(self, topic: str) -> AbstractContextManager[None]:
        return nullcontext()

    def link(self) -> object | None:
        return None

    def batch(
        self, links: Sequence[object], windows: int, padded_tokens: int, start_ns: int, end_ns: int
    ) -> None:
        pass

    def outgoing_headers(self, headers: Headers) -> Headers:
        return headers

    def sized_headers(self, headers: Headers) -> Headers:
        return headers

    def shutdown(self, timeout_s: float = 30.0) -> None:
        pass


NO_TRACING: Tracing = NoTracing()


def build_tracing(settings: Settings) -> Tracing:
    """The tracer `settings.tracing` asks for; OTLP is configured by the OTEL_ variables."""
    if settings.tracing == "off":
        return NO_TRACING
    try:
        from .tracing_otel import otlp_tracing
    except ImportError as error:
        raise ConfigError(
            f"{describe('tracing')} {settings.tracing} needs OpenTelemetry ({error.name} is not "
            "installed): pip install 'kafka-qa-worker[tracing]'"
        ) from None
    return otlp_tracing()
