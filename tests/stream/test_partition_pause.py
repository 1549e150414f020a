"""One partition's slow event pauses that partition alone.

Events answered behind a slow event of their partition cannot be acknowledged before it. They
must not count against `--max-in-flight` as events being answered, or a long event at the head
of one partition stops the reading of every partition once the answered events behind it fill
the limit; instead that partition alone is paused until its head is answered.
"""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import faust
import pytest
from aiokafka import AIOKafkaProducer
from faust.events import Event
from faust.transport.consumer import ConsumerMessage
from faust.types import TP

from parity import texts
from tests.support.streaming import (
    ANSWERS,
    DEAD_LETTERS,
    QUESTIONS,
    TopicWatcher,
    committed_offsets,
    create_topics,
    question_values,
    wait_until,
    worker_settings,
)
from worker.embedded.broker import EmbeddedBroker
from worker.model.loading import load_engine
from worker.observability.metrics import WorkerMetrics
from worker.qa import QAEngine
from worker.qa.windows import Window
from worker.stream import QAWorker
from worker.stream.offsets import OffsetTracker, Tracked
from worker.stream.worker import release_payload

PARTITIONS = 2
LIMIT = 4
HEAVY_QUESTION = "Which question holds its partition?"


class HeadHeldEngine:
    """A real engine whose inference of one question's windows waits until the test lets it go.

    The question is known by its text when encoded, its first window by identity when inferred.
    """

    def __init__(self, engine: QAEngine) -> None:
        self._engine = engine
        self.manifest = engine.manifest
        self.model_id = engine.model_id
        self.streams = engine.streams
        self.released = threading.Event()
        self.entered = threading.Event()
        self._held: set[int] = set()

    def encode(self, question: str, context: str) -> object:
        encoded = self._engine.encode(question, context)
        if question == HEAVY_QUESTION:
            # One window only: held on one stream, it leaves the other free.
            self._held.add(id(encoded.windows[0]))
        return encoded

    def infer(self, windows: Sequence[Window], stream: int) -> list:
        if any(id(window) in self._held for window in windows):
            self.entered.set()
            assert self.released.wait(120), "the test never released the held question"
        return self._engine.infer(windows, stream)

    def decode(self, encoded: object, logits: list, options: object) -> object:
        return self._engine.decode(encoded, logits, options)  # type: ignore[arg-type]

    def warm_up(self, limits: object) -> object:
        return self._engine.warm_up(limits)  # type: ignore[arg-type]


