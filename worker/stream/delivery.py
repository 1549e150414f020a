"""Getting an outgoing record to the broker: sending until it is acknowledged or refused.

A record goes out with its envelope's key and headers (`envelope`), on its topic or on the reply
topic its event asked for (`reply_routing`).

A send that fails is judged by what can still succeed (`judge`):
- an error aiokafka marks retriable (a lost connection, a leader moving), or a send that timed
  out, is retried with backoff while the event stays in flight, so its offset is not committed;
- an error that only this event's record meets (an answer too large, a reply topic that is
  invalid, unknown or not writable) is a `Refusal` with its own code, and the event pipeline
  sends the event's dead letter instead;
- a refusal of the record itself, by its Kafka error code (INVALID_RECORD, CORRUPT_MESSAGE:
  `answer_refused`; MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE: `answer_too_large`), is first
  confirmed by sending the record again in a batch of its own: the broker refuses whole batches,
  so an answer that shared a batch with the refused one is delivered, and only the record that
  is refused alone is refused, with a reason naming the broker's error;
- an error no event can get past (a configured topic refusing writes, a dead letter refused,
  alone too) raises `DeliveryError`, which names the setting: the worker must stop, committing
  nothing that was not delivered.

A reply topic is asked about before the producer ever sees it (`TopicDirectory.refusal`, a
metadata request that does not let the broker create the topic): one the broker does not have
is refused as `reply_topic_unknown`, and the producer never tracks it. Those found to exist are
kept in `reply_routing.KnownTopics`, at most `REPLY_TOPICS_KNOWN`; one that falls out is
forgotten by the producer too.

aiokafka 0.14 has no class for INVALID_RECORD (error 87); `faust_private.InvalidRecordError`
stands in for it, registered where aiokafka looks up error codes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
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
from faust.exceptions import ProducerSendError

from ..errors import DeliveryError, ErrorCode
from ..observability.tracing import NO_TRACING
from ..observability.tracing_interface import Headers, Tracing
from .faust_private import InvalidRecordError
from .outgoing import Outgoing
from .records import IncomingMessage, message_headers
from .reply_routing import REPLY_TOPICS_KNOWN, KnownTopics

__all__ = [
    "RETRIED_REPLY_TOPIC",
    "Delivery",
    "DeliveryObserver",
    "Refusal",
    "Topic",
    "TopicDirectory",
    "Verdict",
    "judge",
]

log = logging.getLogger(__name__)

FIRST_RETRY_BACKOFF_S = 0.1
# Delivery retries back off up to this; the event stays in flight meanwhile, holding commits.
MAX_RETRY_BACKOFF_S = 5.0
# The topic label of a retried send to a reply topic: one series for them all, since a series
# per reply topic would grow with every topic named. Not a valid Kafka topic name, so it cannot
# be taken for one.
RETRIED_REPLY_TOPIC = "(reply topic)"
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


@dataclass(frozen=True)
class Refusal:
    """A record the broker will not take for reasons of its own (or of its reply topic): the
    code and reason of the dead letter to send in its place."""

    code: ErrorCode
    reason: str


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
        settings_of: Mapping[str, str] | None = None,
        observer: DeliveryObserver | None = None,
        first_backoff_s: float = FIRST_RETRY_BACKOFF_S,
        max_backoff_s: float = MAX_RETRY_BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing = NO_TRACING,
        reply_topics_known: int = REPLY_TOPICS_KNOWN,
    ) -> None:
        """`topic` gives the sendable topic of a name.

        `settings_of` maps each configured topic to the setting naming it (see `judge`); any
        other topic is a reply topic. When `topic` is a `TopicDirectory`, a reply topic is asked
        about before its first send, and at most `reply_topics_known` found to exist are kept.
        """
        self._topic = topic
        self._directory = topic if isinstance(topic, TopicDirectory) else None
        self._tracing = tracing
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

    async def send(self, outgoing: Outgoing, message: IncomingMessage) -> Refusal | None:
        """None once the broker acknowledged `outgoing`; its `Refusal` when the broker refused it
        for reasons of its own, retrying meanwhile what may yet be acknowledged.

        Raises DeliveryError when the record can never be delivered and no dead letter can
        stand in for it.
        """
        delivery_id = next(self._ids)
        try:
            return await self._send(outgoing, message, delivery_id)
        finally:
            self._failing_since.pop(delivery_id, None)

    def _outgoing_headers(self, message: IncomingMessage, outgoing: Outgoing) -> Headers:
        envelope = outgoing.envelope
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
        headers = self._outgoing_headers(message, outgoing)
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

    async def _send(
        self, outgoing: Outgoing, message: IncomingMessage, delivery_id: int
    ) -> Refusal | None:
        backoff = self._first_backoff_s
        alone = False
        while True:
            failed = await self._send_once(outgoing, message, alone)
            if failed is None:
                return None
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
                return Refusal(verdict.code, _unasked_refusal(error) if unsent else _refusal(error))
            self._failing_since.setdefault(delivery_id, self._clock())
            if self._observer is not None:
                retried = RETRIED_REPLY_TOPIC if self._is_reply(outgoing) else outgoing.topic
                self._observer.delivery_retried(retried)
            log.warning("delivery to %s failed (%r); retrying", outgoing.topic, error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)
