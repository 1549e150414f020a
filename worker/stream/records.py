"""A consumed message as the worker reads it: its fields, its headers, and when it was read."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ..observability.tracing_interface import ConsumedRecord
from .header_keys import readable_header_key

__all__ = ["IncomingMessage", "ReadAt", "header", "header_pairs", "message_headers"]


class IncomingMessage(ConsumedRecord, Protocol):
    """The parts of a consumed Kafka message (faust's `Message`) that the worker reads: what a
    consumer span describes, and the value, timestamp and headers."""

    @property
    def value(self) -> bytes | None: ...

    @property
    def timestamp(self) -> float | None: ...

    @property
    def headers(self) -> Any: ...


@dataclass(frozen=True)
class ReadAt:
    """When the worker read a message, on both clocks it needs: the wall clock for event times
    and what goes into records, the monotonic one for durations (the batcher's stages, the age
    of what is in flight)."""

    wall: float
    monotonic: float

    @classmethod
    def now(cls) -> ReadAt:
        return cls(time.time(), time.monotonic())


def header_pairs(message: IncomingMessage) -> Iterable[tuple[Any, Any]]:
    """A message's headers as (key, value) pairs as they came, whichever form faust hands them
    over in (a dict, a list of pairs, or None)."""
    headers = message.headers
    return headers.items() if isinstance(headers, dict) else headers or ()


def message_headers(message: IncomingMessage) -> list[tuple[str, bytes]]:
    """A message's headers as a list of pairs.

    A key that was not UTF-8 on the wire comes escaped (`header_keys.readable_header_key`), so
    that echoing, sizing and logging the headers never meets it undecoded.
    """
    return [(readable_header_key(key), value) for key, value in header_pairs(message)]


def header(message: IncomingMessage, name: str) -> str | None:
    """The last value of a message header, as text (bytes that are not UTF-8 as `\\xNN`
    escapes, so a value that was sent is never taken for one that was not); None when absent."""
    found = None
    for key, value in message_headers(message):
        if key == name and value is not None:
            found = value
    return None if found is None else found.decode("utf-8", "backslashreplace")
