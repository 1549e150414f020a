"""Which offsets may be committed: ordered acknowledgements, and the limits on events held.

faust commits, per partition, the end of the first run of acknowledged offsets, but it can step
over a single unacknowledged offset (docs/notes/faust-on-tansu.md, section 4.3). The tracker
therefore acknowledges each partition's events to faust strictly in offset order, only once the
event's answer or dead letter is delivered, so a commit never passes an event still in flight.
It also refuses to acknowledge an offset at or below one it already acknowledged on the same
partition (a commit that would move the group backwards, or an event acknowledged twice).

It bounds what it holds per partition, so that no partition's events keep another's from being
read. Events being answered: each partition may have its share of `limit` at once (`limit`
divided by the partitions assigned, at least 1); an event read beyond its partition's share waits
untouched (parked), its partition is paused (`pause`), and it starts when one of its partition's
events is answered. So at most max(`limit`, partitions) events are answered at once (for a while
more after a rebalance adds partitions, until those over their new share finish), and a short
question on a quiet partition starts as soon as it is read, whatever another partition holds.
Events answered, but waiting for an earlier one of their partition to be answered before they
can be acknowledged: once a partition holds `limit` events, it is paused too, and resumed when
its oldest is acknowledged. A paused partition still delivers what was fetched before the pause
(at most the consumer's buffer of it), so a partition holds about `limit` events plus that.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ..errors import OffsetOrderError

__all__ = ["AckableEvent", "OffsetTracker", "Tracked"]


class _Message(Protocol):
    @property
    def tp(self) -> Hashable: ...

    @property
    def offset(self) -> int: ...


class AckableEvent(Protocol):
    """What the tracker needs of a faust event: where it was read, and `ack()`."""

    @property
    def message(self) -> _Message: ...

    def ack(self) -> object: ...


@dataclass(eq=False)
class Tracked:
    """One event between being read and being acknowledged."""

    event: AckableEvent
    started: bool = False
    done: bool = False


Begin = Callable[[Tracked], object]
"""Starts answering a tracked event."""

PartitionSwitch = Callable[[Hashable], None]
"""Pauses, or resumes, the fetching of one partition."""


def _leave_fetching_alone(tp: Hashable) -> None:
    """For a tracker whose partitions are never paused: what it holds is bounded by what it is
    given."""


def _one_partition() -> int:
    return 1


class OffsetTracker:
    """Acknowledges events in offset order per partition; answers at most a partition's share of
    `limit` events of each partition at once, and pauses a partition holding events beyond its
    share, or `limit` events not yet acknowledged."""

    def __init__(
        self,
        limit: int,
        pause: PartitionSwitch = _leave_fetching_alone,
        resume: PartitionSwitch = _leave_fetching_alone,
        partitions: Callable[[], int] = _one_partition,
    ) -> None:
        """`partitions` tells how many partitions share `limit` (those assigned)."""
        if limit < 1:
            raise ValueError(f"the in-flight limit must be at least 1, got {limit}")
        self.limit = limit
        self._pause = pause
        self._resume = resume
        self._partitions = partitions
        self._pending: dict[Hashable, deque[Tracked]] = {}
        # Events waiting for room in their partition's share, each with what starts it.
        self._parked: dict[Hashable, deque[tuple[Tracked, Begin]]] = {}
        self._answering_in: dict[Hashable, int] = {}
        self._acknowledged: dict[Hashable, int] = {}
        self._paused: set[Hashable] = set()
        self._count = 0
        self._answering = 0

    @property
    def count(self) -> int:
        """Events tracked and not yet acknowledged."""
        return self._count

    @property
    def answering(self) -> int:
        """Events started and not yet answered."""
        return self._answering

    @property
    def parked(self) -> int:
        """Events read beyond their partition's share, waiting to start."""
        return sum(map(len, self._parked.values()))

    @property
    def paused(self) -> frozenset[Hashable]:
        """Partitions paused because they hold events beyond their share, or `limit` events not
        yet acknowledged."""
        return frozenset(self._paused)

    def share(self) -> int:
        """How many events of one partition may be answered at once."""
        return max(1, self.limit // max(1, self._partitions()))

    def track(self, event: AckableEvent, begin: Begin) -> Tracked:
        """Starts tracking an event in the order it was read from its partition, and calls
        `begin` with it now, or once its partition has room in its share."""
        tracked = Tracked(event)
        tp = event.message.tp
        self._pending.setdefault(tp, deque()).append(tracked)
        self._count += 1
        parked = self._parked.setdefault(tp, deque())
        if parked or self._answering_in.get(tp, 0) >= self.share():
            parked.append((tracked, begin))
        else:
            self._begin(tp, tracked, begin)
        self._switch(tp)
        return tracked

    async def complete(self, tracked: Tracked) -> None:
        """Marks an event delivered, acknowledges its partition's leading delivered events, and
        starts the partition's next parked events its share has room for.

        Raises OffsetOrderError, acknowledging nothing more, when the next offset to acknowledge
        is not above the last one acknowledged on that partition.
        """
        if tracked.done or not tracked.started:
            raise OffsetOrderError(
                f"offset {tracked.event.message.offset} of {tracked.event.message.tp} was "
                + ("completed twice" if tracked.done else "completed before it started")
            )
        tracked.done = True
        self._answering -= 1
        tp = tracked.event.message.tp
        self._answering_in[tp] -= 1
        queue = self._pending[tp]
        try:
            while queue and queue[0].done:
                offset = queue[0].event.message.offset
                last = self._acknowledged.get(tp)
                if last is not None and offset <= last:
                    raise OffsetOrderError(
                        f"offset {offset} of {tp} would be acknowledged after offset {last}; "
                        "acknowledged offsets must increase"
                    )
                queue.popleft().event.ack()
                self._acknowledged[tp] = offset
                self._count -= 1
        finally:
            parked = self._parked.get(tp)
            if parked:
                # Read once: it asks the consumer for its assignment.
                share = self.share()
                while parked and self._answering_in[tp] < share:
                    self._begin(tp, *parked.popleft())
            self._switch(tp)

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Drops the acknowledged offsets and the parked events of partitions this worker no
        longer owns: their events are another worker's to answer now.

        When a partition comes back, its events are read again from the group's committed
        offset, which may be below what was acknowledged here if the last commit failed.
        """
        for tp in partitions:
            self._acknowledged.pop(tp, None)
            for tracked, _ in self._parked.pop(tp, ()):
                self._pending[tp].remove(tracked)
                self._count -= 1
            # The consumer forgets a revoked partition's pause itself.
            self._paused.discard(tp)

    def _begin(self, tp: Hashable, tracked: Tracked, begin: Begin) -> None:
        tracked.started = True
        self._answering += 1
        self._answering_in[tp] = self._answering_in.get(tp, 0) + 1
        begin(tracked)

    def _switch(self, tp: Hashable) -> None:
        """Pauses or resumes the partition by what it holds."""
        hold = bool(self._parked.get(tp)) or len(self._pending.get(tp, ())) >= self.limit
        if hold and tp not in self._paused:
            self._paused.add(tp)
            self._pause(tp)
        elif not hold and tp in self._paused:
            self._paused.discard(tp)
            self._resume(tp)
