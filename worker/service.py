"""The streaming worker: a faust agent reads questions, the batcher answers, answers go out.

Delivery is at-least-once. An event's offset is acknowledged to faust only after its answer (or
dead-letter record) is acknowledged by the broker, and acknowledgements go out in offset order
per partition, so a commit never passes an event still in flight. faust commits acknowledged
offsets every `commit_interval_s`, on rebalance and on stop; in both of the latter it first waits
until every event the agent has taken is acknowledged, which is how SIGTERM drains and why a
rebalance neither loses nor double-commits.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import faust
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from faust.types import TP

from . import __version__
from .batcher import BatchLimits, DeadlineExceeded, MicroBatcher
from .config import Settings, describe
from .events import (
    EventError,
    InputLimits,
    QuestionEvent,
    answer_event,
    dead_letter_event,
    parse_document,
    parse_question,
    tags_event,
    to_bytes,
)
from .kafka import FetchWaitTransport, faust_credentials
from .metrics import WorkerMetrics
from .qa import InputError, QAEngine
from .tagging import load_question_sets, parse_topic_sets, tag_results

log = logging.getLogger(__name__)

# How often consumer lag and readiness are refreshed for /metrics.
LAG_REFRESH_S = 1.0
REPLY_TO_HEADER = "reply-to"
# Delivery retries back off up to this; the event stays in flight meanwhile, holding commits.
MAX_RETRY_BACKOFF_S = 5.0


@dataclass(eq=False)
class Tracked:
    event: faust.types.EventT
    done: bool = False


@dataclass
class OffsetTracker:
    """Acknowledges each partition's events strictly in offset order.

    faust commits the end of the first run of acknowledged offsets, but it can step over a single
    unacknowledged offset (docs/notes/faust-on-tansu.md, section 4.3). Acknowledging in order
    leaves it no gap to misjudge.
    """

    pending: dict[TP, deque[Tracked]] = field(default_factory=dict)
    count: int = 0

    def track(self, event: faust.types.EventT) -> Tracked:
        tracked = Tracked(event)
        self.pending.setdefault(event.message.tp, deque()).append(tracked)
        self.count += 1
        return tracked

    def complete(self, tracked: Tracked) -> None:
        tracked.done = True
        queue = self.pending[tracked.event.message.tp]
        while queue and queue[0].done:
            queue.popleft().event.ack()
            self.count -= 1


@dataclass(frozen=True)
class Outgoing:
    topic: faust.types.TopicT
    value: bytes
    event_time: float
    dead_letter_reason: str | None = None
    queue_s: float = 0.0


def kafka_timestamp_ms(message: Any, received: float) -> int:
    """The message's Kafka timestamp; the time it was received when it carries none."""
    return int((message.timestamp or received) * 1000)


def message_headers(message: Any) -> list[tuple[str, bytes]]:
    """A message's headers as a list of pairs, whichever form faust hands them over in."""
    headers = message.headers
    return list(headers.items()) if isinstance(headers, dict) else list(headers or ())


def header(message: Any, name: str) -> str | None:
    """The last value of a message header, as text; None when absent or not UTF-8."""
    found = None
    for key, value in message_headers(message):
        if key == name and value is not None:
            found = value
    try:
        return None if found is None else found.decode("utf-8")
    except UnicodeDecodeError:
        return None


