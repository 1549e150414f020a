"""From one consumed message to the record that answers it: an answer, tags, or a dead letter.

Handlers read a message, validate it against its contract, ask the batcher, and build the
outgoing record; they never send. Every way one event can fail ends in a dead letter naming the
reason, so a handler always returns a record. That holds by construction, not case by case:
`EventHandlers.handle` turns any exception a handler raises into an `internal_error` dead letter
with the exception's type and message, and the dead-letter builder falls back to a minimal dead
letter when the normal one cannot be built. Every record fits the producer's limit with the key
and headers it goes out with (`delivery.fit_envelope` drops what of them leaves no room).

They need no faust: any object with a message's fields will do, and any `answer` coroutine
stands in for the batcher.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, Protocol, TypeVar

from .. import __version__
from ..batching.batcher import Answered, DeadlineExceeded, Stages
from ..config import Settings, describe, topic_name_problem
from ..errors import DeliveryError, ErrorCode, EventError, OffsetOrderError
from ..events import (
    InputLimits,
    QuestionEvent,
    answer_event,
    dead_letter_bytes,
    dead_letter_event,
    encodable_text,
    parse_document,
    parse_question,
    shortest_dead_letter,
    tags_event,
    timestamp,
    to_bytes,
)
from ..observability.logs import bind_event
from ..observability.tracing import NO_TRACING
from ..observability.tracing_interface import Tracing
from ..qa.types import QAOptions, QAResult
from ..tagging import QuestionSet, tag_results
from .delivery import (
    ENVELOPE_DESCRIPTION_BYTES,
    MAX_REQUEST_BYTES,
    DeadLetterFactory,
    Envelope,
    IncomingMessage,
    Outgoing,
    ReplyRouting,
    envelope_room,
    fit_envelope,
    message_headers,
    value_room,
)
from .header_keys import undecodable_header_keys

__all__ = [
    "RECORD_INDEPENDENT_ERRORS",
    "AnswerQuality",
    "Answerer",
    "EventHandlers",
    "Handler",
    "kafka_timestamp_ms",
    "screen_header_keys",
]

log = logging.getLogger(__name__)

Handler = Callable[[IncomingMessage, float], Awaitable[Outgoing]]
"""(message, time received) to the record that answers it."""

# Errors every later record would meet too (a topic refusing writes, the offset bookkeeping gone
# wrong): these stop the worker instead of becoming one event's dead letter.
RECORD_INDEPENDENT_ERRORS: tuple[type[Exception], ...] = (DeliveryError, OffsetOrderError)
# How much of an unexpected exception's message a dead letter quotes.
_QUOTED_ERROR_CHARS = 1_000
_T = TypeVar("_T")
# The batcher's stages an answer reports; `submitted` follows `parsed` within one loop turn.
_BATCHER_STAGES = tuple(
    stage.name for stage in dataclasses.fields(Stages) if stage.name != "submitted"
)


class Answerer(Protocol):
    """What the handlers need of `MicroBatcher`."""

    async def answer(
        self,
        question: str,
        context: str,
        options: QAOptions,
        deadline: float | None = None,
        lane: Hashable = None,
        event: Hashable = None,
    ) -> Answered: ...


class AnswerQuality(Protocol):
    """Told about every answer computed (metrics plug in here): its score, or an abstention."""

    def answer_scored(self, topic: str, question_set: str, result: QAResult) -> None: ...


def kafka_timestamp_ms(message: IncomingMessage, received: float) -> int:
    """The message's Kafka timestamp; the time it was received when it carries none."""
    return int((message.timestamp or received) * 1000)


