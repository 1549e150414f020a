"""The partition watchdog on a clock the tests move: stalls at, under and over the timeout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from parity import texts
from tests.support.clock import FakeClock
from tests.support.streaming import (
    QUESTIONS,
    committed_offsets,
    create_topics,
    question_values,
    wait_until,
    worker_settings,
)
from worker.embedded.broker import EmbeddedBroker
from worker.model.loading import load_engine
from worker.observability.metrics import WorkerMetrics
from worker.stream import QAWorker
from worker.stream.watchdog import PartitionWatchdog
from worker.stream.worker import LAG_REFRESH_S

TIMEOUT = 300.0
P0, P1 = ("questions", 0), ("questions", 1)
PARTITIONS = 2


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def stalled_keys(watchdog: PartitionWatchdog) -> list[tuple[str, int]]:
    return [(stall.topic, stall.partition) for stall in watchdog.stalled()]


def assert_stalled_one_timeout_on(
    watchdog: PartitionWatchdog, clock: FakeClock, position: tuple[int, int]
) -> None:
    """P0 observed at `position` (committed offset, lag) from now on: not stalled a second
    before the timeout, stalled at it."""
    watchdog.observe({P0: position})
    clock.now += TIMEOUT - 1
    watchdog.observe({P0: position})
    assert watchdog.stalled() == []
    clock.now += 1
    assert stalled_keys(watchdog) == [P0]


@pytest.mark.parametrize(("waited", "stalled"), [(TIMEOUT - 0.001, False), (TIMEOUT, True)])
def test_lag_with_a_committed_offset_standing_still_stalls_at_the_timeout(
    clock: FakeClock, waited: float, stalled: bool
) -> None:
    watchdog = PartitionWatchdog(TIMEOUT, clock)
    watchdog.observe({P0: (10, 5), P1: (3, 0)})
    clock.now += waited
    watchdog.observe({P0: (10, 5), P1: (3, 0)})
    assert stalled_keys(watchdog) == ([P0] if stalled else [])
    if stalled:
        (stall,) = watchdog.stalled()
        assert (stall.committed, stall.lag, stall.seconds) == (10, 5, TIMEOUT)
        assert str(stall) == (
            "partition 0 of questions is 5 messages behind and its committed offset (10) has "
            "not moved for 300 s"
        )


def test_a_committed_offset_that_moves_is_never_stalled(clock: FakeClock) -> None:
    watchdog = PartitionWatchdog(TIMEOUT, clock)
    for step in range(100):
        # Lag stays high (more keeps arriving), but every commit moves the offset.
        watchdog.observe({P0: (step, 1000)})
        clock.now += TIMEOUT / 10
        assert watchdog.stalled() == []
    # The offset stops: stalled one timeout after the last move, not before.
    assert_stalled_one_timeout_on(watchdog, clock, (100, 1000))
    # And moving again clears it.
    watchdog.observe({P0: (101, 999)})
    assert watchdog.stalled() == []


def test_an_idle_partition_is_not_stalled_and_its_time_starts_when_lag_appears(
    clock: FakeClock,
) -> None:
    watchdog = PartitionWatchdog(TIMEOUT, clock)
    watchdog.observe({P0: (50, 0)})
    clock.now += 10 * TIMEOUT
    watchdog.observe({P0: (50, 0)})
    assert watchdog.stalled() == []
    # Lag appears with the same committed offset as hours before: counted from now.
    assert_stalled_one_timeout_on(watchdog, clock, (50, 3))
    # Caught up (lag 0) ends the stall even with the offset unchanged.
    watchdog.observe({P0: (50, 0)})
    assert watchdog.stalled() == []


def test_revoked_partitions_are_forgotten_and_the_longest_stall_comes_first(
    clock: FakeClock,
) -> None:
    watchdog = PartitionWatchdog(TIMEOUT, clock)
    watchdog.observe({P0: (1, 1)})
    clock.now += 60
    watchdog.observe({P0: (1, 1), P1: (2, 2)})
    clock.now += TIMEOUT
    watchdog.observe({P0: (1, 1), P1: (2, 2)})
    assert stalled_keys(watchdog) == [P0, P1]
    watchdog.observe({P1: (2, 2)})
    assert stalled_keys(watchdog) == [P1]
    # A partition that comes back starts afresh.
    watchdog.observe({P0: (1, 1), P1: (2, 2)})
    assert stalled_keys(watchdog) == [P1]


@pytest.mark.parametrize("timeout", [0.0, -1.0])
def test_the_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="above 0"):
        PartitionWatchdog(timeout)


@pytest.mark.parametrize("quiet", [TIMEOUT - 0.001, TIMEOUT])
def test_a_partition_whose_windows_run_is_working_until_they_stop(
    clock: FakeClock, quiet: float
) -> None:
    """A long event holds the committed offset for longer than the timeout while its windows
    run; the time counts from the last of them."""
    watchdog = PartitionWatchdog(TIMEOUT, clock)
    watchdog.observe({P0: (10, 5), P1: (3, 2)})
    for _ in range(int(3 * TIMEOUT)):
        clock.now += 1.0
        watchdog.observe({P0: (10, 5), P1: (3, 2)}, working={P0})
        assert P0 not in stalled_keys(watchdog)
    # P1 had lag and ran nothing all along.
    assert stalled_keys(watchdog) == [P1]
    clock.now += quiet
    watchdog.observe({P0: (10, 5), P1: (3, 2)})
    assert (P0 in stalled_keys(watchdog)) == (quiet >= TIMEOUT)


async def produce_to(bootstrap: str, partition: int, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(QUESTIONS, value, partition=partition)
    finally:
        await producer.stop()


async def lags(worker: QAWorker) -> dict[int, float | None]:
    return {
        partition: worker.metrics.registry.get_sample_value(
            "qa_worker_consumer_lag_messages", {"topic": QUESTIONS, "partition": str(partition)}
        )
        for partition in range(PARTITIONS)
    }


@pytest.mark.broker
async def test_a_restarted_worker_sees_the_groups_commits_and_no_stall(
    exported_models: dict[str, Path],
) -> None:
    """Everything answered and committed by one worker: the next one on the same group reads its
    partitions' committed offsets from the group, so they show no lag and never stall, though
    this process committed nothing on them."""
    async with EmbeddedBroker() as broker:
        await create_topics(broker, PARTITIONS)
        server = broker.bootstrap_servers
        settings = worker_settings(server, exported_models["bert"], stall_timeout_s=1.0)
        engine = load_engine(settings)
        first = QAWorker(settings, engine, WorkerMetrics())
        await first.start()
        try:
            await wait_until(lambda: first.readiness()[0], 30, "the first worker to be ready")
            for partition in range(PARTITIONS):
                (value,) = question_values([texts.pairs(seed=partition, count=1)[0]])
                await produce_to(server, partition, value)
            ends = dict.fromkeys(range(PARTITIONS), 1)

            async def all_committed() -> bool:
                return await committed_offsets(server, settings.group_id, PARTITIONS) == ends

            await wait_until(all_committed, 60, "both questions answered and committed")
        finally:
            await first.stop()
        second = QAWorker(settings, engine, WorkerMetrics())
        await second.start()
        try:
            await wait_until(lambda: second.readiness()[0], 30, "the second worker to be ready")

            async def lag_read() -> bool:
                return None not in (await lags(second)).values()

            await wait_until(lag_read, 30, "the second worker's lag read")
            assert await lags(second) == dict.fromkeys(range(PARTITIONS), 0.0)
            # Past several times the stall timeout, refreshed every LAG_REFRESH_S: still ready.
            deadline = time.monotonic() + 3 * settings.stall_timeout_s + 2 * LAG_REFRESH_S
            while time.monotonic() < deadline:
                ready, reason = second.readiness()
                assert ready, reason
                await asyncio.sleep(LAG_REFRESH_S / 4)
            assert not second.watchdog.stalled()
        finally:
            await second.stop()
