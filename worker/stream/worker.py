"""The streaming worker: faust agents read events, handlers answer them, delivery sends them.

Delivery is at-least-once. An event's offset is acknowledged to faust only after its answer (or
dead-letter record) is acknowledged by the broker, and acknowledgements go out in offset order
per partition (`offsets.OffsetTracker`), so a commit never passes an event still in flight.
faust commits acknowledged offsets every `commit_interval_s`, on rebalance and on stop; in both
of the latter it first waits until every event the agent has taken is acknowledged, which is how
SIGTERM drains and why a rebalance neither loses nor double-commits. An event answered before
an earlier one of its partition waits for it with its payload dropped; `--max-in-flight` bounds
the events being answered, and pauses a partition alone once it holds that many unacknowledged.

Each event ends in exactly one record (`pipeline.EventPipeline`). Only the errors every event
would meet (`WorkerError.stops_worker`) and cancellation stop the worker, as everything that
stops it does: through `_fail`, which makes it not ready, logs one CRITICAL line naming the
cause, and tells the caller.

Nothing stops reading silently. A record whose header key is not UTF-8 becomes a dead letter
(`header_keys`); an error that ends faust's fetch loop stops the worker like a fatal handling
error (not ready, a CRITICAL line naming it, exit non-zero); a configured topic deleted while
running makes the worker not ready and holds what is bound for it (`reachability`); and a
partition with lag whose committed offset stands still for `stall_timeout_s`, whatever the
cause, makes it not ready naming the partition (`watchdog`).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable, Hashable, Set
from typing import Any, cast

import faust
from faust.types import TP
from mode.types.signals import SignalHandlerT

from .. import __version__
from ..batching.batcher import MicroBatcher
from ..batching.layout import batch_limits
from ..config import Settings, describe
from ..errors import InputLostError, WorkerError
from ..lifecycle import AsyncLifecycle
from ..observability.metrics import WorkerMetrics
from ..observability.runtime import RuntimeMonitor
from ..observability.tracing import build_tracing
from ..observability.tracing_interface import Tracing
from ..qa import QAEngine, QAOptions
from ..tagging import load_question_sets, parse_topic_sets
from .app import CommitSensor, Topics, build_app, check_topic_roles
from .faust_private import abandon_unacked, committed_offsets
from .offsets import OffsetTracker, Tracked
from .pipeline import EventPipeline
from .reachability import CONNECT_WITHIN_S, BrokerWatch
from .records import ReadAt
from .watchdog import PartitionWatchdog

__all__ = ["QAWorker"]

log = logging.getLogger(__name__)

# How often consumer lag and readiness are refreshed for /metrics.
LAG_REFRESH_S = 1.0
# Spans still buffered at stop are exported within what is left of the drain timeout, but at
# least this long, so a drain that used all of its time still sends its spans: a stop then takes
# at most the drain timeout plus this (the Helm chart's grace period leaves more).
MIN_TRACING_FLUSH_S = 1.0


def _as_tp(tp: Hashable) -> TP:
    """faust's own TP for a message's partition (aiokafka's TopicPartition), which faust's
    consumer requires of the partitions it resumes."""
    topic, partition = cast(tuple[str, int], tp)
    return TP(topic, partition)


def release_payload(event: faust.types.EventT) -> None:
    """Drops an answered event's key, value and headers: it may wait a long time, behind an
    earlier event of its partition, to be acknowledged, which needs only where it was read."""
    message = event.message
    event.key = event.value = message.key = message.value = None
    event.headers = {}
    message.headers = []


class QAWorker(AsyncLifecycle):
    """One worker process's consumer: `start()`, then `stop()` drains and commits.

    `start()` and `stop()` may each be called more than once (by a signal and by a `finally`,
    say): a second `start()` does nothing, and every `stop()` after the first waits for the first
    one and returns its result.
    """

    def __init__(
        self,
        settings: Settings,
        engine: QAEngine,
        metrics: WorkerMetrics,
        on_fatal: Callable[[BaseException], None] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """`tracing` defaults to the one `settings.tracing` names, which `stop()` shuts down."""
        self.settings = settings
        self._owns_tracing = tracing is None
        self.tracing = build_tracing(settings) if tracing is None else tracing
        self.engine = engine
        self.metrics = metrics
        self._on_fatal = on_fatal
        model_name = settings.model.name if settings.model else ""
        metrics.set_model_info(
            model=model_name,
            model_type=engine.manifest.model_type,
            precision=settings.precision or engine.manifest.default_precision,
            checksum=engine.model_id,
            worker_version=__version__,
        )
        self.batcher = MicroBatcher(
            engine,
            batch_limits(settings),
            observer=metrics,
            tracing=self.tracing,
            work_budget=settings.max_pending_windows,
        )
        self._topic_sets = parse_topic_sets(settings.documents_topics)
        question_sets = (
            load_question_sets(settings.question_sets, settings.subset(QAOptions))
            if settings.question_sets is not None
            else {}
        )
        check_topic_roles(settings, question_sets)
        self.tracker = OffsetTracker(
            settings.max_in_flight,
            pause=self._pause_partition,
            resume=self._resume_partition,
            partitions=lambda: len(self.assigned_partitions()),
        )
        # Event-loop lag and GC pauses, from the consumer's start to the end of the drain.
        self.runtime = RuntimeMonitor(metrics)
        self._tasks: set[asyncio.Task[None]] = set()
        # When each event in flight was read (monotonic), for the oldest-in-flight gauge.
        self._read_at: dict[Tracked, float] = {}
        self._fatal: BaseException | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._started = False
        self._stopping: asyncio.Future[bool] | None = None
        # faust creates a table folder in its data dir even with no tables; a private temporary
        # one keeps the worker runnable on a read-only root filesystem.
        self._datadir = tempfile.TemporaryDirectory(prefix="qa-worker-faust-")
        configured = {
            settings.answers_topic: describe("answers_topic"),
            settings.dead_letter_topic: describe("dead_letter_topic"),
        }
        if self._topic_sets:
            configured[settings.tags_topic] = describe("tags_topic")
        read = {settings.questions_topic: describe("questions_topic")}
        read.update(dict.fromkeys(self._topic_sets, describe("documents_topics")))
        self.broker_watch = BrokerWatch(settings, topics={**read, **configured})
        self.watchdog = PartitionWatchdog(settings.stall_timeout_s)
        self.app = self._build_app()
        self.pipeline = EventPipeline.from_settings(
            settings,
            self.batcher,
            self.topics,
            configured,
            (model_name, engine.model_id),
            question_sets,
            self._topic_sets,
            metrics,
            self.tracing,
        )
        metrics.watch_oldest_in_flight(self.oldest_in_flight_s)
        metrics.watch_work(lambda: self.batcher.held_windows, lambda: self.batcher.pending_windows)

    def _build_app(self) -> faust.App:
        settings = self.settings
        app = build_app(settings, self._datadir.name, on_fetch_failure=self._fetch_failed)
        self.topics = Topics(app, hold=self.broker_watch.wait_for)
        for name in (settings.answers_topic, settings.dead_letter_topic):
            self.topics(name)
        questions = self.topics.subscribe(settings.questions_topic)
        app.agent(questions, name="answer-questions")(self._consume)
        if self._topic_sets:
            documents = self.topics.subscribe(*self._topic_sets)
            self.topics(settings.tags_topic)
            app.agent(documents, name="tag-documents")(self._consume)
        app.sensors.add(CommitSensor(self.metrics, lambda: app.monitor.tp_committed_offsets))
        # mypy cannot match a bound method to mode's receiver type (a mypy_extensions Callable).
        app.on_partitions_revoked.connect(cast(SignalHandlerT, self._revoked))
        return app

    # lifecycle

    async def start(self) -> None:
        """Warms the engine up, then starts the batcher, the consumer, the lag refresh and the
        runtime monitor (event-loop lag, GC pauses); a second call does nothing.

        The warm-up (`QAEngine.warm_up`, on the batcher's batch shapes) comes first: readiness
        needs the consumer started, so the worker is not ready, and takes no partition, before
        the first runs' costs are paid. It runs off the event loop, which keeps `/healthz`
        answering. Raises SetupError when the model fails it.

        Raises ConfigError, naming the settings, when the broker cannot be reached within the
        longer of CONNECT_WITHIN_S and the session timeout (a wrong address, or TLS or SASL
        that do not match its listener), or does not have every configured topic by then.
        """
        if self._started:
            return
        self._started = True
        warm_up_began = time.perf_counter()
        shapes = await asyncio.to_thread(self.engine.warm_up, batch_limits(self.settings))
        log.info(
            "warmed up the model in %.2f s: batches of %s windows x tokens on each of %d "
            "inference streams",
            time.perf_counter() - warm_up_began,
            ", ".join(f"{windows}x{tokens}" for windows, tokens in shapes),
            self.engine.streams,
        )
        await self.broker_watch.connect(max(CONNECT_WITHIN_S, self.settings.session_timeout_s))
        self.broker_watch.start()
        await self.batcher.start()
        await self.app.start()
        await self.runtime.start()
        self._lag_task = asyncio.create_task(self._refresh_lag())

    async def stop(self) -> bool:
        """Stops fetching, finishes what is in flight, commits, then stops the engine.

        Returns False when in-flight work did not finish within `drain_timeout_s`; its offsets
        stay uncommitted, so those events are answered again after a restart.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        return await self._stopping

    async def _stop(self) -> bool:
        deadline = time.monotonic() + self.settings.drain_timeout_s
        self.metrics.set_ready(False)
        if self._lag_task is not None:
            self._lag_task.cancel()
        await self.broker_watch.close()
        # Not wait_for: mode shields a service's stop from cancellation, so wait_for would wait
        # for the whole stop however long it takes. A stop still running at the deadline is left
        # to the caller, which must then exit without waiting for it.
        stopping = asyncio.ensure_future(self.app.stop())
        done, _ = await asyncio.wait({stopping}, timeout=self.settings.drain_timeout_s)
        if stopping not in done:
            # faust's stop waits for the ack of every event fetched, and those buffered behind
            # its agent, which stops only after that wait, are never acked: without this the
            # stop never ends, nor does closing the event loop that runs it.
            abandon_unacked(self.app.consumer)
        drained = stopping in done and stopping.exception() is None
        if stopping in done and stopping.exception() is not None:
            log.error("stopping the Kafka app failed", exc_info=stopping.exception())
        elif not drained and self.tracker.count:
            log.error(
                "%d events still in flight after %.0f s; exiting without committing them",
                self.tracker.count,
                self.settings.drain_timeout_s,
            )
        elif not drained:
            # Nothing was in flight: what did not finish is the Kafka client's own stop (its
            # last commit, leaving the group), which waits on a broker that is not answering.
            log.error(
                "the Kafka client did not stop within %.0f s (%s), with no event in flight: "
                "nothing is lost; the broker may be unreachable",
                self.settings.drain_timeout_s,
                describe("drain_timeout_s"),
            )
        if drained:
            await self.batcher.stop()
        # Else the batcher would answer everything still submitted first, which is the very
        # work that ran out of time; the process is about to exit without it.
        await self.runtime.stop()
        self._datadir.cleanup()
        if self._owns_tracing:
            # The SDK's own shutdown ignores OTEL_BSP_EXPORT_TIMEOUT and may wait up to 30 s on
            # a collector that does not answer; this one returns within its bound.
            flush_s = max(deadline - time.monotonic(), MIN_TRACING_FLUSH_S)
            await asyncio.to_thread(self.tracing.shutdown, flush_s)
        return drained

    def readiness(self) -> tuple[bool, str]:
        if self._fatal is not None:
            return False, f"stopping after a fatal error: {self._fatal}"
        if self._stopping is not None:
            return False, "stopping: draining in-flight events"
        unreachable_s = self.broker_watch.unreachable_for()
        if unreachable_s > self.settings.session_timeout_s:
            return False, f"the broker has not answered for {unreachable_s:.0f} s"
        failing_s = self.pipeline.delivery.failing_for()
        if failing_s > self.settings.session_timeout_s:
            return False, f"delivery has been failing for {failing_s:.0f} s (see the log)"
        if self.broker_watch.missing_topics():
            missing = self.broker_watch.describe_missing()
            return False, f"configured topic {missing} is not in the broker's metadata"
        stalled = self.watchdog.stalled()
        if stalled:
            more = f" (and {len(stalled) - 1} more)" if len(stalled) > 1 else ""
            limit = f"{describe('stall_timeout_s')} is {self.settings.stall_timeout_s:g} s"
            return False, f"stalled: {stalled[0]}{more}; {limit}"
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

    def oldest_in_flight_s(self) -> float:
        """Seconds since the oldest event still in flight was read; 0 when none is."""
        if not self._read_at:
            return 0.0
        return time.monotonic() - min(self._read_at.values())

    @property
    def input_topics(self) -> list[str]:
        return [self.settings.questions_topic, *self._topic_sets]

    # consuming

    async def _consume(self, stream: faust.StreamT[Any]) -> None:
        """An agent's body: every event goes through the pipeline, each partition's at most its
        share of max_in_flight at once (the tracker parks the rest, and pauses the partition)."""
        # Agents are handed a faust.Stream; the StreamT protocol leaves out noack().
        async for event in cast(faust.Stream[Any], stream).noack().events():

            def begin(tracked: Tracked, event: faust.types.EventT = event) -> None:
                self._spawn(self._handle(event, tracked))

            self.tracker.track(event, begin)
            self.metrics.set_in_flight(self.tracker.count)

    def _pause_partition(self, tp: Hashable) -> None:
        partition = _as_tp(tp)
        self.app.consumer.pause_partitions([partition])
        # A busy partition reaches its share at every turn, so this is routine, not news.
        log.debug(
            "paused reading partition %d of %r: it holds more than its share (%d) of %s being "
            "answered, or that many not acknowledged yet",
            partition.partition,
            partition.topic,
            self.tracker.share(),
            describe("max_in_flight"),
        )

    def _resume_partition(self, tp: Hashable) -> None:
        partition = _as_tp(tp)
        self.app.consumer.resume_partitions([partition])
        log.debug("resumed reading partition %d of %r", partition.partition, partition.topic)

    def _revoked(self, sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        """faust's on_partitions_revoked receiver: sent (app, revoked) once they are drained."""
        revoked: Set[TP] = args[0]
        self.tracker.forget(revoked)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        self.metrics.set_in_flight(self.tracker.count)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            # A record no event can get past, or a bug (every failure of one event becomes a
            # dead letter); the event stays unacknowledged, so the process must restart.
            self._fail(error, "event handling failed")

    def _fail(self, error: BaseException, what: str) -> None:
        """Stops the worker for `error`: not ready, one CRITICAL line naming the cause (`what`,
        and the error itself), and the caller told (`on_fatal`). The first cause is the one
        readiness reports."""
        if self._fatal is None:
            self._fatal = error
            self.metrics.set_ready(False)
            if isinstance(error, WorkerError):
                log.critical("stopping: %s", error)
            else:
                log.critical("stopping: %s: %r", what, error, exc_info=error)
        if self._on_fatal is not None:
            self._on_fatal(error)

    def _check_inputs_still_there(self) -> None:
        for topic, setting in self.broker_watch.missing_topics().items():
            if topic in self.input_topics:
                self._input_lost(f"the topic {topic!r} ({setting}) was deleted", topic)

    def _input_lost(self, what: str, topic: str) -> None:
        """Stops the worker: positions committed on a log that is gone would skip records of the
        one that replaces it, and which ones cannot be known from here."""
        if self._fatal is not None or self._stopping is not None:
            return
        self._fail(
            InputLostError(
                f"{what} while the worker read it, so the group's committed offsets would skip "
                f"the first records of the topic that now has its name. Once the topic exists, "
                f"reset the offsets of group {self.settings.group_id!r} on it "
                f"(kafka-consumer-groups --group {self.settings.group_id} --topic {topic} "
                "--reset-offsets --to-earliest --execute) and start the worker again"
            ),
            "a topic the worker reads was lost",
        )

    def _fetch_failed(self, error: BaseException) -> None:
        """The transport's report of an error that ended faust's fetch loop: nothing more is
        read on any partition, so the worker stops rather than stay ready reading nothing."""
        if self._stopping is not None:
            # Fetching ends with every stop; what fails while it does loses nothing.
            log.info("fetching ended while stopping: %r", error)
            return
        self._fail(error, "fetching records failed")

    async def _handle(self, event: faust.types.EventT, tracked: Tracked) -> None:
        read = ReadAt.now()
        self._read_at[tracked] = read.monotonic
        try:
            await self.pipeline.process(event.message, read)
        finally:
            self._read_at.pop(tracked, None)
        release_payload(event)
        await self.tracker.complete(tracked)
        self.metrics.set_in_flight(self.tracker.count)

    async def _refresh_lag(self) -> None:
        while True:
            self._check_inputs_still_there()
            lags = {}
            progress = {}
            # The group's committed offsets, not the monitor's (faust_private.committed_offsets
            # says why).
            committed = committed_offsets(self.app.consumer)
            for tp in self.assigned_partitions():
                highwater = self.app.consumer.highwater(tp)
                if highwater is not None:
                    committed_offset = committed.get(tp) or 0
                    if highwater < committed_offset:
                        self._input_lost(
                            f"partition {tp.partition} of {tp.topic!r} ends at offset "
                            f"{highwater:,}, below the group's committed offset "
                            f"{committed_offset:,}: the topic was deleted and recreated, or its "
                            "log cut short",
                            tp.topic,
                        )
                    key = (tp.topic, tp.partition)
                    lags[key] = max(0, highwater - committed_offset)
                    progress[key] = (committed_offset, lags[key])
            self.metrics.set_lags(lags)
            working = {lane for lane in self.batcher.lanes_run() if lane in progress}
            self.watchdog.observe(progress, working)
            stalled = {(stall.topic, stall.partition) for stall in self.watchdog.stalled()}
            self.metrics.set_stalled({key: key in stalled for key in progress})
            self.metrics.set_ready(self.readiness()[0])
            await asyncio.sleep(LAG_REFRESH_S)
