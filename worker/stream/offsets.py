"""Which offsets may be committed: ordered acknowledgements and the in-flight limit.

faust commits, per partition, the end of the first run of acknowledged offsets, but it can step
over a single unacknowledged offset (docs/notes/faust-on-tansu.md, section 4.3). The tracker
therefore acknowledges each partition's events to faust strictly in offset order, only once the
event's answer or dead letter is delivered, so a commit never passes an event still in flight.
It also refuses to acknowledge an offset at or below one it already acknowledged on the same
partition (a commit that would move the group backwards, or an event acknowledged twice), and
bounds how many events are in flight at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable, Iterable
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


class OffsetTracker:
    """Acknowledges events in offset order per partition, and holds at most `limit` in flight."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the in-flight limit must be at least 1, got {limit}")
        self.limit = limit
        self._pending: dict[Hashable, deque[Tracked]] = {}
        self._acknowledged: dict[Hashable, int] = {}
        self._count = 0
        self._room = asyncio.Condition()

    @property
    def count(self) -> int:
        """Events tracked and not yet acknowledged."""
        return self._count

    def track(self, event: AckableEvent) -> Tracked:
        """Starts tracking an event in the order it was read from its partition."""
        tracked = Tracked(event)
        self._pending.setdefault(event.message.tp, deque()).append(tracked)
        self._count += 1
        return tracked

    async def wait_for_room(self) -> None:
        """Returns once fewer than `limit` events are in flight."""
        async with self._room:
            await self._room.wait_for(lambda: self._count < self.limit)

    async def complete(self, tracked: Tracked) -> None:
        """Marks an event delivered, and acknowledges its partition's leading delivered events.

        Raises OffsetOrderError, acknowledging nothing more, when the next offset to acknowledge
        is not above the last one acknowledged on that partition.
        """
        tracked.done = True
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
            async with self._room:
                self._room.notify_all()

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Drops the acknowledged offsets of partitions this worker no longer owns.

        When a partition comes back, its events are read again from the group's committed
        offset, which may be below what was acknowledged here if the last commit failed.
        """
        for tp in partitions:
            self._acknowledged.pop(tp, None)
