"""From one consumed message to the record that answers it: an answer, tags, or a dead letter.

Handlers read a message, validate it against its contract, ask the batcher, and build the
outgoing record (`outgoing.OutgoingRecords`); they never send. Every way one event can fail that
the worker knows of ends here in a dead letter naming the reason; whatever else a handler raises
is the event pipeline's to turn into an `internal_error` dead letter (`pipeline`).

They need no faust: any object with a message's fields will do, and any `answer` coroutine
stands in for the batcher.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Protocol

from .. import __version__
from ..batching.batcher import Answered, Stages
from ..config import Settings, describe, topic_name_problem
from ..errors import DeadlineExceeded, ErrorCode, EventError
from ..events import (
    InputLimits,
    QuestionEvent,
    answer_event,
    parse_document,
    parse_question,
    tags_event,
)
from ..observability.logs import bind_event
from ..qa.types import QAOptions, QAResult
from ..tagging import QuestionSet, tag_results
from .outgoing import Outgoing, OutgoingRecords
from .records import IncomingMessage, ReadAt
from .reply_routing import ReplyRouting

__all__ = ["AnswerQuality", "Answerer", "EventHandlers", "Handler", "kafka_timestamp_ms"]

log = logging.getLogger(__name__)

Handler = Callable[[IncomingMessage, ReadAt], Awaitable[Outgoing]]
"""(message, when it was read) to the record that answers it."""

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


def kafka_timestamp_ms(message: IncomingMessage, read: ReadAt) -> int:
    """The message's Kafka timestamp; the time it was read when it carries none."""
    return int((message.timestamp or read.wall) * 1000)


class EventHandlers:
    """Turns question and document messages into outgoing records."""

    def __init__(
        self,
        settings: Settings,
        batcher: Answerer,
        records: OutgoingRecords,
        model_name: str,
        model_checksum: str,
        question_sets: Mapping[str, QuestionSet],
        topic_sets: Mapping[str, str | None],
        quality: AnswerQuality | None = None,
    ) -> None:
        """`topic_sets` maps each documents topic to its default question set (or None);
        `records` builds what answers each message, dead letters included."""
        self._quality = quality
        self.records = records
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

    async def answer_question(self, message: IncomingMessage, read: ReadAt) -> Outgoing:
        """The answer to a questions-topic message, or its dead letter."""
        kafka_ms = kafka_timestamp_ms(message, read)
        try:
            question = parse_question(
                message.value, kafka_ms, self._defaults, self._limits, self.settings.deadline_ms
            )
        except EventError as error:
            return self.records.dead_letter(message, kafka_ms / 1000, error.code, str(error))
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
            return self.records.dead_letter(
                message, event_time, ErrorCode.INVALID_REPLY_TOPIC, f"reply topic {problem}"
            )
        if reply_to is not None and not self.replies.allowed(reply_to):
            why = (
                "is a topic the worker reads or dead-letters to"
                if reply_to in self.replies.reserved
                else f"matches no pattern of {describe('reply_topics')} "
                f"({self.settings.reply_topics or 'unset'})"
            )
            return self.records.dead_letter(
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
            late = f"not answered within {allowed_ms} ms: {error.message}"
            return self.records.dead_letter(message, event_time, error.code, late)
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
            total_ms=(time.time() - read.wall) * 1000,
            worker_version=__version__,
            now_ms=int(time.time() * 1000),
            read_ms=read.wall * 1000 - kafka_ms,
            stages_ms=_stages_ms(read.monotonic, parsed, answered.stages),
        )
        topic = self.settings.answers_topic if reply_to is None else reply_to
        log.debug("answered on %s", topic)
        return self.records.fitting(message, topic, value, event_time, answered.queue_s)

    async def tag_document(self, message: IncomingMessage, read: ReadAt) -> Outgoing:
        """The tags event of a documents-topic message, or its dead letter."""
        kafka_ms = kafka_timestamp_ms(message, read)
        try:
            document = parse_document(message.value, kafka_ms, self._limits)
        except EventError as error:
            return self.records.dead_letter(message, kafka_ms / 1000, error.code, str(error))
        bind_event(event_id=document.id)
        event_time = document.event_time_ms / 1000
        set_name = document.question_set or self._topic_sets.get(message.topic)
        if set_name is None:
            reason = (
                f"the document names no question_set and {message.topic} has no default set "
                f"in {describe('documents_topics')}"
            )
            return self.records.dead_letter(
                message, event_time, ErrorCode.MISSING_QUESTION_SET, reason
            )
        question_set = self._question_sets.get(set_name)
        if question_set is None:
            known = ", ".join(sorted(self._question_sets)) or "none"
            reason = f"no question set named {set_name!r} (known: {known})"
            return self.records.dead_letter(
                message, event_time, ErrorCode.UNKNOWN_QUESTION_SET, reason
            )
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
        return self.records.fitting(message, self.settings.tags_topic, value, event_time, queue_s)

    def _unanswerable(
        self, message: IncomingMessage, event_time: float, error: Exception, event_id: str
    ) -> Outgoing:
        """The dead letter for input the engine rejected, or on which it failed."""
        if isinstance(error, EventError):
            return self.records.dead_letter(message, event_time, error.code, str(error))
        # The engine failed on this input; other events go on.
        log.error("inference failed for event %s", event_id, exc_info=error)
        return self.records.dead_letter(
            message, event_time, ErrorCode.INFERENCE_FAILED, repr(error)
        )


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