class CommitSensor(faust.Sensor):
    """Tells the metrics when faust finished a commit."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        self._metrics.committed()


def faust_app(settings: Settings, datadir: str) -> faust.App:
    """The faust app for `settings`, configured from them alone."""
    return faust.App(
        settings.group_id,
        broker=[f"kafka://{server.strip()}" for server in settings.broker.split(",")],
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=datadir,
        # /metrics, /healthz and /readyz have their own server (worker.http).
        web_enabled=False,
        # The worker keeps no tables and uses no leader election.
        topic_disable_leader=True,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 4,
        broker_request_timeout=max(90.0, settings.session_timeout_s),
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        # faust pauses fetching once an agent's buffer fills; with the in-flight bound this
        # keeps memory bounded however far behind the worker is.
        stream_buffer_maxsize=max(16, settings.max_in_flight),
        broker_max_poll_records=max(16, settings.max_in_flight),
        producer_acks=-1,
        # faust reads its own un-prefixed variables (BROKER_COMMIT_INTERVAL, ...) from the
        # environment, and they win over these arguments; the worker's settings come only
        # from Settings, so faust gets an empty environment.
        env={},
    )


class QAWorker:
    def __init__(
        self,
        settings: Settings,
        engine: QAEngine,
        metrics: WorkerMetrics,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics
        self._on_fatal = on_fatal
        self._defaults = settings.qa_options()
        self._model_name = settings.model.name if settings.model else ""
        metrics.set_model_info(
            model=self._model_name,
            model_type=engine.manifest.model_type,
            precision=settings.precision or engine.manifest.default_precision,
            checksum=engine.model_id,
            worker_version=__version__,
        )
        self._limits = InputLimits(settings.max_question_chars, settings.max_context_chars)
        self._question_sets = (
            load_question_sets(settings.question_sets, self._defaults)
            if settings.question_sets is not None
            else {}
        )
        self.batcher = MicroBatcher(
            engine,
            BatchLimits(
                settings.batch_size,
                settings.max_batch_tokens,
                settings.max_wait_ms,
                settings.max_padding,
            ),
            observer=metrics,
        )
        self.tracker = OffsetTracker()
        self._room = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lag_task: asyncio.Task[None] | None = None
        # faust creates a table folder in its data dir even with no tables; a private temporary
        # one keeps the worker runnable on a read-only root filesystem.
        self._datadir = tempfile.TemporaryDirectory(prefix="qa-worker-faust-")
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        settings = self.settings
        app = faust_app(settings, self._datadir.name)
        app.transport = FetchWaitTransport(
            app.conf.broker_consumer, app, fetch_max_wait_ms=settings.fetch_max_wait_ms
        )
        self.questions = app.topic(
            settings.questions_topic, key_serializer="raw", value_serializer="raw"
        )
        self.answers = app.topic(
            settings.answers_topic, key_serializer="raw", value_serializer="raw"
        )
        self.dead_letters = app.topic(
            settings.dead_letter_topic, key_serializer="raw", value_serializer="raw"
        )
        app.agent(self.questions, name="answer-questions")(self._consumer(self._answer))
        self._topic_sets = parse_topic_sets(settings.documents_topics)
        if self._topic_sets:
            self.documents = app.topic(
                *self._topic_sets, key_serializer="raw", value_serializer="raw"
            )
            self.tags = app.topic(settings.tags_topic, key_serializer="raw", value_serializer="raw")
            app.agent(self.documents, name="tag-documents")(self._consumer(self._tag))
        self._reply_topics: dict[str, faust.types.TopicT] = {}
        app.sensors.add(CommitSensor(self.metrics))
        return app

    # lifecycle

    async def start(self) -> None:
        await self.batcher.start()
        await self.app.start()
        self._lag_task = asyncio.create_task(self._refresh_lag())

    async def stop(self) -> bool:
        """Stops fetching, finishes what is in flight, commits, then stops the engine.

        Returns False when in-flight work did not finish within `drain_timeout_s`; its offsets
        stay uncommitted, so those events are answered again after a restart.
        """
        self.metrics.set_ready(False)
        if self._lag_task is not None:
            self._lag_task.cancel()
        try:
            await asyncio.wait_for(self.app.stop(), self.settings.drain_timeout_s)
            drained = True
        except TimeoutError:
            log.error(
                "%d events still in flight after %.0f s; exiting without committing them",
                self.tracker.count,
                self.settings.drain_timeout_s,
            )
            drained = False
        await self.batcher.stop()
        self._datadir.cleanup()
        return drained

    def readiness(self) -> tuple[bool, str]:
        if not self.app.started:
            return False, "the Kafka consumer has not started"
        if not self.assigned_partitions():
            return False, f"no partition of {', '.join(self.input_topics)} is assigned"
        return True, "model loaded, partitions assigned"

    def assigned_partitions(self) -> list[TP]:
        try:
            assignment = self.app.consumer.assignment()
        except Exception:  # consumer not started, or stopping
            return []
        return sorted(tp for tp in assignment if tp.topic in self.input_topics)

    @property
    def input_topics(self) -> list[str]:
        return [self.settings.questions_topic, *self._topic_sets]

    # consuming

    def _consumer(
        self, respond: Callable[[Any, float], Awaitable[Outgoing]]
    ) -> Callable[[faust.StreamT], Awaitable[None]]:
        """An agent body: every event is answered by `respond`, at most max_in_flight at once."""

        async def consume(stream: faust.StreamT) -> None:
            async for event in stream.noack().events():
                self._spawn(self._handle(event, self.tracker.track(event), respond))
                async with self._room:
                    await self._room.wait_for(
                        lambda: self.tracker.count < self.settings.max_in_flight
                    )

        return consume

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        self.metrics.set_in_flight(self.tracker.count)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Unreachable by design (every failure of one event becomes a dead letter); if it
            # happens the event stays unacknowledged, so the process must restart to redeliver it.
            log.critical("event handling failed", exc_info=task.exception())
            if self._on_fatal is not None:
                self._on_fatal(task.exception())  # type: ignore[arg-type]

    async def _handle(
        self,
        event: faust.types.EventT,
        tracked: Tracked,
        respond: Callable[[Any, float], Awaitable[Outgoing]],
    ) -> None:
        message = event.message
        received = time.time()
        self.metrics.event_received(message.topic)
        outgoing = await respond(message, received)
        await self._deliver(outgoing, message)
        if outgoing.dead_letter_reason is None:
            self.metrics.event_answered(time.time() - outgoing.event_time, outgoing.queue_s)
        else:
            self.metrics.event_dead_lettered(outgoing.dead_letter_reason)
        self.tracker.complete(tracked)
        self.metrics.set_in_flight(self.tracker.count)
        async with self._room:
            self._room.notify_all()

    async def _answer(self, message: Any, received: float) -> Outgoing:
        kafka_ms = kafka_timestamp_ms(message, received)
        try:
            question = parse_question(
                message.value, kafka_ms, self._defaults, self._limits, self.settings.deadline_ms
            )
        except EventError as error:
            return self._dead_letter(message, kafka_ms / 1000, error.code, str(error))
        event_time = question.event_time_ms / 1000
        # Checked before inference: a refused reply topic needs no answer.
        reply_to = question.reply_to or header(message, REPLY_TO_HEADER)
        if reply_to is not None and not self._reply_allowed(reply_to):
            return self._dead_letter(
                message,
                event_time,
                "reply_topic_not_allowed",
                f"reply topic {reply_to!r} matches no pattern of "
                f"{describe('reply_topics')} ({self.settings.reply_topics or 'unset'})",
            )
        try:
            answered = await self.batcher.answer(
                question.question, question.context, question.options, self._deadline(question)
            )
        except DeadlineExceeded:
            late = f"not answered within {question.deadline_ms - question.event_time_ms} ms"
            return self._dead_letter(message, event_time, "deadline_exceeded", late)
        except Exception as error:
            return self._unanswerable(message, event_time, error, question.id)
        value = answer_event(
            question,
            answered.result,
            model_name=self._model_name,
            model_checksum=self.engine.model_id,
            queue_ms=answered.queue_s * 1000,
            inference_ms=answered.inference_s * 1000,
            total_ms=(time.time() - received) * 1000,
            worker_version=__version__,
            now_ms=int(time.time() * 1000),
        )
        topic = self.answers if reply_to is None else self._reply_topic(reply_to)
        return Outgoing(topic, to_bytes(value), event_time, queue_s=answered.queue_s)

    def _reply_allowed(self, topic: str) -> bool:
        patterns = (self.settings.reply_topics or "").split(",")
        return any(pattern.strip() and fnmatchcase(topic, pattern.strip()) for pattern in patterns)

    def _reply_topic(self, name: str) -> faust.types.TopicT:
        if name not in self._reply_topics:
            self._reply_topics[name] = self.app.topic(
                name, key_serializer="raw", value_serializer="raw"
            )
        return self._reply_topics[name]

    async def _tag(self, message: Any, received: float) -> Outgoing:
        kafka_ms = kafka_timestamp_ms(message, received)
        try:
            document = parse_document(message.value, kafka_ms, self._limits)
        except EventError as error:
            return self._dead_letter(message, kafka_ms / 1000, error.code, str(error))
        event_time = document.event_time_ms / 1000
        set_name = document.question_set or self._topic_sets.get(message.topic)
        if set_name is None:
            reason = (
                f"the document names no question_set and {message.topic} has no default set "
                f"in {describe('documents_topics')}"
            )
            return self._dead_letter(message, event_time, "missing_question_set", reason)
        question_set = self._question_sets.get(set_name)
        if question_set is None:
            known = ", ".join(sorted(self._question_sets)) or "none"
            reason = f"no question set named {set_name!r} (known: {known})"
            return self._dead_letter(message, event_time, "unknown_question_set", reason)
        try:
            answered = await asyncio.gather(
                *(
                    self.batcher.answer(field.question, document.text, field.options)
                    for field in question_set.fields
                )
            )
        except Exception as error:
            return self._unanswerable(message, event_time, error, document.id)
        value = tags_event(
            document,
            set_name,
            tag_results(question_set.fields, [item.result for item in answered]),
            model_name=self._model_name,
            model_checksum=self.engine.model_id,
            worker_version=__version__,
            now_ms=int(time.time() * 1000),
        )
        queue_s = max(item.queue_s for item in answered)
        return Outgoing(self.tags, to_bytes(value), event_time, queue_s=queue_s)

    @staticmethod
    def _deadline(question: QuestionEvent) -> float | None:
        if question.deadline_ms is None:
            return None
        return time.monotonic() + (question.deadline_ms - time.time() * 1000) / 1000

    def _unanswerable(
        self, message: Any, event_time: float, error: Exception, event_id: str
    ) -> Outgoing:
        """The dead letter for input the engine rejected, or on which it failed."""
        if isinstance(error, InputError):
            return self._dead_letter(message, event_time, error.code, str(error))
        # The engine failed on this input; other events go on.
        log.error("inference failed for event %s", event_id, exc_info=error)
        return self._dead_letter(message, event_time, "inference_failed", repr(error))

    def _dead_letter(self, message: Any, event_time: float, code: str, reason: str) -> Outgoing:
        record = dead_letter_event(
            message.value,
            message.topic,
            message.partition,
            message.offset,
            code,
            reason,
            worker_version=__version__,
            now_ms=int(time.time() * 1000),
        )
        return Outgoing(self.dead_letters, to_bytes(record), event_time, dead_letter_reason=code)

    async def _deliver(self, outgoing: Outgoing, message: Any) -> None:
        """Sends until the broker acknowledges; the event is held in flight meanwhile."""
        headers = message_headers(message)
        backoff = 0.1
        while True:
            try:
                pending = await outgoing.topic.send(
                    key=message.key, value=outgoing.value, headers=headers
                )
                await pending
                return
            except MessageSizeTooLargeError as error:
                if outgoing.dead_letter_reason is not None:
                    raise
                outgoing = self._dead_letter(
                    message, outgoing.event_time, "answer_too_large", str(error)
                )
            except KafkaError as error:
                log.warning("delivery to %s failed (%r); retrying", outgoing.topic, error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_RETRY_BACKOFF_S)

    async def _refresh_lag(self) -> None:
        while True:
            lags = {}
            committed = self.app.monitor.tp_committed_offsets
            for tp in self.assigned_partitions():
                highwater = self.app.consumer.highwater(tp)
                if highwater is not None:
                    lags[(tp.topic, tp.partition)] = max(0, highwater - committed.get(tp, 0))
            self.metrics.set_lags(lags)
            self.metrics.set_ready(self.readiness()[0])
            await asyncio.sleep(LAG_REFRESH_S)
