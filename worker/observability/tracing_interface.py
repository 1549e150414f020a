"""The `Tracing` interface: what the worker tells a tracer about each event and batch.

`tracing` (the no-op, and choosing a tracer from the settings) and `tracing_otel` (the
OpenTelemetry one) both implement it; the stream, the batcher and delivery are written against
it alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from ..errors import ErrorCode

__all__ = ["ConsumedRecord", "EventTrace", "Headers", "Tracing"]

Headers = list[tuple[str, bytes]]


class ConsumedRecord(Protocol):
    """The parts of a consumed message a consumer span describes."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


class EventTrace(Protocol):
    """The trace of one event being handled; told how it ended."""

    def finish(self, topic: str, dead_letter_reason: ErrorCode | None) -> None: ...


class Tracing(Protocol):
    """What the worker tells a tracer. Every hook is cheap and never raises into the stream."""

    def event(
        self, record: ConsumedRecord, headers: Headers, group: str
    ) -> AbstractContextManager[EventTrace]:
        """The event's consumer span, current while the block runs (in the event's task)."""
        ...

    def stage(self, name: str) -> AbstractContextManager[None]:
        """Records one step of the current event's handling, timed by the block."""
        ...

    def interval(self, name: str, start_ns: int, end_ns: int) -> None:
        """Records a step of the current event timed elsewhere (epoch nanoseconds)."""
        ...

    def produce(self, topic: str) -> AbstractContextManager[None]:
        """The producer span of the event's outgoing record; `outgoing_headers` carry it."""
        ...

    def link(self) -> object | None:
        """The current event, for `batch`; None outside of an event or when off."""
        ...

    def batch(
        self, links: Sequence[object], windows: int, padded_tokens: int, start_ns: int, end_ns: int
    ) -> None:
        """One inference batch ran, for the events `links` came from."""
        ...

    def outgoing_headers(self, headers: Headers) -> Headers:
        """The incoming headers with the current trace context in place of the incoming one."""
        ...

    def sized_headers(self, headers: Headers) -> Headers:
        """Headers at least as large as `outgoing_headers` will send for an event that came in
        with `headers`: known before its producer span exists, so its records can be sized."""
        ...

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Exports what is still buffered, returning within `timeout_s` whatever the collector
        does (what is not exported by then is dropped, and counted in the log); hooks called
        afterwards do nothing."""
        ...
