"""Helpers for tests that run the worker against an embedded broker."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from worker.config import Settings, settings_environment
from worker.embedded.broker import FETCH_WAIT_MS

QUESTIONS, ANSWERS, DEAD_LETTERS = "questions", "answers", "dead-letters"


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    def json(self) -> dict:
        return json.loads(self.value)


def worker_settings(bootstrap: str, model: Path, **overrides: object) -> Settings:
    """Settings for a test worker: short group sessions so joins and takeovers take a second."""
    base = Settings(
        model=model,
        broker=bootstrap,
        questions_topic=QUESTIONS,
        answers_topic=ANSWERS,
        dead_letter_topic=DEAD_LETTERS,
        group_id="test-workers",
        session_timeout_s=1.0,
        commit_interval_s=0.2,
        fetch_max_wait_ms=FETCH_WAIT_MS,
        http_host="127.0.0.1",
        http_port=0,
        precision="fp32",
    )
    return dataclasses.replace(base, **overrides)


def start_worker_process(
    settings: Settings, log: Path, extra_environment: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env={**settings_environment(settings), **(extra_environment or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
        )


async def create_topics(broker: object, partitions: int = 4) -> None:
    for topic in (QUESTIONS, ANSWERS, DEAD_LETTERS):
        await broker.create_topic(topic, partitions)  # type: ignore[attr-defined]


async def produce(
    bootstrap: str,
    values: Sequence[bytes],
    keys: Sequence[bytes | None] | None = None,
    headers: Sequence[list[tuple[str, bytes]]] | None = None,
    topic: str = QUESTIONS,
) -> list[tuple[int, int]]:
    """Sends and waits for every acknowledgement; returns (partition, offset) of each value."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        deliveries = []
        for index, value in enumerate(values):
            deliveries.append(
                await producer.send(
                    topic,
                    value=value,
                    key=keys[index] if keys else None,
                    headers=headers[index] if headers else None,
                )
            )
        stored = await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return [(meta.partition, meta.offset) for meta in stored]


def question_values(pairs: Iterable[tuple[str, str]], prefix: str = "q") -> list[bytes]:
    return [
        json.dumps({"id": f"{prefix}{i}", "question": q, "context": c}).encode()
        for i, (q, c) in enumerate(pairs)
    ]


async def collect(
    bootstrap: str, topics: Sequence[str], until: int, timeout: float
) -> list[Record]:
    """Reads the topics from the start until `until` records arrived or `timeout` passed."""
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < until and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(
                    Record(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers))
                    for r in batch
                )
    finally:
        await consumer.stop()
    return records


class TopicWatcher:
    """Reads topics from the start in the background, so tests can poll what has arrived."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self.records: list[Record] = []
        self._consumer = AIOKafkaConsumer(
            *topics, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TopicWatcher:
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._consumer.stop()

    async def _read(self) -> None:
        async for r in self._consumer:
            self.records.append(
                Record(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers))
            )

    def ids(self) -> list[str]:
        return [record.json()["id"] for record in self.records]


async def committed_offsets(bootstrap: str, group: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        result = {}
        for partition in range(partitions):
            offset = await consumer.committed(TopicPartition(QUESTIONS, partition))
            result[partition] = offset or 0
        return result
    finally:
        await consumer.stop()


async def wait_until(condition: object, timeout: float, what: str) -> None:
    """Polls an (async or plain) condition until true; fails with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def kill_at_random_moments(
    settings: Settings,
    log: Path,
    output: TopicWatcher,
    wanted: int,
    most_kills: int,
    seed: int,
) -> int:
    """Starts `qa-worker run` and kills it with SIGKILL while it produces to `output`, again and
    again, until `most_kills` or `wanted` distinct ids arrived; then runs one to completion and
    stops it with SIGTERM. Returns how many times it was killed."""
    rng = random.Random(seed)
    kills = 0
    while kills < most_kills and len(set(output.ids())) < wanted:
        process = start_worker_process(settings, log)
        seen = len(output.records)
        await wait_until(
            lambda seen=seen, process=process: (
                len(output.records) > seen or process.poll() is not None
            ),
            timeout=90,
            what="the restarted worker to produce",
        )
        assert process.poll() is None, log.read_text()[-3000:]
        # A random moment while events flow: the point of the test.
        await asyncio.sleep(rng.uniform(0.0, 1.5))
        process.kill()
        process.wait()
        kills += 1
    process = start_worker_process(settings, log)
    try:
        await wait_until(
            lambda: len(set(output.ids())) >= wanted, timeout=300, what="every id to arrive"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    return kills