class EventHandlers:
    """Turns question and document messages into outgoing records."""

    def __init__(
        self,
        settings: Settings,
        batcher: Answerer,
        model_name: str,
        model_checksum: str,
        question_sets: Mapping[str, QuestionSet],
        topic_sets: Mapping[str, str | None],
        quality: AnswerQuality | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        """`topic_sets` maps each documents topic to its default question set (or None);
        `tracing` is the delivery's, whose trace headers every record is sized with."""
        self._quality = quality
        self._tracing = tracing
        self.settings = settings
        self.batcher = batcher
        self.model_name = model_name
        self.model_checksum = model_checksum
        self.replies = ReplyRouting(
            settings.reply_topics,
            reserved=[settings.questions_topic, *topic_sets, settings.dead_letter_topic],
        )
        self._defaults = settings.subset(QAOptions)
        self._limits = InputLimits(
            settings.max_question_chars,
            settings.max_context_chars,
            settings.max_json_depth,
            settings.max_json_values,
        )
        self._question_sets = question_sets
        self._topic_sets = topic_sets

    async def handle(self, respond: Handler, message: IncomingMessage, received: float) -> Outgoing:
        """Exactly one record for `message`: what `respond` returns, or its `internal_error`
        dead letter when anything on its way raises. Only RECORD_INDEPENDENT_ERRORS and what is
        not an Exception (cancellation) pass through."""
        try:
            return await respond(message, received)
        except RECORD_INDEPENDENT_ERRORS:
            raise
        except Exception as error:
            return self.internal_error(message, received, error)

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

    async def answer_question(self, message: IncomingMessage, received: float) -> Outgoing:
        """The answer to a questions-topic message, or its dead letter."""
        # The read on the monotonic clock the batcher's stages are on.
        read_at = time.monotonic() - max(0.0, time.time() - received)
        kafka_ms = kafka_timestamp_ms(message, received)
        try:
            question = parse_question(
                message.value, kafka_ms, self._defaults, self._limits, self.settings.deadline_ms
            )
        except EventError as error:
            return self.dead_letter(message, kafka_ms / 1000, error.code, str(error))
        parsed = time.monotonic()
        bind_event(event_id=question.id)
        event_time = question.event_time_ms / 1000
        allowed_ms = (
            None if question.deadline_ms is None else question.deadline_ms - question.event_time_ms
        )
        # Checked before inference: a refused reply topic needs no answer.
        reply_to = self.replies.requested(message, question.reply_to)
        problem = None if reply_to is None else topic_name_problem(reply_to)
        if problem is not None:
            return self.dead_letter(
                message, event_time, ErrorCode.INVALID_REPLY_TOPIC, f"reply topic {problem}"
            )
        if reply_to is not None and not self.replies.allowed(reply_to):
            why = (
                "is a topic the worker reads or dead-letters to"
                if reply_to in self.replies.reserved
                else f"matches no pattern of {describe('reply_topics')} "
                f"({self.settings.reply_topics or 'unset'})"
            )
            return self.dead_letter(
                message,
                event_time,
                ErrorCode.REPLY_TOPIC_NOT_ALLOWED,
                f"reply topic {reply_to!r} {why}",
            )
        # Outside the try: what fails here is the worker's, not the engine's (internal_error).
        deadline = _deadline(question)
        try:
            answered = await self.batcher.answer(
                question.question,
                question.context,
                question.options,
                deadline,
                lane=_lane(message),
            )
        except DeadlineExceeded as error:
            late = f"not answered within {allowed_ms} ms: {error}"
            return self.dead_letter(message, event_time, ErrorCode.DEADLINE_EXCEEDED, late)
        except Exception as error:
            return self._unanswerable(message, event_time, error, question.id)
        if self._quality is not None:
            self._quality.answer_scored(message.topic, "", answered.result)
        value = answer_event(
            question,
            answered.result,
            model_name=self.model_name,
            model_checksum=self.model_checksum,
            queue_ms=answered.queue_s * 1000,
            inference_ms=answered.inference_s * 1000,
            total_ms=(time.time() - received) * 1000,
            worker_version=__version__,
            now_ms=int(time.time() * 1000),
            read_ms=received * 1000 - kafka_ms,
            stages_ms=_stages_ms(read_at, parsed, answered.stages),
        )
        topic = self.settings.answers_topic if reply_to is None else reply_to
        log.debug("answered on %s", topic)
        return self._fitting(message, topic, value, event_time, answered.queue_s)

    async def tag_document(self, message: IncomingMessage, received: float) -> Outgoing:
        """The tags event of a documents-topic message, or its dead letter."""
        kafka_ms = kafka_timestamp_ms(message, received)
        try:
            document = parse_document(message.value, kafka_ms, self._limits)
        except EventError as error:
            return self.dead_letter(message, kafka_ms / 1000, error.code, str(error))
        bind_event(event_id=document.id)
        event_time = document.event_time_ms / 1000
        set_name = document.question_set or self._topic_sets.get(message.topic)
        if set_name is None:
            reason = (
                f"the document names no question_set and {message.topic} has no default set "
                f"in {describe('documents_topics')}"
            )
            return self.dead_letter(message, event_time, ErrorCode.MISSING_QUESTION_SET, reason)
        question_set = self._question_sets.get(set_name)
        if question_set is None:
            known = ", ".join(sorted(self._question_sets)) or "none"
            reason = f"no question set named {set_name!r} (known: {known})"
            return self.dead_letter(message, event_time, ErrorCode.UNKNOWN_QUESTION_SET, reason)
        # The set's questions are one event: they take one turn among their partition's events.
        lane, event = _lane(message), object()
        try:
            answered = await asyncio.gather(
                *(
                    self.batcher.answer(
                        field.question, document.text, field.options, lane=lane, event=event
                    )
                    for field in question_set.fields
                )
            )
        except Exception as error:
            return self._unanswerable(message, event_time, error, document.id)
        if self._quality is not None:
            for item in answered:
                self._quality.answer_scored(message.topic, set_name, item.result)
        value = tags_event(
            document,
            set_name,
            tag_results(question_set.fields, [item.result for item in answered]),
            model_name=self.model_name,
            model_checksum=self.model_checksum,
            worker_version=__version__,
            now_ms=int(time.time() * 1000),
        )
        queue_s = max(item.queue_s for item in answered)
        return self._fitting(message, self.settings.tags_topic, value, event_time, queue_s)

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
            max_json_values=self._limits.max_json_values,
        )
        shortest = len(to_bytes(shortest_dead_letter(record)))
        envelope = fit_envelope(
            message, shortest + ENVELOPE_DESCRIPTION_BYTES, self._tracing.sized_headers
        )
        if envelope is not None:
            record.update(envelope.described())
        value = dead_letter_bytes(record, self._room(message, envelope))
        return Outgoing(
            self.settings.dead_letter_topic,
            value,
            event_time,
            dead_letter_reason=code,
            envelope=envelope,
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
        described: dict[str, Any] = {}
        if key_size:
            described["key_truncated"] = {"size": key_size, "kept": 0}
        if dropped:
            # Counted, not named: the names may be what could not be written.
            described["headers_dropped"] = {
                "count": len(dropped),
                "size": envelope.dropped_bytes,
                "headers": [],
            }
        letter: dict[str, Any] = {
            "payload": "",
            "payload_encoding": "utf-8",
            "payload_truncated": True,
            "payload_size": _attempt(lambda: len(message.value or b""), 0),
            "source": {
                "topic": _attempt(lambda: encodable_text(str(message.topic))[:255], "") or "?",
                "partition": _attempt(lambda: max(0, int(message.partition)), 0),
                "offset": _attempt(lambda: max(0, int(message.offset)), 0),
            },
            "error": {
                "code": code.value,
                "message": _attempt(lambda: encodable_text(reason[:200]), "")
                + f" (its full dead letter could not be built: {type(error).__qualname__})",
            },
            "failed_at": timestamp(int(time.time() * 1000)),
            "worker_version": __version__,
            **described,
        }
        return Outgoing(
            self.settings.dead_letter_topic,
            to_bytes(letter),
            event_time,
            dead_letter_reason=code,
            envelope=envelope,
        )

    def _fitting(
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

    def _room(self, message: IncomingMessage, envelope: Envelope | None) -> int:
        """Most bytes a value may have sent with `envelope` (None: the message's own)."""
        if envelope is None:
            return value_room(message, self._tracing.sized_headers(message_headers(message)))
        return envelope_room(envelope.key, self._tracing.sized_headers(envelope.headers))

    def _unanswerable(
        self, message: IncomingMessage, event_time: float, error: Exception, event_id: str
    ) -> Outgoing:
        """The dead letter for input the engine rejected, or on which it failed."""
        if isinstance(error, EventError):
            return self.dead_letter(message, event_time, error.code, str(error))
        # The engine failed on this input; other events go on.
        log.error("inference failed for event %s", event_id, exc_info=error)
        return self.dead_letter(message, event_time, ErrorCode.INFERENCE_FAILED, repr(error))


def _attempt(read: Callable[[], _T], fallback: _T) -> _T:
    """What `read` returns, or `fallback` when it raises: for the builders that must not."""
    try:
        return read()
    except Exception:
        return fallback


def _stages_ms(read_at: float, parsed: float, stages: Stages | None) -> dict[str, float]:
    """Each stage's offset from the read in ms, in order: `parsed`, then the batcher's."""
    instants = {"parsed": parsed}
    if stages is not None:
        instants.update((name, getattr(stages, name)) for name in _BATCHER_STAGES)
    return {name: (instant - read_at) * 1000 for name, instant in instants.items()}


def _lane(message: IncomingMessage) -> Hashable:
    """What the batcher's turns go by: the partition, so a partition of long inputs cannot hold
    up the others."""
    return (message.topic, message.partition)


def _deadline(question: QuestionEvent) -> float | None:
    """The question's deadline as a `time.monotonic()` instant, for the batcher."""
    if question.deadline_ms is None:
        return None
    return time.monotonic() + (question.deadline_ms - time.time() * 1000) / 1000


def screen_header_keys(respond: Handler, dead_letter: DeadLetterFactory) -> Handler:
    """`respond`, except that a message with a header key that is not UTF-8 gets a dead letter."""

    async def screened(message: IncomingMessage, received: float) -> Outgoing:
        headers = message.headers
        pairs = headers.items() if isinstance(headers, dict) else headers or ()
        undecodable = undecodable_header_keys(pairs)
        if not undecodable:
            return await respond(message, received)
        names = ", ".join(repr(key) for key in undecodable)
        return dead_letter(
            message,
            message.timestamp or received,
            ErrorCode.INVALID_EVENT,
            f"header key {names} is not UTF-8; Kafka clients read header keys as UTF-8 text",
        )

    return screened
