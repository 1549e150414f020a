"""`qa-worker produce` and `consume`: questions sent to a topic, events printed from topics."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncGenerator, Iterable, Mapping
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from ..config import Settings
from ..squad import read_questions
from ..stream.transport import aiokafka_options

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


def command_produce(args: argparse.Namespace) -> int:
    settings = Settings.from_sources(args)
    events = question_events(args.input, args.count)
    topic = args.topic or settings.questions_topic
    sent = asyncio.run(produce(settings, events, topic))
    print(f"sent {sent} questions to {topic}", file=sys.stderr)
    return 0


def command_consume(args: argparse.Namespace) -> int:
    settings = Settings.from_sources(args)
    topics = args.topic or [settings.answers_topic]

    async def print_events() -> None:
        received = 0
        async for _topic, event in consume(settings, topics, args.from_beginning, args.timeout):
            print(json.dumps(event, ensure_ascii=False), flush=True)
            received += 1
            if args.count is not None and received >= args.count:
                return

    asyncio.run(print_events())
    return 0
