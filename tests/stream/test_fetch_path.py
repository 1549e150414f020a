"""What the worker reads and writes through the broker, with a Kafka client it did not write.

Questions come in every Kafka codec from librdkafka (confluent-kafka), among them batches whose
header keys are not UTF-8, and the answers the worker produces with each `--compression-type`
are read back by librdkafka and checked batch by batch for their codec. A fetch loop that fails
stops the worker loudly, and a partition that stops moving is named by the watchdog.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path

import confluent_kafka
import pytest
from prometheus_client.parser import text_string_to_metric_families

from parity import texts
from tests.support import records
from tests.support.held_engines import GatedEngine, SlowEngine
from tests.support.streaming import (
    ANSWERS,
    DEAD_LETTERS,
    QUESTIONS,
    collect,
    create_topics,
    produce,
    question_values,
    wait_until,
    worker_settings,
)
from tests.support.worker_process import worker_process
from worker.embedded.broker import EmbeddedBroker
from worker.model.loading import load_engine
from worker.observability.metrics import WorkerMetrics
from worker.stream import QAWorker
from worker.stream.faust_private import install_lenient_header_keys
from worker.stream.header_keys import LenientMemoryRecords

pytestmark = pytest.mark.broker

PARTITIONS = 2
PER_CODEC = 6


def librdkafka_produce(bootstrap: str, compression: str, values: list[bytes]) -> None:
    """Sends `values` with librdkafka's producer and `compression.type`; waits for every ack."""
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": compression,
            # Several records per batch, so the codec has something to compress.
            "linger.ms": 50,
        }
    )
    failures: list[object] = []
    for value in values:
        producer.produce(
            QUESTIONS, value=value, on_delivery=lambda error, _: error and failures.append(error)
        )
    assert producer.flush(30) == 0
    assert failures == []


def librdkafka_read(bootstrap: str, topics: list[str], until: int, timeout: float) -> list:
    """Reads the topics' partitions from the start with librdkafka until `until` messages."""
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "librdkafka-reader",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
        }
    )
    consumer.assign(
        [
            confluent_kafka.TopicPartition(topic, partition, confluent_kafka.OFFSET_BEGINNING)
            for topic in topics
            for partition in range(PARTITIONS)
        ]
    )
    read: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(read) < until and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None:
                assert message.error() is None, message.error()
                read.append(message)
    finally:
        consumer.close()
    return read


@pytest.fixture
def batch_codecs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The codec of every record batch aiokafka's fetchers read in this process from now on."""
    install_lenient_header_keys()
    seen: list[int] = []
    original = LenientMemoryRecords.next_batch

    def next_batch(self: LenientMemoryRecords) -> object:
        batch = original(self)
        if batch is not None:
            seen.append(batch.compression_type)  # type: ignore[attr-defined]
        return batch

    monkeypatch.setattr(LenientMemoryRecords, "next_batch", next_batch)
    return seen


async def test_questions_in_every_codec_are_answered_and_bad_header_keys_dead_lettered(
    exported_models: dict[str, Path], batch_codecs: list[int]
) -> None:
    model = exported_models["bert"]
    pairs = texts.pairs(seed=31, count=PER_CODEC * 2)
    async with EmbeddedBroker() as broker:
        await create_topics(broker, PARTITIONS)
        server = broker.bootstrap_servers
        settings = worker_settings(server, model)
        worker = QAWorker(settings, load_engine(settings), WorkerMetrics())
        await worker.start()
        try:
            for codec in records.CODECS:
                values = question_values(pairs[:PER_CODEC], prefix=f"{codec}-")
                await asyncio.to_thread(librdkafka_produce, server, codec, values)
                # A batch in the same codec with a header key that is not UTF-8 in the middle.
                around = question_values(pairs[PER_CODEC : PER_CODEC + 2], prefix=f"raw-{codec}-")
                poison = json.dumps({"id": f"bad-{codec}", "question": "q?", "context": "c"})
                batch = records.batch(
                    [
                        (None, around[0], [(b"traceparent", b"00-0")]),
                        (b"key", poison.encode(), [(b"ok", b"1"), (b"bad\xc3\x28key", b"v")]),
                        (None, around[1], []),
                    ],
                    codec,
                )
                await records.produce_raw(server, QUESTIONS, 0, batch)
            expected = len(records.CODECS) * (PER_CODEC + 3)
            read = await asyncio.to_thread(
                librdkafka_read, server, [ANSWERS, DEAD_LETTERS], expected, 90
            )
            assert worker.readiness() == (True, "model loaded, partitions assigned")
        finally:
            await worker.stop()
    answers = [json.loads(m.value()) for m in read if m.topic() == ANSWERS]
    letters = [json.loads(m.value()) for m in read if m.topic() == DEAD_LETTERS]
    answered = Counter(answer["id"].split("-")[0] for answer in answers)
    raw = Counter(answer["id"].split("-")[1] for answer in answers if answer["id"][:4] == "raw-")
    print("\ncodec   questions answered (librdkafka producer), around a bad key, dead letters")
    for codec in records.CODECS:
        dead = sum(1 for letter in letters if letter["id"] == f"bad-{codec}")
        print(f"{codec:7} {answered[codec]:>3}/{PER_CODEC}  {raw[codec]:>3}/2  {dead}/1")
    assert {codec: answered[codec] for codec in records.CODECS} == dict.fromkeys(
        records.CODECS, PER_CODEC
    )
    assert raw == dict.fromkeys(records.CODECS, 2)
    assert sorted(letter["id"] for letter in letters) == sorted(f"bad-{c}" for c in records.CODECS)
    for letter in letters:
        assert letter["error"]["code"] == "invalid_event"
        assert "b'bad\\xc3(key'" in letter["error"]["message"]
    # The dead letters carry the event's headers on, the bad key escaped.
    headers = [m.headers() for m in read if m.topic() == DEAD_LETTERS]
    assert all(("bad\\xc3(key", b"v") in pairs for pairs in headers)
    # The worker really read batches of every codec.
    assert set(batch_codecs) >= set(records.CODECS.values()), Counter(batch_codecs)


