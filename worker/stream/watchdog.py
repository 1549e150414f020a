"""The partition watchdog: a safety net for what stops a partition that nothing else names.

Every way the worker knows to get stuck has its own handling (a bad record becomes a dead letter,
a failed fetch loop stops the worker, an unreachable broker or a failing delivery makes it not
ready). This catches the causes nobody has seen yet by their effect: a partition that has lag
(records past its committed offset) while its committed offset has not moved for `timeout_s`.
A partition without lag is idle, not stalled, and its time starts again when lag appears. A
partition whose events have windows running is working, not stalled: a document tagged by a
question set, or a question over a long context, can hold its partition's commits for minutes
while every one of its windows runs in turn, so each window of the partition that ran starts
its time again. If its events stop running (held by something nobody has named, or the
partition paused with as many events as `--max-in-flight` waiting behind one that is), the time
runs out as before.

The worker observes every assigned partition once a second (`QAWorker._refresh_lag`); time comes
from the injected clock, so tests make a stall without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

__all__ = ["PartitionWatchdog", "Stall"]

Partition = tuple[str, int]
"""(topic, partition)"""


@dataclass(frozen=True)
class Stall:
    """A partition with lag whose committed offset has stood still for `seconds`."""

    topic: str
    partition: int
    committed: int
    lag: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"partition {self.partition} of {self.topic} is {self.lag} messages behind and its "
            f"committed offset ({self.committed}) has not moved for {self.seconds:.0f} s"
        )


@dataclass
class _Progress:
    committed: int
    lag: int
    since: float


class PartitionWatchdog:
    """Tells which partitions have had lag and an unmoving committed offset for `timeout_s`."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if timeout_s <= 0:
            raise ValueError(f"the stall timeout must be above 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self._clock = clock
        self._progress: dict[Partition, _Progress] = {}

    def observe(
        self,
        partitions: Mapping[Partition, tuple[int, int]],
        working: Collection[Partition] = (),
    ) -> None:
        """(committed offset, lag) of every assigned partition, and those of them that had a
        window run since the last observation; the others are forgotten."""
        now = self._clock()
        progress: dict[Partition, _Progress] = {}
        for key, (committed, lag) in partitions.items():
            last = self._progress.get(key)
            if last is None or last.committed != committed or last.lag <= 0 or key in working:
                progress[key] = _Progress(committed, lag, now)
            else:
                progress[key] = _Progress(committed, lag, last.since)
        self._progress = progress

    def stalled(self) -> list[Stall]:
        """The stalled partitions, longest stalled first."""
        now = self._clock()
        stalls = [
            Stall(topic, partition, seen.committed, seen.lag, now - seen.since)
            for (topic, partition), seen in self._progress.items()
            if seen.lag > 0 and now - seen.since >= self.timeout_s
        ]
        return sorted(stalls, key=lambda stall: -stall.seconds)
