"""The partition watchdog on a clock the tests move: stalls at, under and over the timeout."""

from __future__ import annotations

import pytest

from worker.stream.watchdog import PartitionWatchdog

TIMEOUT = 300.0
P0, P1 = ("questions", 0), ("questions", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def stalled_keys(watchdog: PartitionWatchdog) -> list[tuple[str, int]]:
    return [(stall.topic, stall.partition) for stall in watchdog.stalled()]


@pytest.mark.parametrize(("waited", "stalled"), [(TIMEOUT - 0.001, False), (TIMEOUT, True)])
def test_lag_with_a_committed_offset_standing_still_stalls_at_the_timeout(
    clock: Clock, waited: float, stalled: bool
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


def test_a_committed_offset_that_moves_is_never_stalled(clock: Clock) -> None:
    watchdog = PartitionWatchdog(TIMEOUT, clock)
    for step in range(100):
        # Lag stays high (more keeps arriving), but every commit moves the offset.
        watchdog.observe({P0: (step, 1000)})
        clock.now += TIMEOUT / 10
        assert watchdog.stalled() == []
    # The offset stops: stalled one timeout after the last move, not before.
    watchdog.observe({P0: (100, 1000)})
    clock.now += TIMEOUT - 1
    watchdog.observe({P0: (100, 1000)})
    assert watchdog.stalled() == []
    clock.now += 1
    assert stalled_keys(watchdog) == [P0]
    # And moving again clears it.
    watchdog.observe({P0: (101, 999)})
    assert watchdog.stalled() == []


def test_an_idle_partition_is_not_stalled_and_its_time_starts_when_lag_appears(
    clock: Clock,
) -> None:
    watchdog = PartitionWatchdog(TIMEOUT, clock)
    watchdog.observe({P0: (50, 0)})
    clock.now += 10 * TIMEOUT
    watchdog.observe({P0: (50, 0)})
    assert watchdog.stalled() == []
    # Lag appears with the same committed offset as hours before: counted from now.
    watchdog.observe({P0: (50, 3)})
    clock.now += TIMEOUT - 1
    watchdog.observe({P0: (50, 3)})
    assert watchdog.stalled() == []
    clock.now += 1
    assert stalled_keys(watchdog) == [P0]
    # Caught up (lag 0) ends the stall even with the offset unchanged.
    watchdog.observe({P0: (50, 0)})
    assert watchdog.stalled() == []


def test_revoked_partitions_are_forgotten_and_the_longest_stall_comes_first(clock: Clock) -> None:
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
    clock: Clock, quiet: float
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
