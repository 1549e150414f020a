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
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import RecordMetadata, TopicPartition

from worker.config import Settings, settings_environment
from worker.embedded.broker import FETCH_WAIT_MS

T = TypeVar("T")

QUESTIONS, ANSWERS, DEAD_LETTERS = "questions", "answers", "dead-letters"

# One client call against the local broker (a start, a stop, the acknowledgements of a test's
# records, a committed-offset query) takes seconds at most; past this bound the test fails naming
# the call, where an unbounded await would hang the suite with no trace of where.
CLIENT_CALL_TIMEOUT_S = 120.0


async def within(seconds: float, awaitable: Awaitable[T], what: str) -> T:
    """Awaits `awaitable`; fails the test naming `what` if it takes longer than `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        raise AssertionError(f"{what} did not finish within {seconds:g} s") from None


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
    await within(CLIENT_CALL_TIMEOUT_S, producer.start(), "starting the test's producer")
    try:

        async def send_all() -> list[RecordMetadata]:
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
            return list(await asyncio.gather(*deliveries))

        stored = await within(
            CLIENT_CALL_TIMEOUT_S, send_all(), f"producing {len(values)} test records"
        )
    finally:
        await within(CLIENT_CALL_TIMEOUT_S, producer.stop(), "stopping the test's producer")
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
    await within(CLIENT_CALL_TIMEOUT_S, consumer.start(), "starting the test's reader")
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < until and time.monotonic() < deadline:
            batches = await within(
                CLIENT_CALL_TIMEOUT_S, consumer.getmany(timeout_ms=200), "reading records"
            )
            for batch in batches.values():
                records.extend(
                    Record(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers))
                    for r in batch
                )
    finally:
        await within(CLIENT_CALL_TIMEOUT_S, consumer.stop(), "stopping the test's reader")
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
    await within(CLIENT_CALL_TIMEOUT_S, consumer.start(), "starting the offsets reader")
    try:
        result = {}
        for partition in range(partitions):
            offset = await within(
                CLIENT_CALL_TIMEOUT_S,
                consumer.committed(TopicPartition(QUESTIONS, partition)),
                f"reading group {group}'s committed offset of partition {partition}",
            )
            result[partition] = offset or 0
        return result
    finally:
        await within(CLIENT_CALL_TIMEOUT_S, consumer.stop(), "stopping the offsets reader")


async def wait_until(condition: object, timeout: float, what: str) -> None:
    """Polls an (async or plain) condition until true; fails with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            value = await within(
                max(deadline - time.monotonic(), 0.0), value, f"checking for {what}"
            )
        if value:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def wait_for_commits(
    bootstrap: str, group: str, stored: Iterable[tuple[int, int]], timeout: float
) -> None:
    """Waits until `group` has committed past every (partition, offset) in `stored`."""
    ends: dict[int, int] = {}
    for partition, offset in stored:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    partitions = max(ends, default=-1) + 1

    async def all_committed() -> bool:
        committed = await committed_offsets(bootstrap, group, partitions)
        return all(committed[p] == end for p, end in ends.items())

    await wait_until(all_committed, timeout, f"group {group} to commit {ends} (partition: end)")


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