async def test_the_worker_produces_with_every_compression_type(
    exported_models: dict[str, Path], batch_codecs: list[int]
) -> None:
    model = exported_models["bert"]
    values = question_values(texts.pairs(seed=32, count=PER_CODEC))
    async with EmbeddedBroker() as broker:
        await create_topics(broker, PARTITIONS)
        server = broker.bootstrap_servers
        await produce(server, values)
        read_back = {}
        for codec in records.CODECS:
            topic = f"answers-{codec}"
            await broker.create_topic(topic, PARTITIONS)
            settings = worker_settings(
                server, model, answers_topic=topic, group_id=f"g-{codec}", compression_type=codec
            )
            worker = QAWorker(settings, load_engine(settings), WorkerMetrics())
            await worker.start()
            try:
                read_back[codec] = await asyncio.to_thread(
                    librdkafka_read, server, [topic], PER_CODEC, 60
                )
            finally:
                await worker.stop()
        # Every worker has stopped: what aiokafka fetches now is only the answers read below.
        batch_codecs.clear()
        codecs_of = {}
        for codec in records.CODECS:
            await read_with_aiokafka(server, f"answers-{codec}", PER_CODEC)
            codecs_of[codec] = set(batch_codecs)
            batch_codecs.clear()
    print("\ncodec   answers produced by the worker, read by librdkafka, batch codecs seen")
    for codec in records.CODECS:
        print(f"{codec:7} {len(read_back[codec])}/{PER_CODEC}  {sorted(codecs_of[codec])}")
    for codec, number in records.CODECS.items():
        ids = sorted(json.loads(m.value())["id"] for m in read_back[codec])
        assert ids == sorted(json.loads(v)["id"] for v in values), codec
        assert codecs_of[codec] == {number}, codec


async def read_with_aiokafka(bootstrap: str, topic: str, until: int) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        count = 0
        deadline = time.monotonic() + 30
        while count < until and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            count += sum(len(batch) for batch in batches.values())
        assert count == until
    finally:
        await consumer.stop()


async def test_an_error_in_the_fetch_loop_makes_the_worker_not_ready_naming_it(
    exported_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = exported_models["bert"]
    values = question_values(texts.pairs(seed=33, count=4))
    failures: list[BaseException] = []
    async with EmbeddedBroker() as broker:
        await create_topics(broker, PARTITIONS)
        server = broker.bootstrap_servers
        settings = worker_settings(server, model)
        metrics = WorkerMetrics()
        worker = QAWorker(settings, load_engine(settings), metrics, on_fatal=failures.append)
        await worker.start()
        try:
            await wait_until(lambda: worker.readiness()[0], 30, "the worker to be ready")

            def broken(self: LenientMemoryRecords) -> object:
                raise RuntimeError("injected: the fetch path broke")

            monkeypatch.setattr(LenientMemoryRecords, "next_batch", broken)
            await produce(server, values)
            await wait_until(lambda: failures, 30, "the fetch failure to be reported")
            ready, reason = worker.readiness()
            assert not ready
            assert "injected: the fetch path broke" in reason
            assert "qa_worker_ready 0.0" in metrics.render().decode()
        finally:
            await worker.stop()
    assert isinstance(failures[0], RuntimeError)


async def test_a_codec_the_client_cannot_read_stops_the_worker_with_a_critical_line(
    exported_models: dict[str, Path], tmp_path: Path
) -> None:
    # The worker process finds no cramjam, as an image without it would: lz4 cannot be read.
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "cramjam.py").write_text('raise ImportError("cramjam is blocked by the test")\n')
    log = tmp_path / "worker.log"
    async with EmbeddedBroker() as broker:
        await create_topics(broker, PARTITIONS)
        server = broker.bootstrap_servers
        settings = worker_settings(server, exported_models["bert"], http_port=0)
        with worker_process(
            settings, log, extra_environment={"PYTHONPATH": str(blocked)}
        ) as process:
            await wait_until(
                lambda: "answering questions" in log.read_text(errors="replace"),
                60,
                "the worker to start",
            )
            await asyncio.to_thread(
                librdkafka_produce, server, "lz4", question_values(texts.pairs(seed=34, count=4))
            )
            code = await asyncio.to_thread(process.wait, 60)
    output = log.read_text(errors="replace")
    assert code != 0, output[-3000:]
    critical = [line for line in output.splitlines() if "CRITICAL" in line]
    assert critical and "UnsupportedCodecError" in critical[0], output[-3000:]
    print(f"\nexit {code}: {critical[0]}")


