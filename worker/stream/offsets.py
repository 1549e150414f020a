"""Which offsets may be committed: ordered acknowledgements, and the limits on events held.

faust commits, per partition, the end of the first run of acknowledged offsets, but it can step
over a single unacknowledged offset (docs/notes/faust-on-tansu.md, section 4.3). The tracker
therefore acknowledges each partition's events to faust strictly in offset order, only once the
event's answer or dead letter is delivered, so a commit never passes an event still in flight.
It also refuses to acknowledge an offset at or below one it already acknowledged on the same
partition (a commit that would move the group backwards, or an event acknowledged twice).

It holds two kinds of event, with a bound on each. Events being answered are bounded by `limit`
in all: reading waits for room (`wait_for_room`). Events answered, but waiting for an earlier one
of their partition to be answered before they can be acknowledged, are bounded per partition:
once a partition holds `limit` events, it alone is paused (`pause`), and resumed when its oldest
is acknowledged. Counting those against the first bound would let one partition's long event
stop the reading of every partition, while the events behind it, all answered, filled the limit.
"""

from __future__ import annotations

import asyncio
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
    done: bool = False


PartitionSwitch = Callable[[Hashable], None]
"""Pauses, or resumes, the fetching of one partition."""


def _leave_fetching_alone(tp: Hashable) -> None:
    """For a tracker whose partitions are never paused: the events it holds are bounded only by
    the reader waiting for room."""


class OffsetTracker:
    """Acknowledges events in offset order per partition; holds at most `limit` events being
    answered, and pauses a partition holding `limit` events not yet acknowledged."""

    def __init__(
        self,
        limit: int,
        pause: PartitionSwitch = _leave_fetching_alone,
        resume: PartitionSwitch = _leave_fetching_alone,
    ) -> None:
        if limit < 1:
            raise ValueError(f"the in-flight limit must be at least 1, got {limit}")
        self.limit = limit
        self._pause = pause
        self._resume = resume
        self._pending: dict[Hashable, deque[Tracked]] = {}
        self._acknowledged: dict[Hashable, int] = {}
        self._paused: set[Hashable] = set()
        self._count = 0
        self._answering = 0
        self._room = asyncio.Condition()

    @property
    def count(self) -> int:
        """Events tracked and not yet acknowledged."""
        return self._count

    @property
    def answering(self) -> int:
        """Events tracked and not yet answered."""
        return self._answering

    @property
    def paused(self) -> frozenset[Hashable]:
        """Partitions paused because they hold `limit` events not yet acknowledged."""
        return frozenset(self._paused)

    def track(self, event: AckableEvent) -> Tracked:
        """Starts tracking an event in the order it was read from its partition; pauses the
        partition once it holds `limit` events."""
        tracked = Tracked(event)
        tp = event.message.tp
        queue = self._pending.setdefault(tp, deque())
        queue.append(tracked)
        self._count += 1
        self._answering += 1
        if len(queue) >= self.limit and tp not in self._paused:
            self._paused.add(tp)
            self._pause(tp)
        return tracked

    async def wait_for_room(self) -> None:
        """Returns once fewer than `limit` events are being answered."""
        async with self._room:
            await self._room.wait_for(lambda: self._answering < self.limit)

    async def complete(self, tracked: Tracked) -> None:
        """Marks an event delivered, and acknowledges its partition's leading delivered events.

        Raises OffsetOrderError, acknowledging nothing more, when the next offset to acknowledge
        is not above the last one acknowledged on that partition.
        """
        if tracked.done:
            raise OffsetOrderError(
                f"offset {tracked.event.message.offset} of {tracked.event.message.tp} was "
                "completed twice"
            )
        tracked.done = True
        self._answering -= 1
        tp = tracked.event.message.tp
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
            if tp in self._paused and len(queue) < self.limit:
                self._paused.discard(tp)
                self._resume(tp)
            async with self._room:
                self._room.notify_all()

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Drops the acknowledged offsets of partitions this worker no longer owns.

        When a partition comes back, its events are read again from the group's committed
        offset, which may be below what was acknowledged here if the last commit failed.
        """
        for tp in partitions:
            self._acknowledged.pop(tp, None)
            # The consumer forgets a revoked partition's pause itself.
            self._paused.discard(tp)
