"""The key and headers a record goes out with, and the bytes they leave its value.

Every record goes out with the key and headers of the message it answers, or, when they leave
too little room for it under the producer's limit, with what of them fits (`fit_envelope`:
headers dropped largest first, then the key shortened, traceparent dropped last), which the
record then names in `key_truncated` and `headers_dropped` (`Envelope.described`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import size_of_varint

from ..observability.tracing import TRACEPARENT
from ..observability.tracing_interface import Headers
from .records import IncomingMessage, message_headers

__all__ = [
    "ENVELOPE_DESCRIPTION_BYTES",
    "MAX_REQUEST_BYTES",
    "Envelope",
    "envelope_room",
    "fit_envelope",
    "value_room",
]

# The producer refuses a record larger than this (faust's default, set explicitly so records can
# be sized against it before they are sent).
MAX_REQUEST_BYTES = 1_000_000
# A value's length varint takes up to 5 bytes where the empty value's takes 1.
_LENGTH_VARINT_GROWTH = 4
# A key's length varint takes up to 5 bytes.
_KEY_VARINT_BYTES = 5
# How much the record's length varint and its header count varint can shrink together.
_VARINT_SHRINK = 8
# What `Envelope.described` may add to a value: 16 headers named in at most 64 characters of up
# to 8 bytes each once JSON-escaped (a lone surrogate written as \udcxx, its backslash escaped),
# their sizes, and the key's sizes.
DESCRIBED_HEADERS = 16
DESCRIBED_NAME_CHARS = 64
ENVELOPE_DESCRIPTION_BYTES = 10_000


@dataclass(frozen=True)
class Envelope:
    """The key and headers a record goes out with, when not all of the incoming message's fit.

    `key_size` is the original key's size when `key` is a prefix of it; `dropped` holds each
    header left off, as (name, value size), largest first.
    """

    key: bytes | None
    headers: Headers
    key_size: int | None = None
    dropped: tuple[tuple[str, int], ...] = ()
    dropped_bytes: int = 0

    def described(self) -> dict[str, Any]:
        """The `key_truncated` and `headers_dropped` fields that say what was left off."""
        fields: dict[str, Any] = {}
        if self.key_size is not None:
            fields["key_truncated"] = {"size": self.key_size, "kept": len(self.key or b"")}
        if self.dropped:
            fields["headers_dropped"] = {
                "count": len(self.dropped),
                "size": self.dropped_bytes,
                "headers": [
                    {"name": _shown_name(name), "size": size}
                    for name, size in self.dropped[:DESCRIBED_HEADERS]
                ],
            }
        return fields


def _shown_name(name: str) -> str:
    return name[:DESCRIBED_NAME_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")


def value_room(
    message: IncomingMessage,
    headers: Sequence[tuple[str, bytes]] | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> int:
    """Most bytes a record value may have when sent with the message's key and `headers` (by
    default the message's own).

    aiokafka refuses a record whose estimated size (batch header, record overhead, key, value,
    headers) passes the producer's maximum request size; this is what that leaves for the value.
    """
    sent: list[tuple[str, bytes | None]] = list(
        message_headers(message) if headers is None else headers
    )
    overhead = DefaultRecordBatchBuilder.estimate_size_in_bytes(message.key, b"", sent)
    return max_request_bytes - overhead - _LENGTH_VARINT_GROWTH


def envelope_room(
    key: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> int:
    """Most bytes a record value may have when sent with `key` and `headers` (as sent)."""
    overhead = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, b"", list(headers))
    return max_request_bytes - overhead - _LENGTH_VARINT_GROWTH


def fit_envelope(
    message: IncomingMessage,
    needed: int,
    sized: Callable[[Headers], Headers] = lambda headers: headers,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> Envelope | None:
    """None when a value of `needed` bytes fits with the message's own key and headers; else
    the envelope that leaves room for it, or the empty one (no key, no headers) when none does.

    `sized` gives the headers that will be sent for some incoming ones (tracing adds its own).
    What goes, in order: headers other than traceparent, largest first, as many as it takes;
    then the key is cut to a prefix (to nothing if need be); then traceparent.
    """
    key = message.key
    headers = message_headers(message)

    def room(kept_key: bytes | None, kept: Headers) -> int:
        return envelope_room(kept_key, sized(kept), max_request_bytes)

    if room(key, headers) >= needed:
        return None
    sizes = [
        len(name.encode("utf-8", "surrogatepass")) + len(value or b"") for name, value in headers
    ]
    # Traceparent last, then the largest first; index order among equals.
    order = sorted(
        range(len(headers)), key=lambda index: (headers[index][0] == TRACEPARENT, -sizes[index])
    )
    rank = {index: position for position, index in enumerate(order)}
    dropped: set[int] = set()
    kept_key = key

    def envelope() -> Envelope:
        gone = sorted(dropped, key=rank.__getitem__)
        cut = key is not None and len(kept_key or b"") < len(key)
        return Envelope(
            kept_key,
            [pair for index, pair in enumerate(headers) if index not in dropped],
            key_size=len(key) if cut and key is not None else None,
            dropped=tuple((headers[index][0], len(headers[index][1] or b"")) for index in gone),
            dropped_bytes=sum(sizes[index] for index in gone),
        )

    def fits() -> bool:
        return room(kept_key, envelope().headers) >= needed

    missing = needed - room(key, headers)
    freed = 0
    for index in order:
        if headers[index][0] == TRACEPARENT:
            break
        dropped.add(index)
        freed += _encoded_size(*headers[index])
        # Sized in full only once the headers' own encoding (and what the record's length and
        # header count varints may shrink by) would make up the difference.
        if freed + _VARINT_SHRINK >= missing and fits():
            return envelope()
    if key:
        spare = room(b"", envelope().headers) - needed - _KEY_VARINT_BYTES
        kept_key = key[: max(0, spare)]
        if fits():
            return envelope()
    for index in order:
        if index not in dropped:
            dropped.add(index)
            if fits():
                return envelope()
    return envelope()


def _encoded_size(name: str, value: bytes | None) -> int:
    """Bytes a header takes in a record: its name and value, each after its length varint."""
    encoded = name.encode("utf-8", "surrogatepass")
    value_size = -1 if value is None else len(value)
    return (
        size_of_varint(len(encoded)) + len(encoded) + size_of_varint(value_size) + len(value or b"")
    )
