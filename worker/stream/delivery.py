"""Getting an outgoing record to the broker: headers, reply routing, and sending until acked.

Every record goes out with the key and headers of the message it answers, or, when they leave
too little room for it under the producer's limit, with what of them fits (`fit_envelope`:
headers dropped largest first, then the key shortened, traceparent dropped last), which the
record then names in `key_truncated` and `headers_dropped`. A question may ask for
its answer on another topic (`reply_to`, or the `reply-to` header), which is allowed only when
the topic matches one of the configured patterns.

A send that fails is judged by what can still succeed (`judge`):
- an error aiokafka marks retriable (a lost connection, a leader moving), or a send that timed
  out, is retried with backoff while the event stays in flight, so its offset is not committed;
- an error that only this event's record meets (an answer too large, a reply topic that is
  invalid, unknown or not writable) turns the event into a dead letter with its own code;
- a refusal of the record itself, by its Kafka error code (INVALID_RECORD, CORRUPT_MESSAGE:
  `answer_refused`; MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE: `answer_too_large`), is first
  confirmed by sending the record again in a batch of its own: the broker refuses whole batches,
  so an answer that shared a batch with the refused one is delivered, and only the record that
  is refused alone becomes a dead letter, whose reason names the broker's error;
- an error no event can get past (a configured topic refusing writes, a dead letter refused,
  alone too) raises `DeliveryError`, which names the setting: the worker must stop, committing
  nothing that was not delivered.

A reply topic is asked about before the producer ever sees it (`TopicDirectory.refusal`, a
metadata request that does not let the broker create the topic): one the broker does not have
makes the event a `reply_topic_unknown` dead letter, and the producer never tracks it. The reply
topics found to exist are kept in `KnownTopics`, least recently used first, at most
`REPLY_TOPICS_KNOWN`; one that falls out is forgotten by the producer too, so what the worker
keeps for reply topics is bounded however many distinct ones events name.

aiokafka 0.14 has no class for INVALID_RECORD (error 87); `faust_private.InvalidRecordError`
stands in for it, registered where aiokafka looks up error codes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Protocol, runtime_checkable

from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import size_of_varint
from faust.exceptions import ProducerSendError

from ..errors import DeliveryError, ErrorCode
from ..observability.tracing import NO_TRACING, TRACEPARENT
from ..observability.tracing_interface import ConsumedRecord, Headers, Tracing
from .faust_private import InvalidRecordError
from .header_keys import readable_header_key

__all__ = [
    "MAX_REQUEST_BYTES",
    "REPLY_TOPICS_KNOWN",
    "REPLY_TO_HEADER",
    "RETRIED_REPLY_TOPIC",
    "Delivery",
    "DeliveryObserver",
    "Envelope",
    "IncomingMessage",
    "KnownTopics",
    "Outgoing",
    "ReplyRouting",
    "TopicDirectory",
    "Verdict",
    "fit_envelope",
    "header",
    "judge",
    "message_headers",
    "value_room",
]

log = logging.getLogger(__name__)

REPLY_TO_HEADER = "reply-to"
FIRST_RETRY_BACKOFF_S = 0.1
# Delivery retries back off up to this; the event stays in flight meanwhile, holding commits.
MAX_RETRY_BACKOFF_S = 5.0
# Most reply topics remembered as existing. Any producer can name a new reply topic within the
# allowed patterns, so what the worker keeps for them needs a bound. The producer's metadata of
# each costs memory (about 2 KB traced, 9 KB resident at 4 partitions), and each topic it starts
# tracking makes it fetch and decode, on the event loop, the metadata of all it tracks: loop
# stalls of 45-120 ms at 100 tracked, 105-135 ms at 250 and about 1 s at 1,000 on 2 cores
# (docs/delivery.md). One that falls out costs that again when an event names it next.
REPLY_TOPICS_KNOWN = 100
# The topic label of a retried send to a reply topic: one series for them all, since a series
# per reply topic would grow with every topic named. Not a valid Kafka topic name, so it cannot
# be taken for one.
RETRIED_REPLY_TOPIC = "(reply topic)"
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


# Refusals of the records in a batch, by Kafka error code (aiokafka's CorruptRecordException
# is CORRUPT_MESSAGE), and the code the dead letter of a record refused alone carries.
_RECORD_REFUSALS: dict[int, ErrorCode] = {
    InvalidRecordError.errno: ErrorCode.ANSWER_REFUSED,
    CorruptRecordException.errno: ErrorCode.ANSWER_REFUSED,
    MessageSizeTooLargeError.errno: ErrorCode.ANSWER_TOO_LARGE,
    RecordListTooLargeError.errno: ErrorCode.ANSWER_TOO_LARGE,
}
# What a reply topic named by one event can refuse, and the code its dead letter then carries.
_REPLY_TOPIC_REFUSALS: tuple[tuple[type[KafkaError], ErrorCode], ...] = (
    (InvalidTopicError, ErrorCode.INVALID_REPLY_TOPIC),
    (UnknownTopicOrPartitionError, ErrorCode.REPLY_TOPIC_UNKNOWN),
    (TopicAuthorizationFailedError, ErrorCode.REPLY_TOPIC_UNAUTHORIZED),
)
_REPLY_TOPIC_CODES = frozenset(code for _, code in _REPLY_TOPIC_REFUSALS)


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


class Topic(Protocol):
    """A topic to send to (faust's `TopicT`): `send` returns the broker's acknowledgement."""

    def send(self, *, key: Any, value: Any, headers: Any) -> Awaitable[Awaitable[object]]: ...

    def send_alone(self, *, key: Any, value: Any, headers: Any) -> Awaitable[Awaitable[object]]: ...


@runtime_checkable
class TopicDirectory(Protocol):
    """The sendable topic of a name, and what delivery asks about reply topics (the worker's
    `Topics` implements it); a bare callable giving topics has reply topics sent unasked."""

    def __call__(self, name: str) -> Topic: ...

    async def refusal(self, name: str) -> KafkaError | None:
        """None when the broker has topic `name`; else its error for it (UnknownTopicOrPartition
        when it has no such topic), asked without letting the broker create the topic. Raises
        when the broker cannot be asked (retriable)."""
        ...

    def forget(self, name: str) -> None:
        """Drops what is kept for topic `name`, the producer's metadata included."""
        ...


class KnownTopics:
    """Topic names, least recently used first, at most `capacity` of them."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._names: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def touch(self, name: str) -> bool:
        """Marks `name` used now; False when it is not known."""
        if name not in self._names:
            return False
        self._names.move_to_end(name)
        return True

    def add(self, name: str) -> list[str]:
        """Knows `name`, used now; returns the names that fell out to make room for it."""
        self._names[name] = None
        self._names.move_to_end(name)
        evicted = []
        while len(self._names) > self.capacity:
            evicted.append(self._names.popitem(last=False)[0])
        return evicted

    def discard(self, name: str) -> None:
        self._names.pop(name, None)


DeadLetterFactory = Callable[[IncomingMessage, float, ErrorCode, str], Outgoing]
"""(message, event time, code, reason) to the dead letter for that message."""


def message_headers(message: IncomingMessage) -> list[tuple[str, bytes]]:
    """A message's headers as a list of pairs, whichever form faust hands them over in.

    A key that was not UTF-8 on the wire comes escaped (`header_keys.readable_header_key`), so
    that echoing, sizing and logging the headers never meets it undecoded.
    """
    headers = message.headers
    pairs = headers.items() if isinstance(headers, dict) else headers or ()
    return [(readable_header_key(key), value) for key, value in pairs]


def header(message: IncomingMessage, name: str) -> str | None:
    """The last value of a message header, as text (bytes that are not UTF-8 as `\\xNN`
    escapes, so a value that was sent is never taken for one that was not); None when absent."""
    found = None
    for key, value in message_headers(message):
        if key == name and value is not None:
            found = value
    return None if found is None else found.decode("utf-8", "backslashreplace")


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


class ReplyRouting:
    """Which topics a question may name for its answer: comma-separated glob patterns, less the
    `reserved` topics (the worker's own input and dead-letter topics), whatever the patterns say:
    an answer written there would be read back as a question, or pass for a dead letter."""

    def __init__(self, patterns: str | None, reserved: Iterable[str] = ()) -> None:
        self.patterns = [
            pattern.strip() for pattern in (patterns or "").split(",") if pattern.strip()
        ]
        self.reserved = frozenset(reserved)

    def requested(self, message: IncomingMessage, reply_to: str | None) -> str | None:
        """The topic the event asks its answer to go to: its `reply_to`, else the header."""
        return reply_to or header(message, REPLY_TO_HEADER)

    def allowed(self, topic: str) -> bool:
        if topic in self.reserved:
            return False
        return any(fnmatchcase(topic, pattern) for pattern in self.patterns)


@dataclass(frozen=True)
class Verdict:
    """What to do after a failed send: retry, dead-letter with `code`, stop (`fatal`), or first
    send the record again alone (`resend_alone`) to learn whether the refusal is its own."""

    retry: bool = False
    code: ErrorCode | None = None
    fatal: str | None = None
    resend_alone: bool = False


def _broker_error(error: KafkaError) -> str:
    """The broker's name for an error, its code, and what it means: `INVALID_RECORD (87): ...`."""
    errno = getattr(error, "errno", None)
    name = getattr(error, "message", None) or type(error).__name__
    said = f"{name} ({errno})" if errno is not None else name
    detail = " ".join(str(arg) for arg in error.args) or getattr(error, "description", "")
    return said + (f": {detail}" if detail else "")


def _refusal(error: KafkaError) -> str:
    """A dead letter's reason for a refusal, e.g. `the broker refused the record with
    INVALID_RECORD (87): ...`."""
    return f"the broker refused the record with {_broker_error(error)}"


def _unasked_refusal(error: KafkaError) -> str:
    """A dead letter's reason for a reply topic refused before anything was sent to it, e.g.
    `the broker's metadata refused the reply topic with UNKNOWN_TOPIC_OR_PARTITION (3): topic
    'replies.x': ... (asked without letting the broker create it; nothing was sent)`."""
    return (
        f"the broker's metadata refused the reply topic with {_broker_error(error)} "
        "(asked without letting the broker create it; nothing was sent)"
    )


def judge(
    error: KafkaError,
    outgoing: Outgoing,
    settings_of: Mapping[str, str],
    *,
    sent_alone: bool = True,
) -> Verdict:
    """What a failed send of `outgoing` leaves to do.

    `settings_of` maps each configured topic (answers, tags, dead letters) to the setting that
    names it; any other topic is a reply topic that one event asked for. `sent_alone` says the
    record went in a batch of its own, so a refusal of the batch is the record's.
    """
    setting = settings_of.get(outgoing.topic)
    is_dead_letter = outgoing.dead_letter_reason is not None
    refused_as = _RECORD_REFUSALS.get(getattr(error, "errno", None))  # type: ignore[arg-type]
    if refused_as is not None and not sent_alone:
        # Records are sized before sending, so this is a broker with its own limits or checks,
        # and it refused the whole batch the record went in.
        return Verdict(resend_alone=True)
    if refused_as is not None and not is_dead_letter:
        return Verdict(code=refused_as)
    if setting is None and not is_dead_letter:
        for refusal, code in _REPLY_TOPIC_REFUSALS:
            if isinstance(error, refusal):
                return Verdict(code=code)
    # aiokafka marks a batch that expired unacknowledged (a broker away longer than the request
    # timeout) as not retriable; a later send may well be acknowledged.
    if error.retriable or isinstance(error, KafkaTimeoutError):
        return Verdict(retry=True)
    if is_dead_letter:
        where = f"{outgoing.topic} ({setting})" if setting else outgoing.topic
        return Verdict(fatal=f"the dead-letter topic {where} refused a dead letter: {error!r}")
    return Verdict(fatal=f"the topic {outgoing.topic} ({setting}) refused a record: {error!r}")


class DeliveryObserver(Protocol):
    """What delivery reports (`WorkerMetrics` implements it)."""

    def delivery_retried(self, topic: str) -> None:
        """A send to `topic` (RETRIED_REPLY_TOPIC for any reply topic) is retried."""
        ...

    def watch_reply_topics_known(self, count: Callable[[], int]) -> None:
        """`count()` gives how many reply topics are known to exist, whenever it is read."""
        ...


class Delivery:
    """Sends outgoing records with their envelope's key and headers (by default the original
    message's), until the broker acks them."""

    def __init__(
        self,
        topic: Callable[[str], Topic],
        dead_letter: DeadLetterFactory,
        settings_of: Mapping[str, str] | None = None,
        observer: DeliveryObserver | None = None,
        first_backoff_s: float = FIRST_RETRY_BACKOFF_S,
        max_backoff_s: float = MAX_RETRY_BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing = NO_TRACING,
        reply_topics_known: int = REPLY_TOPICS_KNOWN,
    ) -> None:
        """`topic` gives the sendable topic of a name; `dead_letter` builds a dead letter.

        `settings_of` maps each configured topic to the setting naming it (see `judge`); any
        other topic is a reply topic. When `topic` is a `TopicDirectory`, a reply topic is asked
        about before its first send, and at most `reply_topics_known` found to exist are kept.
        """
        self._topic = topic
        self._directory = topic if isinstance(topic, TopicDirectory) else None
        self._tracing = tracing
        self._dead_letter = dead_letter
        self._settings_of = dict(settings_of or {})
        self._observer = observer
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._clock = clock
        # When each delivery now retrying first failed, by a number of its own.
        self._failing_since: dict[int, float] = {}
        self._ids = itertools.count()
        self.reply_topics = KnownTopics(reply_topics_known)
        # Sends under way to each reply topic, so that one is not forgotten in the middle.
        self._sending: dict[str, int] = {}
        if observer is not None:
            observer.watch_reply_topics_known(lambda: len(self.reply_topics))

    def failing_for(self) -> float:
        """Seconds the longest-retrying delivery has been failing; 0 when none is retrying."""
        if not self._failing_since:
            return 0.0
        return self._clock() - min(self._failing_since.values())

    async def deliver(self, outgoing: Outgoing, message: IncomingMessage) -> Outgoing:
        """Returns what the broker acknowledged: the record, or the dead letter it became.

        Raises DeliveryError when the record can never be delivered and no dead letter can
        stand in for it.
        """
        delivery_id = next(self._ids)
        try:
            return await self._deliver(outgoing, message, delivery_id)
        finally:
            self._failing_since.pop(delivery_id, None)

    def _outgoing_headers(self, message: IncomingMessage, envelope: Envelope | None) -> Headers:
        headers = message_headers(message) if envelope is None else envelope.headers
        # Tracing must not keep a record from going out: without its context, if need be.
        try:
            traced = self._tracing.outgoing_headers(headers)
        except Exception:
            log.exception("tracing failed to add its headers; sending the record without them")
            return headers
        if envelope is None or not envelope.dropped:
            return traced
        # Tracing writes the event's context (its tracestate, say) anew: a header dropped to
        # make room stays dropped.
        kept = {name for name, _ in headers}
        gone = {name for name, _ in envelope.dropped} - kept
        return [(name, value) for name, value in traced if name not in gone]

    def _is_reply(self, outgoing: Outgoing) -> bool:
        return outgoing.dead_letter_reason is None and outgoing.topic not in self._settings_of

    async def _confirm_reply_topic(self, topic: str) -> KafkaError | None:
        """None once the broker is known to have reply topic `topic`; else why it cannot be
        sent to. Raises when the broker cannot be asked."""
        if self._directory is None or self.reply_topics.touch(topic):
            return None
        refusal = await self._directory.refusal(topic)
        if refusal is None:
            for evicted in self.reply_topics.add(topic):
                # One still being sent to is forgotten when its last send ends: dropped from the
                # producer's tracked topics now, its metadata would never come and the send
                # would wait for it until it timed out.
                if evicted not in self._sending:
                    self._directory.forget(evicted)
        return refusal

    def _forget_reply_topic(self, topic: str) -> None:
        self.reply_topics.discard(topic)
        if self._directory is not None:
            self._directory.forget(topic)

    def _sending_ended(self, topic: str) -> None:
        left = self._sending.pop(topic) - 1
        if left:
            self._sending[topic] = left
        elif topic not in self.reply_topics and self._directory is not None:
            # Other reply topics pushed it out while it was being sent to.
            self._directory.forget(topic)

    async def _send_once(
        self, outgoing: Outgoing, message: IncomingMessage, alone: bool
    ) -> tuple[KafkaError, bool] | None:
        """Sends `outgoing` (in a batch of its own when `alone`): None once the broker
        acknowledged it; else the error, and whether it was the reply topic's refusal before
        anything was sent."""
        envelope = outgoing.envelope
        key = message.key if envelope is None else envelope.key
        headers = self._outgoing_headers(message, envelope)
        is_reply = self._is_reply(outgoing)
        try:
            refusal = await self._confirm_reply_topic(outgoing.topic) if is_reply else None
            if refusal is not None:
                return refusal, True
            if is_reply:
                self._sending[outgoing.topic] = self._sending.get(outgoing.topic, 0) + 1
            try:
                topic = self._topic(outgoing.topic)
                send = topic.send_alone if alone else topic.send
                pending = await send(key=key, value=outgoing.value, headers=headers)
                await pending
            finally:
                if is_reply:
                    self._sending_ended(outgoing.topic)
        except (KafkaError, ProducerSendError) as raised:
            # faust wraps what aiokafka raises while sending in ProducerSendError.
            error = raised.__cause__ if isinstance(raised, ProducerSendError) else raised
            if not isinstance(error, KafkaError):
                raise
            return error, False
        return None

    async def _deliver(
        self, outgoing: Outgoing, message: IncomingMessage, delivery_id: int
    ) -> Outgoing:
        backoff = self._first_backoff_s
        alone = False
        while True:
            failed = await self._send_once(outgoing, message, alone)
            if failed is None:
                return outgoing
            error, unsent = failed
            verdict = judge(error, outgoing, self._settings_of, sent_alone=alone)
            if verdict.fatal is not None:
                raise DeliveryError(verdict.fatal) from error
            if verdict.resend_alone:
                alone = True
                continue
            alone = False
            if verdict.code is not None:
                if verdict.code in _REPLY_TOPIC_CODES and self._is_reply(outgoing):
                    # Not one to send to now, known or not: the next event naming it asks again.
                    self._forget_reply_topic(outgoing.topic)
                reason = _unasked_refusal(error) if unsent else _refusal(error)
                outgoing = self._dead_letter(message, outgoing.event_time, verdict.code, reason)
                backoff = self._first_backoff_s
                continue
            self._failing_since.setdefault(delivery_id, self._clock())
            if self._observer is not None:
                retried = RETRIED_REPLY_TOPIC if self._is_reply(outgoing) else outgoing.topic
                self._observer.delivery_retried(retried)
            log.warning("delivery to %s failed (%r); retrying", outgoing.topic, error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)
