"""Dead letters: the record of an event the worker gives up on, and how it is cut to fit.

`dead_letter_event` carries the failed message's value; `minimal_dead_letter` stands in when
building that one failed, and carries little but numbers. Both lay out their fields through
`_letter`, so the two keep one shape. `dead_letter_bytes` cuts a dead letter's payload until the
record fits the producer's limit, never below `shortest_dead_letter`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson

from ..errors import ErrorCode
from .codec import (
    DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_MAX_JSON_VALUES,
    encodable_text,
    is_encodable,
    json_values_over,
    nesting_exceeds,
    string_bytes,
    to_bytes,
)
from .timestamps import timestamp

# When even an empty payload does not fit, the reason is cut to this and the id left out.
_SHORT_REASON_CHARS = 200
# A minimal dead letter's topic is cut to this: Kafka's own limit is 249 characters.
_TOPIC_CHARS = 255
# Kafka's partitions and offsets are signed 32- and 64-bit integers, sizes fit in 64 bits.
_LARGEST_COUNT = 2**63 - 1


def dead_letter_event(
    value: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    code: ErrorCode,
    message: str,
    worker_version: str,
    now_ms: int,
    max_json_values: int = DEFAULT_MAX_JSON_VALUES,
) -> dict[str, Any]:
    """The dead-letter event (dead-letter.schema.json) for the message `value` that failed.

    Its `id` is read from `value` only when that holds at most `max_json_values` values: one
    refused for holding more is not decoded to build its dead letter either.
    """
    raw = value or b""
    text: str | None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    payload = {
        "payload": base64.b64encode(raw).decode("ascii") if text is None else text,
        "payload_encoding": "base64" if text is None else "utf-8",
    }
    event_id = None
    if text is not None and json_values_over(raw, max_json_values) is None:
        event_id = _readable_id(text)
    return _letter(
        payload, topic, partition, offset, code, message, event_id, worker_version, now_ms
    )


def minimal_dead_letter(
    topic: str,
    partition: int,
    offset: int,
    code: ErrorCode,
    reason: str,
    failure: BaseException,
    payload_size: int,
    worker_version: str,
    now_ms: int,
    key_size: int = 0,
    headers_dropped: int = 0,
    headers_size: int = 0,
) -> dict[str, Any]:
    """The dead letter that stands in when building the message's `dead_letter_event` (or its
    record) raised `failure`: little but numbers, so that it can be built whatever went wrong.

    No payload (`payload_size` says how many bytes the value had) and no id; the source, with
    the topic cut to 255 characters ("?" when empty) and partition and offset kept within 0 and
    2**63 - 1; the code; the reason cut to 200 characters, then the failure's type. A key of
    `key_size` bytes sent as none of it, and `headers_dropped` headers of `headers_size` bytes
    (names and values) left off, go into `key_truncated` and `headers_dropped`, counted, not
    named: the names may be what could not be written.

    For any values of these types (and `now_ms` a clock's reading) it never raises, `to_bytes`
    never raises on what it returns, and that takes a few kB whatever their size.
    """
    name = type(failure).__qualname__[:_SHORT_REASON_CHARS]
    letter = _letter(
        _emptied_payload("utf-8", payload_size),
        encodable_text(topic[:_TOPIC_CHARS])[:_TOPIC_CHARS] or "?",
        _count(partition),
        _count(offset),
        code,
        f"{reason[:_SHORT_REASON_CHARS]} (its full dead letter could not be built: {name})",
        None,
        worker_version,
        now_ms,
    )
    if key_size > 0:
        letter["key_truncated"] = {"size": _count(key_size), "kept": 0}
    if headers_dropped > 0:
        letter["headers_dropped"] = {
            "count": _count(headers_dropped),
            "size": _count(headers_size),
            "headers": [],
        }
    return letter


def _letter(
    payload: dict[str, Any],
    topic: str,
    partition: int,
    offset: int,
    code: ErrorCode,
    message: str,
    event_id: str | None,
    worker_version: str,
    now_ms: int,
) -> dict[str, Any]:
    """The fields every dead letter has, in the order consumers read them; `payload` holds the
    `payload...` fields."""
    letter: dict[str, Any] = {
        **payload,
        "source": {"topic": encodable_text(topic), "partition": partition, "offset": offset},
        # A message quoting input (an exception's, say) may hold an unpaired surrogate.
        "error": {"code": code, "message": encodable_text(message)},
    }
    if event_id is not None:
        letter["id"] = event_id
    letter["failed_at"] = timestamp(now_ms)
    letter["worker_version"] = worker_version
    return letter


def _emptied_payload(encoding: str, size: int) -> dict[str, Any]:
    """The `payload...` fields of a dead letter whose payload of `size` bytes was left out."""
    return {
        "payload": "",
        "payload_encoding": encoding,
        "payload_truncated": True,
        "payload_size": _count(size),
    }


def _count(number: int) -> int:
    """`number` within what the schema allows (>= 0) and JSON encodes in a few bytes."""
    return min(max(number, 0), _LARGEST_COUNT)


def _readable_id(text: str) -> str | None:
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        # What orjson refuses and the standard library may read (NaN, say), unless it is too
        # deep for that recursive decoder.
        if nesting_exceeds(text.encode("utf-8"), DEFAULT_MAX_JSON_DEPTH):
            return None
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):
            return None
    if not isinstance(document, dict):
        return None
    event_id = document.get("id")
    if isinstance(event_id, str) and event_id and is_encodable(event_id):
        return event_id
    return None


def shortest_dead_letter(dead_letter: dict[str, Any]) -> dict[str, Any]:
    """`dead_letter` cut as far as `dead_letter_bytes` ever cuts it: payload empty (and marked
    truncated), no id, the reason shortened. Its size is the least room a dead letter needs."""
    fitted = _without_payload(dead_letter)
    fitted.pop("id", None)
    message = fitted["error"]["message"]
    fitted["error"] = {**fitted["error"], "message": message[:_SHORT_REASON_CHARS]}
    return fitted


def _without_payload(dead_letter: dict[str, Any]) -> dict[str, Any]:
    payload: str = dead_letter["payload"]
    encoding: str = dead_letter["payload_encoding"]
    original_size = (
        len(payload.encode("utf-8")) if encoding == "utf-8" else len(base64.b64decode(payload))
    )
    fitted = _emptied_payload(encoding, original_size)
    fitted.update(
        (key, item)
        for key, item in dead_letter.items()
        if key not in ("payload", "payload_encoding")
    )
    return fitted


def dead_letter_bytes(dead_letter: dict[str, Any], max_bytes: int) -> bytes:
    """`dead_letter` as a record value of at most `max_bytes`, its payload cut to fit.

    A cut payload is a prefix of the original (whole characters, or whole base64 quads), marked
    with `payload_truncated` and the original value's size in `payload_size`; source topic,
    partition and offset always stay, so the original can be read again from the topic. Raises
    ValueError when even `shortest_dead_letter` is over `max_bytes`: the caller makes room (a
    shorter key, fewer headers) before it asks.
    """
    encoded = to_bytes(dead_letter)
    if len(encoded) <= max_bytes:
        return encoded
    payload: str = dead_letter["payload"]
    is_text = dead_letter["payload_encoding"] == "utf-8"
    fitted = _without_payload(dead_letter)
    room = max_bytes - len(to_bytes(fitted))
    if room < 0:
        fitted = shortest_dead_letter(dead_letter)
        room = max_bytes - len(to_bytes(fitted))
        if room < 0:
            raise ValueError(f"a dead letter cannot fit in {max_bytes} bytes")
    if is_text:
        # Escaping makes the encoded size grow with the prefix, but not in step with it.
        low, high = 0, len(payload)
        while low < high:
            middle = (low + high + 1) // 2
            if string_bytes(payload[:middle]) <= room:
                low = middle
            else:
                high = middle - 1
        fitted["payload"] = payload[:low]
    else:
        fitted["payload"] = payload[: room // 4 * 4]
    return to_bytes(fitted)