async def test_a_partition_that_stops_moving_is_named_until_it_moves_again(
    exported_models: dict[str, Path],
) -> None:
    model = exported_models["bert"]
    values = question_values(texts.pairs(seed=35, count=8))
    async with EmbeddedBroker() as broker:
        await create_topics(broker, PARTITIONS)
        server = broker.bootstrap_servers
        settings = worker_settings(server, model, stall_timeout_s=1.5)
        engine = GatedEngine(load_engine(settings))
        metrics = WorkerMetrics()
        worker = QAWorker(settings, engine, metrics)  # type: ignore[arg-type]
        await worker.start()
        try:
            await wait_until(lambda: worker.readiness()[0], 30, "the worker to be ready")
            stored = await produce(server, values)
            await wait_until(lambda: not worker.readiness()[0], 30, "the watchdog to notice")
            reason = worker.readiness()[1]
            assert reason.startswith("stalled: partition ")
            assert "--stall-timeout-s / QA_STALL_TIMEOUT_S is 1.5 s" in reason
            behind = {partition for partition, _ in stored}
            expected = {p: int(p in behind) for p in range(PARTITIONS)}
            await wait_until(lambda: stalled_gauge(metrics) == expected, 5, "the stalled gauge")
            engine.gate.set()
            await wait_until(lambda: worker.readiness()[0], 30, "the partitions to move again")
            cleared = dict.fromkeys(range(PARTITIONS), 0)
            await wait_until(lambda: stalled_gauge(metrics) == cleared, 5, "the gauge to clear")
        finally:
            engine.gate.set()
            await worker.stop()


async def test_a_partition_working_through_a_long_event_is_not_stalled(
    exported_models: dict[str, Path],
) -> None:
    model = exported_models["bert"]
    rng = random.Random(36)
    context = texts.context(rng, 7000)
    async with EmbeddedBroker() as broker:
        await create_topics(broker, PARTITIONS)
        server = broker.bootstrap_servers
        settings = worker_settings(server, model, stall_timeout_s=1.5)
        engine = SlowEngine(load_engine(settings), seconds=0.25)
        windows = len(engine.encode(texts.question(rng), context).windows)  # type: ignore[attr-defined]
        # Longer than the stall timeout several times over, on either stream layout.
        assert windows * engine.seconds / engine.streams > 4 * settings.stall_timeout_s, windows
        worker = QAWorker(settings, engine, WorkerMetrics())  # type: ignore[arg-type]
        await worker.start()
        try:
            await wait_until(lambda: worker.readiness()[0], 30, "the worker to be ready")
            value = json.dumps({"id": "long", "question": texts.question(rng), "context": context})
            await produce(server, [value.encode()])
            reasons = set()
            answered = asyncio.ensure_future(collect(server, [ANSWERS], until=1, timeout=120))
            while not answered.done():
                reasons.add(worker.readiness()[1])
                await asyncio.sleep(0.1)
            (answer,) = answered.result()
            assert json.loads(answer.value)["id"] == "long"
            assert not [reason for reason in reasons if reason.startswith("stalled")], reasons
        finally:
            await worker.stop()


def stalled_gauge(metrics: WorkerMetrics) -> dict[int, int]:
    """qa_worker_partition_stalled by partition of the questions topic."""
    text = metrics.render().decode()
    (family,) = (
        f for f in text_string_to_metric_families(text) if f.name == "qa_worker_partition_stalled"
    )
    return {
        int(sample.labels["partition"]): int(sample.value)
        for sample in family.samples
        if sample.labels["topic"] == QUESTIONS
    }


async def test_a_crash_of_the_consumer_thread_makes_the_worker_not_ready_naming_it(
    exported_models: dict[str, Path],
) -> None:
    failures: list[BaseException] = []
    async with EmbeddedBroker() as broker:
        await create_topics(broker, PARTITIONS)
        settings = worker_settings(broker.bootstrap_servers, exported_models["bert"])
        worker = QAWorker(settings, load_engine(settings), WorkerMetrics(), failures.append)
        await worker.start()
        try:
            await wait_until(lambda: worker.readiness()[0], 30, "the worker to be ready")
            thread = worker.app.consumer._thread  # type: ignore[attr-defined]
            # Crashed as mode crashes it: on the thread's own loop.
            crashed = asyncio.run_coroutine_threadsafe(
                thread.crash(RuntimeError("injected: the consumer thread died")),
                thread.thread_loop,
            )
            await asyncio.wrap_future(crashed)
            await wait_until(lambda: failures, 10, "the crash to be reported")
            ready, reason = worker.readiness()
            assert not ready and "injected: the consumer thread died" in reason
        finally:
            await worker.stop()
