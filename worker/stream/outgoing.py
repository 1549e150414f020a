"""The record that answers one event: an answer, tags or a dead letter, sized to go out.

Every record fits the producer's limit with the key and headers it goes out with
(`envelope.fit_envelope` drops what of them leaves no room, and the record says so). A dead
letter is built whatever the message holds: should building the normal one raise, a minimal one
(source, code, reason; no payload, key or headers) stands in, so `OutgoingRecords.dead_letter`
never raises.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import __version__
from ..errors import ErrorCode
from ..events import (
    dead_letter_bytes,
    dead_letter_event,
    minimal_dead_letter,
    shortest_dead_letter,
    to_bytes,
)
from ..observability.tracing import NO_TRACING
from ..observability.tracing_interface import Tracing
from .envelope import (
    ENVELOPE_DESCRIPTION_BYTES,
    MAX_REQUEST_BYTES,
    Envelope,
    envelope_room,
    fit_envelope,
    value_room,
)
from .records import IncomingMessage, message_headers

__all__ = ["Outgoing", "OutgoingRecords"]

log = logging.getLogger(__name__)

# How much of an unexpected exception's message a dead letter quotes.
_QUOTED_ERROR_CHARS = 1_000
_T = TypeVar("_T")


@dataclass(frozen=True)
class Outgoing:
    """One record to send in reply to an event: an answer, tags, or a dead letter.

    It goes out with `envelope`'s key and headers, or the message's own when that is None.
    """

    topic: str
    value: bytes
    event_time: float
    dead_letter_reason: ErrorCode | None = None
    queue_s: float = 0.0
    envelope: Envelope | None = None


class OutgoingRecords:
    """Builds the records that answer messages, each sized for the headers it goes out with
    (`tracing`'s: it adds its own to every record)."""

    def __init__(
        self, dead_letter_topic: str, max_json_values: int, tracing: Tracing = NO_TRACING
    ) -> None:
        self.dead_letter_topic = dead_letter_topic
        self._max_json_values = max_json_values
        self._tracing = tracing

    def fitting(
        self,
        message: IncomingMessage,
        topic: str,
        event: dict[str, Any],
        event_time: float,
        queue_s: float,
    ) -> Outgoing:
        """The record for `event`, keeping what of the key and headers leaves room for it, or
        an answer_too_large dead letter when even no key and no headers leave enough."""
        value = to_bytes(event)
        sized = self._tracing.sized_headers
        envelope = fit_envelope(message, len(value), sized)
        if envelope is None:
            return Outgoing(topic, value, event_time, queue_s=queue_s)
        # Saying what was left off takes bytes too; a few rounds settle how many.
        for _ in range(3):
            described = to_bytes({**event, **envelope.described()})
            if len(described) <= self._room(message, envelope):
                return Outgoing(topic, described, event_time, queue_s=queue_s, envelope=envelope)
            envelope = fit_envelope(message, len(described), sized) or envelope
        room = self._room(message, None)
        reason = (
            f"the {topic} record would be {len(value):,} bytes, over the {room:,} a record may "
            f"carry with this event's key and headers, and over what it may carry with none "
            f"(the producer's maximum request size is {MAX_REQUEST_BYTES:,} bytes); send less "
            "metadata or ask for fewer answers"
        )
        return self.dead_letter(message, event_time, ErrorCode.ANSWER_TOO_LARGE, reason)

    def dead_letter(
        self, message: IncomingMessage, event_time: float, code: ErrorCode, reason: str
    ) -> Outgoing:
        """The dead-letter record for `message`, on the dead-letter topic; never raises.

        It goes out with the message's key and headers, or with what of them leaves room for
        its shortest form (`fit_envelope`), saying what was left off. Should building it raise
        all the same, a minimal dead letter (source, code, reason; no payload, key or headers)
        stands in.
        """
        try:
            return self._dead_letter(message, event_time, code, reason)
        except Exception as error:
            log.error("building a dead letter failed; sending a minimal one", exc_info=error)
            return self._minimal_dead_letter(message, event_time, code, reason, error)

    def internal_error(
        self, message: IncomingMessage, event_time: float, error: Exception
    ) -> Outgoing:
        """The `internal_error` dead letter of an event whose handling raised `error`; logged
        once per exception type in each interval of the log's repeat filter."""
        kind = type(error).__qualname__
        # The type goes into the template so that the repeat filter counts each cause apart.
        log.error(
            "handling an event raised " + kind.replace("%", "%%") + "; it goes to the "
            "dead-letter topic as internal_error (%s[%s]@%s)",
            _attempt(lambda: message.topic, "?"),
            _attempt(lambda: str(message.partition), "?"),
            _attempt(lambda: str(message.offset), "?"),
            exc_info=error,
        )
        text = _attempt(lambda: str(error), "(its message could not be read)")
        reason = (
            f"handling the event raised {kind}: {text[:_QUOTED_ERROR_CHARS]} "
            "(not a problem with the event itself as far as the worker can tell: please report it)"
        )
        return self.dead_letter(message, event_time, ErrorCode.INTERNAL_ERROR, reason)

    def _dead_letter(
        self, message: IncomingMessage, event_time: float, code: ErrorCode, reason: str
    ) -> Outgoing:
        log.debug(
            "dead letter for %s[%d]@%d: %s",
            message.topic,
            message.partition,
            message.offset,
            code.value,
        )
        record = dead_letter_event(
            message.value,
            message.topic,
            message.partition,
            message.offset,
            code,
            reason,
            worker_version=__version__,
            now_ms=int(time.time() * 1000),
            max_json_values=self._max_json_values,
        )
        shortest = len(to_bytes(shortest_dead_letter(record)))
        envelope = fit_envelope(
            message, shortest + ENVELOPE_DESCRIPTION_BYTES, self._tracing.sized_headers
        )
        if envelope is not None:
            record.update(envelope.described())
        value = dead_letter_bytes(record, self._room(message, envelope))
        return Outgoing(
            self.dead_letter_topic, value, event_time, dead_letter_reason=code, envelope=envelope
        )

    def _minimal_dead_letter(
        self,
        message: IncomingMessage,
        event_time: float,
        code: ErrorCode,
        reason: str,
        error: Exception,
    ) -> Outgoing:
        """A dead letter made of little but numbers, sent with an empty key and no headers."""
        key_size = _attempt(lambda: len(message.key or b""), 0)
        no_headers: list[tuple[str, bytes]] = []
        headers = _attempt(lambda: message_headers(message), no_headers)
        none_dropped: tuple[tuple[str, int], ...] = ()
        dropped = _attempt(
            lambda: tuple((str(name), len(value or b"")) for name, value in headers), none_dropped
        )
        envelope = Envelope(
            b"" if key_size else None,
            [],
            key_size=key_size or None,
            # Named so that delivery sends none of them, not even as tracing writes them anew.
            dropped=dropped,
            # Names and values, as fit_envelope counts them.
            dropped_bytes=_attempt(
                lambda: sum(
                    len(str(name).encode("utf-8", "surrogatepass")) + len(value or b"")
                    for name, value in headers
                ),
                0,
            ),
        )
        letter = minimal_dead_letter(
            _attempt(lambda: str(message.topic), ""),
            _attempt(lambda: int(message.partition), 0),
            _attempt(lambda: int(message.offset), 0),
            code,
            reason,
            error,
            payload_size=_attempt(lambda: len(message.value or b""), 0),
            worker_version=__version__,
            now_ms=int(time.time() * 1000),
            key_size=key_size,
            headers_dropped=len(dropped),
            headers_size=envelope.dropped_bytes,
        )
        return Outgoing(
            self.dead_letter_topic,
            to_bytes(letter),
            event_time,
            dead_letter_reason=code,
            envelope=envelope,
        )

    def _room(self, message: IncomingMessage, envelope: Envelope | None) -> int:
        """Most bytes a value may have sent with `envelope` (None: the message's own)."""
        if envelope is None:
            return value_room(message, self._tracing.sized_headers(message_headers(message)))
        return envelope_room(envelope.key, self._tracing.sized_headers(envelope.headers))


def _attempt(read: Callable[[], _T], fallback: _T) -> _T:
    """What `read` returns, or `fallback` when it raises: for the builders that must not."""
    try:
        return read()
    except Exception:
        return fallback
