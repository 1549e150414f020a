"""One event's way, from a consumed message to the one record the broker acknowledged for it.

    message ─ screen header keys ─ handler (parse, batcher, build) ─ delivery ─ count
                                                                    └ refused: its dead letter

Each event ends in exactly one record, by construction: whatever is raised on its way (its
handler, tracing hooks, metrics or delivery) before its record is acknowledged becomes its
`internal_error` dead letter, in the one catch-all below, and what is raised after that is
logged. Only errors that every later record would meet too (`WorkerError.stops_worker`) and what
is not an Exception (cancellation) pass through, to stop the worker.

Delivery reports a record the broker refused for its own reasons (`delivery.Refusal`); the
pipeline then sends that record's dead letter in its place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from ..config import Settings
from ..errors import ErrorCode, WorkerError
from ..observability.tracing import NO_TRACING
from ..observability.tracing_interface import Tracing
from ..tagging import QuestionSet
from .delivery import Delivery, DeliveryObserver, Topic
from .handlers import Answerer, AnswerQuality, EventHandlers, Handler
from .header_keys import undecodable_header_keys
from .outgoing import Outgoing, OutgoingRecords
from .records import IncomingMessage, ReadAt, header_pairs, message_headers

__all__ = ["EventCounts", "EventMetrics", "EventPipeline"]

log = logging.getLogger(__name__)


class EventCounts(Protocol):
    """What the pipeline counts (`WorkerMetrics` implements it)."""

    def event_received(self, topic: str) -> None: ...

    def event_answered(self, end_to_end_s: float, queue_s: float) -> None: ...

    def event_dead_lettered(self, reason: ErrorCode) -> None: ...


class EventMetrics(EventCounts, DeliveryObserver, AnswerQuality, Protocol):
    """Everything one event's way reports (`WorkerMetrics` implements it)."""


class EventPipeline:
    """Takes a consumed message to the record the broker acknowledged for it."""

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        records: OutgoingRecords,
        delivery: Delivery,
        group_id: str,
        counts: EventCounts | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        """`handlers` maps each topic read to the handler of its messages; `records` builds the
        dead letters that stand in for what cannot be answered or delivered."""
        self._handlers = dict(handlers)
        self._records = records
        self._group_id = group_id
        self._counts = counts
        self._tracing = tracing
        self.delivery = delivery

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        batcher: Answerer,
        topics: Callable[[str], Topic],
        written: Mapping[str, str],
        model: tuple[str, str],
        question_sets: Mapping[str, QuestionSet],
        topic_sets: Mapping[str, str | None],
        metrics: EventMetrics | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> EventPipeline:
        """The pipeline of a worker reading `settings.questions_topic` and the documents topics
        of `topic_sets` (each mapped to its default question set, or None).

        `topics` gives the sendable topic of a name (a `delivery.TopicDirectory` to have reply
        topics asked about first); `written` maps each configured topic written to to the
        setting naming it; `model` is the model's (name, checksum) the answers carry.
        """
        records = OutgoingRecords(settings.dead_letter_topic, settings.max_json_values, tracing)
        model_name, model_checksum = model
        handlers = EventHandlers(
            settings,
            batcher,
            records,
            model_name,
            model_checksum,
            question_sets,
            topic_sets,
            quality=metrics,
        )
        routes: dict[str, Handler] = {settings.questions_topic: handlers.answer_question}
        routes.update(dict.fromkeys(topic_sets, handlers.tag_document))
        delivery = Delivery(topics, settings_of=written, observer=metrics, tracing=tracing)
        return cls(routes, records, delivery, settings.group_id, metrics, tracing)

    async def process(self, message: IncomingMessage, read: ReadAt) -> Outgoing:
        """The record the broker acknowledged for `message`: exactly one, whatever raises.

        Raises what `WorkerError.stops_worker` marks, and what is not an Exception.
        """
        delivered: Outgoing | None = None
        try:
            if self._counts is not None:
                self._counts.event_received(message.topic)
            headers = message_headers(message)
            with self._tracing.event(message, headers, self._group_id) as trace:
                outgoing = self._unreadable_header_keys(message, read)
                if outgoing is None:
                    outgoing = await self._handlers[message.topic](message, read)
                with self._tracing.produce(outgoing.topic):
                    delivered = await self.deliver_or_dead_letter(outgoing, message)
                trace.finish(delivered.topic, delivered.dead_letter_reason)
            self._count(delivered)
            return delivered
        except Exception as error:
            if isinstance(error, WorkerError) and error.stops_worker:
                raise
            if delivered is not None:
                # Its record is out; a second would answer the event twice.
                log.error("handling an event failed after its record was sent", exc_info=error)
                return delivered
            letter = await self.deliver_or_dead_letter(
                self._records.internal_error(message, read.wall, error), message
            )
            self._count(letter)
            return letter

    async def deliver_or_dead_letter(
        self, outgoing: Outgoing, message: IncomingMessage
    ) -> Outgoing:
        """Sends `outgoing`, a record for `message`, and returns the record the broker
        acknowledged: `outgoing`, or the dead letter of `message` that went in its place when
        the broker refused it for reasons of its own (`delivery.Refusal`).

        Raises what `Delivery.send` raises.
        """
        while (refusal := await self.delivery.send(outgoing, message)) is not None:
            outgoing = self._records.dead_letter(
                message, outgoing.event_time, refusal.code, refusal.reason
            )
        return outgoing

    def _unreadable_header_keys(self, message: IncomingMessage, read: ReadAt) -> Outgoing | None:
        """The dead letter of a message with a header key that is not UTF-8; else None."""
        undecodable = undecodable_header_keys(header_pairs(message))
        if not undecodable:
            return None
        names = ", ".join(repr(key) for key in undecodable)
        return self._records.dead_letter(
            message,
            message.timestamp or read.wall,
            ErrorCode.INVALID_EVENT,
            f"header key {names} is not UTF-8; Kafka clients read header keys as UTF-8 text",
        )

    def _count(self, delivered: Outgoing) -> None:
        if self._counts is None:
            return
        if delivered.dead_letter_reason is None:
            self._counts.event_answered(time.time() - delivered.event_time, delivered.queue_s)
        else:
            self._counts.event_dead_lettered(delivered.dead_letter_reason)