async def send_to(bootstrap: str, partition: int, values: Sequence[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(QUESTIONS, value, partition=partition)
    finally:
        await producer.stop()


def answered(watcher: TopicWatcher, prefix: str) -> set[str]:
    return {event_id for event_id in watcher.ids() if event_id.startswith(prefix)}


@asynccontextmanager
async def held_worker(
    model: Path, inference_streams: int
) -> AsyncIterator[tuple[QAWorker, HeadHeldEngine]]:
    """A ready worker on a broker of its own, LIMIT in flight, answering with a HeadHeldEngine
    that lets every held question go before the worker stops."""
    async with EmbeddedBroker() as broker:
        await create_topics(broker, PARTITIONS)
        settings = worker_settings(
            broker.bootstrap_servers,
            model,
            max_in_flight=LIMIT,
            inference_streams=inference_streams,
        )
        engine = HeadHeldEngine(load_engine(settings))
        worker = QAWorker(settings, engine, WorkerMetrics())  # type: ignore[arg-type]
        await worker.start()
        try:
            await wait_until(lambda: worker.readiness()[0], 30, "the worker to be ready")
            yield worker, engine
        finally:
            engine.released.set()
            await worker.stop()


@pytest.mark.broker
async def test_a_held_event_pauses_its_partition_and_not_the_others(
    exported_models: dict[str, Path],
) -> None:
    pairs = texts.pairs(seed=41, count=2 * LIMIT + 1)
    (heavy,) = question_values([(HEAVY_QUESTION, pairs[0][1])], prefix="heavy")
    # More behind the held one than the limit, on its partition and on the other.
    behind = question_values(pairs[1:], prefix="behind")
    beside = question_values(pairs[1:], prefix="beside")
    async with held_worker(exported_models["bert"], inference_streams=2) as (worker, engine):
        server = worker.settings.broker
        async with TopicWatcher(server, [ANSWERS, DEAD_LETTERS]) as answers:
            await send_to(server, 0, [heavy])
            await wait_until(engine.entered.is_set, 30, "the held question's inference")
            await send_to(server, 0, behind)
            held = TP(QUESTIONS, 0)
            await wait_until(lambda: held in worker.tracker.paused, 30, "partition 0 paused")
            await send_to(server, 1, beside)
            await wait_until(
                lambda: len(answered(answers, "beside")) == len(beside),
                60,
                "every question of partition 1 answered while partition 0 is held",
            )
            assert not answered(answers, "heavy")
            # Partition 0 stays paused: what it read beyond the limit was already fetched.
            assert worker.tracker.paused == {held}
            assert worker.tracker.answering == 1
            engine.released.set()
            total = 1 + len(behind) + len(beside)
            await wait_until(lambda: len(set(answers.ids())) == total, 60, "every answer")
        await wait_until(lambda: not worker.tracker.paused, 10, "partition 0 resumed")
        expected = {0: 1 + len(behind), 1: len(beside)}

        async def all_committed() -> bool:
            committed = await committed_offsets(server, worker.settings.group_id, PARTITIONS)
            return committed == expected

        await wait_until(all_committed, 30, "both partitions committed to their ends")


def test_an_answered_event_keeps_only_where_it_was_read() -> None:
    """What waits behind a partition's earliest event costs a few hundred bytes, whatever its
    record's size."""
    app = faust.App("held-events")
    tp = TP(QUESTIONS, 0)
    tracker = OffsetTracker(limit=10_000)
    started: list[Tracked] = []
    payload = 100_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for offset in range(100):
            message = ConsumerMessage(
                topic=QUESTIONS,
                partition=0,
                offset=offset,
                timestamp=0.0,
                timestamp_type=0,
                headers=[("traceparent", bytes(payload))],
                key=bytes(payload),
                value=bytes(payload),
                checksum=None,
                tp=tp,
            )
            event = Event(app, message.key, message.value, dict(message.headers or []), message)
            tracker.track(event, started.append)
            release_payload(event)
        held = (tracemalloc.get_traced_memory()[0] - before) / 100
    finally:
        tracemalloc.stop()
    assert tracker.count == 100
    assert held < 1_000, f"{held:.0f} bytes a held event, against records of {3 * payload:,}"


@pytest.mark.broker
async def test_a_partition_past_its_share_keeps_no_other_from_being_read(
    exported_models: dict[str, Path],
) -> None:
    """Twice the in-flight limit of held events on one partition: it answers its share of the
    limit at once and parks the rest, so a question on the other partition is read and answered
    while every one of them is held."""
    pairs = texts.pairs(seed=43, count=2 * LIMIT + 1)
    heavy = question_values([(HEAVY_QUESTION, context) for _, context in pairs[:-1]], "heavy")
    light = question_values(pairs[-1:], prefix="light")
    # A stream more than the share, so the held events leave one free for the light one.
    async with held_worker(exported_models["bert"], inference_streams=3) as (worker, engine):
        server = worker.settings.broker
        share = worker.tracker.share()
        assert share == LIMIT // PARTITIONS
        async with TopicWatcher(server, [ANSWERS, DEAD_LETTERS]) as answers:
            await send_to(server, 0, heavy)
            await wait_until(lambda: worker.tracker.parked > 0, 30, "partition 0's rest parked")
            await send_to(server, 1, light)
            await wait_until(
                lambda: answered(answers, "light") == {"light0"},
                60,
                "the light question answered while partition 0's are held",
            )
            assert not answered(answers, "heavy")
            assert worker.tracker.answering == share
            assert TP(QUESTIONS, 0) in worker.tracker.paused
            engine.released.set()
            total = len(heavy) + len(light)
            await wait_until(lambda: len(set(answers.ids())) == total, 60, "every answer")
        assert worker.tracker.parked == 0
