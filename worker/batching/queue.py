"""The windows waiting for a batch, and which of them run together next.

Who seeds the next batch:
- **Lanes take turns, then events within a lane.** Every window belongs to a lane (the worker
  gives each partition its own) and to an event. Lanes with windows waiting take one seed each in
  turn, whatever they hold. Within a lane, its oldest event seeds every other time and the other
  events take the rest in turn, each event's windows in order: the oldest is the one the
  partition's commits wait for, so it finishes at half its lane's pace at least, while a short
  event behind long ones waits for about two windows of its lane per event ahead of it, not for
  all of their windows.
- **Earliest deadline first, within the turns.** The window with the earliest deadline seeds
  unless the last seed went ahead of the turns that way; then the turns' next window seeds. So
  the turns go on at every second batch at least, however many urgent events come.
- **Solo retries first.** Windows of a batch that failed run again one at a time, so that one
  window the engine cannot run fails only its own event (`retry_alone`).

A batch is filled with the waiting windows nearest the seed in length, the earlier deadline
first among equally near, within the batch limits (`plan.BatchLimits`): the same rule as
`plan.next_batch`, over buckets of equal length instead of a sorted list.

Cost: every structure is a deque, a heap or a bucket per distinct length, so choosing a batch
costs O(1) amortized for a batch of one and O(distinct lengths + batch size) to fill a larger
one, however many windows wait. Windows that leave (taken into a batch, or withdrawn with their
event) are marked and dropped lazily where they stand; once as many have left as are waiting,
everything is rebuilt from the ones still waiting, so the structures hold at most about twice
what waits.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from .plan import BatchLimits

__all__ = ["Entry", "Owner", "PendingQueue"]

# Rebuilds wait for at least this many departures, so a short queue is not rebuilt each batch.
MIN_DEPARTURES_BEFORE_REBUILD = 1024


class Owner(Protocol):
    """What the queue reads of the question a window belongs to."""

    @property
    def lane(self) -> Hashable: ...

    @property
    def event(self) -> Hashable: ...

    @property
    def deadline(self) -> float | None: ...


OwnerT = TypeVar("OwnerT", bound=Owner)


@dataclass(eq=False, slots=True)
class Entry(Generic[OwnerT]):
    """One waiting window: the `index`th window of `owner`, `length` tokens long."""

    owner: OwnerT
    index: int
    length: int
    arrived: float
    order: int
    waiting: bool = True
    # A retry that runs alone: it waits in the solo queue, not in the turns or the buckets.
    alone: bool = False

    @property
    def due(self) -> float:
        deadline = self.owner.deadline
        return math.inf if deadline is None else deadline


@dataclass(eq=False, slots=True)
class _Turn(Generic[OwnerT]):
    event: Hashable
    entries: deque[Entry[OwnerT]] = field(default_factory=deque)


@dataclass(eq=False, slots=True)
class _Lane(Generic[OwnerT]):
    key: Hashable
    # Its events in the order they take turns, and in the order they arrived.
    turns: deque[_Turn[OwnerT]] = field(default_factory=deque)
    arrivals: deque[_Turn[OwnerT]] = field(default_factory=deque)
    turn_of: dict[Hashable, _Turn[OwnerT]] = field(default_factory=dict)
    oldest_due: bool = True


@dataclass(eq=False, slots=True)
class _Bucket(Generic[OwnerT]):
    entries: deque[Entry[OwnerT]] = field(default_factory=deque)
    waiting: int = 0


Refuse = Callable[[Entry[OwnerT]], bool]
"""Whether a window must not run (its event's deadline passed, or cannot be met); the caller
withdraws the event's windows before saying True."""


class PendingQueue(Generic[OwnerT]):
    """Windows waiting for a batch; see the module's docstring for the order they leave in."""

    def __init__(self) -> None:
        self._order = itertools.count()
        self._waiting = 0
        self._departed = 0
        self._lanes: deque[_Lane[OwnerT]] = deque()
        self._lane_of: dict[Hashable, _Lane[OwnerT]] = {}
        self._buckets: dict[int, _Bucket[OwnerT]] = {}
        # The lengths with a window waiting, ascending, for filling a batch outward from a seed.
        self._lengths: list[int] = []
        self._deadlines: list[tuple[float, int, Entry[OwnerT]]] = []
        self._arrivals: deque[Entry[OwnerT]] = deque()
        self._solo: deque[Entry[OwnerT]] = deque()
        # Whether the last seed went ahead of the turns for its deadline.
        self._turns_due = False

    def __len__(self) -> int:
        return self._waiting

    def add(self, owner: OwnerT, lengths: Sequence[int], now: float) -> list[Entry[OwnerT]]:
        """Queues the windows of `owner`, of these lengths, in order; returns their entries."""
        entries = [
            Entry(owner, index, length, now, next(self._order))
            for index, length in enumerate(lengths)
        ]
        for entry in entries:
            self._place(entry)
        return entries

    def retry_alone(self, entries: Iterable[Entry[OwnerT]]) -> list[Entry[OwnerT]]:
        """Queues again windows that left in a batch, to run each alone before the rest; returns
        their new entries."""
        retries = [
            Entry(entry.owner, entry.index, entry.length, entry.arrived, entry.order, alone=True)
            for entry in entries
        ]
        self._solo.extend(retries)
        self._waiting += len(retries)
        return retries

    def withdraw(self, entries: Iterable[Entry[OwnerT]]) -> int:
        """Takes these windows out, those still waiting; returns how many were."""
        withdrawn = 0
        for entry in entries:
            if entry.waiting:
                self._leave(entry)
                withdrawn += 1
        self._rebuild_if_worth_it()
        return withdrawn

    def oldest_arrival(self) -> float | None:
        """When the window waiting longest arrived (a retry's first arrival counts)."""
        while self._solo and not self._solo[0].waiting:
            self._solo.popleft()
        while self._arrivals and not self._arrivals[0].waiting:
            self._arrivals.popleft()
        arrivals = [queue[0].arrived for queue in (self._solo, self._arrivals) if queue]
        return min(arrivals, default=None)

    def refuse_urgent(self, refuse: Refuse[OwnerT]) -> None:
        """Offers the windows with the earliest deadlines to `refuse` until one may run, so that
        events that can no longer make their deadline fail before anything waits or is planned."""
        while (urgent := self._earliest_deadline()) is not None and refuse(urgent):
            pass

    def next_batch(self, limits: BatchLimits, refuse: Refuse[OwnerT]) -> list[Entry[OwnerT]]:
        """The next batch, its seed first, taken out of the queue; empty when nothing waits.

        Every window chosen is offered to `refuse` first, and one refused is passed over.
        """
        while self._solo:
            entry = self._solo.popleft()
            if entry.waiting:
                self._leave(entry)
                return [entry]
        seed = self._seed(refuse)
        if seed is None:
            return []
        self._leave(seed)
        batch = [seed]
        if limits.batch_size > 1:
            self._fill(batch, limits, refuse)
        self._rebuild_if_worth_it()
        return batch

    # Placing and leaving

    def _place(self, entry: Entry[OwnerT]) -> None:
        owner = entry.owner
        lane = self._lane_of.get(owner.lane)
        if lane is None:
            lane = self._lane_of[owner.lane] = _Lane(owner.lane)
            self._lanes.append(lane)
        turn = lane.turn_of.get(owner.event)
        if turn is None:
            turn = lane.turn_of[owner.event] = _Turn(owner.event)
            lane.turns.append(turn)
            lane.arrivals.append(turn)
        turn.entries.append(entry)
        bucket = self._buckets.get(entry.length)
        if bucket is None:
            bucket = self._buckets[entry.length] = _Bucket()
            bisect.insort(self._lengths, entry.length)
        bucket.entries.append(entry)
        bucket.waiting += 1
        if owner.deadline is not None:
            heapq.heappush(self._deadlines, (owner.deadline, entry.order, entry))
        self._arrivals.append(entry)
        self._waiting += 1

    def _leave(self, entry: Entry[OwnerT]) -> None:
        entry.waiting = False
        self._waiting -= 1
        self._departed += 1
        if entry.alone:
            return
        bucket = self._buckets[entry.length]
        bucket.waiting -= 1
        if not bucket.waiting:
            del self._buckets[entry.length]
            del self._lengths[bisect.bisect_left(self._lengths, entry.length)]

    def _rebuild_if_worth_it(self) -> None:
        if self._departed < max(self._waiting, MIN_DEPARTURES_BEFORE_REBUILD):
            return
        self._departed = 0
        for lane in self._lanes:
            for turn in lane.turns:
                turn.entries = deque(entry for entry in turn.entries if entry.waiting)
            lane.turns = deque(turn for turn in lane.turns if turn.entries)
            lane.arrivals = deque(turn for turn in lane.arrivals if turn.entries)
            lane.turn_of = {turn.event: turn for turn in lane.turns}
        for bucket in self._buckets.values():
            bucket.entries = deque(entry for entry in bucket.entries if entry.waiting)
        self._deadlines = [item for item in self._deadlines if item[2].waiting]
        heapq.heapify(self._deadlines)
        self._arrivals = deque(entry for entry in self._arrivals if entry.waiting)
        self._solo = deque(entry for entry in self._solo if entry.waiting)

    # Seeding

    def _seed(self, refuse: Refuse[OwnerT]) -> Entry[OwnerT] | None:
        while True:
            turn_seed = self._next_in_turn()
            urgent = self._earliest_deadline()
            if urgent is not None and not self._turns_due and urgent is not turn_seed:
                if refuse(urgent):
                    continue
                self._turns_due = True
                return urgent
            if turn_seed is None:
                return None
            if refuse(turn_seed):
                continue
            self._turns_due = False
            self._pass_turn()
            return turn_seed

    def _next_in_turn(self) -> Entry[OwnerT] | None:
        """The next window of the lane and event whose turn it is, dropping those emptied."""
        while self._lanes:
            lane = self._lanes[0]
            turn = _front(lane.turns, lane)
            if turn is None:
                self._lanes.popleft()
                del self._lane_of[lane.key]
                continue
            if lane.oldest_due:
                turn = _front(lane.arrivals, lane) or turn
            return turn.entries[0]
        return None

    def _pass_turn(self) -> None:
        """The front lane has seeded: it goes to the back, and within it the oldest event or
        the other whose turn it was has had its turn."""
        lane = self._lanes[0]
        oldest = _front(lane.arrivals, lane)
        if not lane.oldest_due or (lane.turns and lane.turns[0] is oldest):
            lane.turns.rotate(-1)
        lane.oldest_due = not lane.oldest_due
        self._lanes.rotate(-1)

    def _earliest_deadline(self) -> Entry[OwnerT] | None:
        while self._deadlines and not self._deadlines[0][2].waiting:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][2] if self._deadlines else None

    # Filling

    def _fill(
        self, batch: list[Entry[OwnerT]], limits: BatchLimits, refuse: Refuse[OwnerT]
    ) -> None:
        """Adds the windows nearest the seed's length while each keeps the batch in its limits:
        equally near ones earlier deadline first, then oldest first.

        Windows of one length fit or not alike, so a length is looked into only when one of its
        length would fit; lengths above one that breaks the token budget never fit again.
        """
        seed_length = batch[0].length
        longest = real = seed_length

        def fits(length: int) -> bool:
            padded = (len(batch) + 1) * max(longest, length)
            return padded <= limits.max_batch_tokens and padded <= (real + length) * (
                1 + limits.max_padding
            )

        # A copy: windows leaving may empty a length's bucket while this walks outward.
        lengths = list(self._lengths)
        up = bisect.bisect_left(lengths, seed_length)
        down = up - 1
        while len(batch) < limits.batch_size and (down >= 0 or up < len(lengths)):
            below = seed_length - lengths[down] if down >= 0 else math.inf
            above = lengths[up] - seed_length if up < len(lengths) else math.inf
            nearest = min(below, above)
            group = []
            if above == nearest:
                if (len(batch) + 1) * lengths[up] > limits.max_batch_tokens:
                    up = len(lengths)
                else:
                    group.append(lengths[up])
                    up += 1
            if below == nearest:
                group.append(lengths[down])
                down -= 1
            fitting = [length for length in group if fits(length)]
            if not fitting:
                continue
            room = limits.batch_size - len(batch)
            candidates = sorted(
                (entry for length in fitting for entry in self._first_waiting(length, room)),
                key=lambda entry: (entry.due, entry.order),
            )
            for entry in candidates:
                if len(batch) == limits.batch_size:
                    break
                if not fits(entry.length) or not entry.waiting or refuse(entry):
                    continue
                self._leave(entry)
                batch.append(entry)
                longest, real = max(longest, entry.length), real + entry.length

    def _first_waiting(self, length: int, count: int) -> list[Entry[OwnerT]]:
        bucket = self._buckets.get(length)
        if bucket is None:
            return []
        while bucket.entries and not bucket.entries[0].waiting:
            bucket.entries.popleft()
        return list(itertools.islice((e for e in bucket.entries if e.waiting), count))


def _front(turns: deque[_Turn[OwnerT]], lane: _Lane[OwnerT]) -> _Turn[OwnerT] | None:
    """The first of `turns` with a window waiting, dropping emptied ones from the front."""
    while turns:
        turn = turns[0]
        while turn.entries and not turn.entries[0].waiting:
            turn.entries.popleft()
        if turn.entries:
            return turn
        turns.popleft()
        if lane.turn_of.get(turn.event) is turn:
            del lane.turn_of[turn.event]
    return None
