"""Streaming commands: `run` the worker, a self-contained `demo`, and `produce`/`consume` tools."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import AsyncGenerator, Iterable, Mapping
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from .config import Settings
from .http import HealthServer
from .loading import load_engine
from .log_rate import quiet_repeats
from .metrics import WorkerMetrics
from .squad import read_questions
from .stream import QAWorker
from .stream.transport import aiokafka_options

log = logging.getLogger(__name__)

SAMPLES = (
    (
        "Which company did Acme acquire?",
        "In March, Acme Corp. acquired the robotics startup Widget Inc. for $40 million after "
        "months of talks. The deal gives Acme a foothold in warehouse automation.",
    ),
    (
        "How tall is the Eiffel Tower?",
        "The Eiffel Tower was completed in 1889 and is 330 metres tall, including antennas.",
    ),
    (
        "Who won two Nobel Prizes?",
        "Marie Curie was the first person to win two Nobel Prizes, in physics and in chemistry.",
    ),
    (
        "What does the worker write to?",
        "The worker reads questions from one Kafka topic and writes answers to another, with "
        "events it cannot answer going to a dead-letter topic.",
    ),
    (
        "When did Apollo 11 land?",
        "Apollo 11 landed on the Moon on 20 July 1969; Neil Armstrong stepped out first.",
    ),
)


DEMO_QUESTION_SET = """\
acquisitions:
  fields:
    buyer: {question: "Which company made the acquisition?"}
    target: {question: "Which company was acquired?"}
    price: {question: "How much was paid?", null_threshold: 0.0}
"""

DEMO_DOCUMENTS = (
    "In March, Acme Corp. acquired the robotics startup Widget Inc. for $40 million after "
    "months of talks.",
    "Globex bought the analytics firm Initech on Tuesday; terms were not disclosed.",
    "Umbrella Health agreed to acquire Cyberdyne Labs for 1.2 billion euros in cash.",
)
DEMO_DOCUMENTS_TOPIC = "qa-documents"


async def run_worker(settings: Settings) -> int:
    """Runs until SIGTERM or SIGINT, then drains; non-zero when work was left unfinished."""
    quiet_repeats()
    engine = load_engine(settings)
    metrics = WorkerMetrics()
    stop = asyncio.Event()
    failures: list[BaseException] = []

    def fail(error: BaseException) -> None:
        failures.append(error)
        stop.set()

    worker = QAWorker(settings, engine, metrics, on_fatal=fail)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with HealthServer(metrics, worker.readiness, settings.http_host, settings.http_port):
        # SIGTERM is obeyed while starting too: faust may wait for the broker a long time.
        starting = asyncio.ensure_future(worker.start())
        signalled = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        if not starting.done():
            log.error("stopped while starting; nothing was consumed")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await worker.stop()
            return 1
        starting.result()
        log.info(
            "answering %s -> %s as group %s",
            settings.questions_topic,
            settings.answers_topic,
            settings.group_id,
        )
        await stop.wait()
        log.info("stopping: draining %d in-flight events", worker.tracker.count)
        drained = await worker.stop()
    return 0 if drained and not failures else 1


def question_events(path: Path | None, count: int | None) -> list[dict[str, object]]:
    """Questions from a JSONL or SQuAD file, or the built-in samples; `count` cycles them."""
    if path is None:
        base: list[dict[str, object]] = [
            {"id": f"sample-{i}", "question": q, "context": c} for i, (q, c) in enumerate(SAMPLES)
        ]
    elif path.suffix == ".jsonl":
        # Sent as written: events may carry per-event options the reader would drop.
        base = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    else:
        base = [
            {"id": record.id, "question": record.question, "context": record.context}
            for record in read_questions(path)
        ]
    if count is None:
        return base
    cycled = []
    for index in range(count):
        event = dict(base[index % len(base)])
        if index >= len(base):
            event["id"] = f"{event['id']}-{index // len(base)}"
        cycled.append(event)
    return cycled


async def produce(settings: Settings, events: Iterable[Mapping[str, object]], topic: str) -> int:
    producer = AIOKafkaProducer(acks="all", **aiokafka_options(settings))
    await producer.start()
    try:
        deliveries = [
            await producer.send(
                topic,
                key=str(event.get("id", "")).encode(),
                value=json.dumps(event, ensure_ascii=False).encode(),
            )
            for event in events
        ]
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return len(deliveries)


async def consume(
    settings: Settings, topics: list[str], from_beginning: bool, idle_timeout: float
) -> AsyncGenerator[tuple[str, dict[str, object]]]:
    """Yields (topic, event) until nothing arrives for `idle_timeout` seconds."""
    consumer = AIOKafkaConsumer(
        *topics,
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        **aiokafka_options(settings),
    )
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=int(idle_timeout * 1000))
            if not batches:
                return
            for records in batches.values():
                for record in records:
                    yield record.topic, json.loads(record.value)
    finally:
        await consumer.stop()


async def demo(
    settings: Settings, input_path: Path | None, count: int | None, tagging: bool, workdir: Path
) -> int:
    """Answers the questions, and with `tagging` also tags sample documents with a sample set."""
    from .broker import EmbeddedBroker

    events = question_events(input_path, count)
    topics = [settings.questions_topic, settings.answers_topic, settings.dead_letter_topic]
    if tagging:
        question_sets = workdir / "question-sets.yaml"
        question_sets.write_text(DEMO_QUESTION_SET, encoding="utf-8")
        settings = dataclasses.replace(
            settings,
            question_sets=question_sets,
            documents_topics=f"{DEMO_DOCUMENTS_TOPIC}=acquisitions",
        )
        topics += [DEMO_DOCUMENTS_TOPIC, settings.tags_topic]
    async with EmbeddedBroker() as broker:
        for topic in topics:
            await broker.create_topic(topic, 4)
        settings = dataclasses.replace(broker.worker_settings(settings), http_port=0)
        engine = load_engine(settings)
        metrics = WorkerMetrics()
        worker = QAWorker(settings, engine, metrics)
        await worker.start()
        try:
            listener = consume(settings, topics[1:], from_beginning=True, idle_timeout=60.0)
            sent = await produce(settings, events, settings.questions_topic)
            if tagging:
                documents = [
                    {"id": f"doc-{i}", "text": text} for i, text in enumerate(DEMO_DOCUMENTS)
                ]
                sent += await produce(settings, documents, DEMO_DOCUMENTS_TOPIC)
            print(f"sent {sent} questions to {broker.bootstrap_servers}", file=sys.stderr)
            received = 0
            async for topic, event in listener:
                if topic == DEMO_DOCUMENTS_TOPIC:
                    continue
                print(json.dumps(event, ensure_ascii=False), flush=True)
                received += 1
                if received == sent:
                    break
            with contextlib.suppress(Exception):
                await listener.aclose()
        finally:
            await worker.stop()
    return 0 if received == sent else 1
