"""Admission by work: the windows that questions in the batcher may hold at once.

A question holds its windows from the moment it is tokenized until it is answered: waiting for a
batch, running, or waiting with its logits to be decoded. Memory follows the windows held, not
the number of questions, since one question of 100,000 characters makes hundreds of windows.
How many windows a question makes is known only once it is tokenized, so admission looks at
what is held when a question is about to be tokenized:

- Questions come in two kinds, long contexts and the rest (the batcher tokenizes long ones on a
  thread of their own), and each kind has the budget to itself: long questions that fill theirs
  never keep a short one waiting for one of them to finish.
- A question is admitted while the windows its kind holds are under the budget, or when its lane
  (the worker's partition) holds nothing of its kind: a lane of long questions that fills the
  budget cannot keep another lane's next long question waiting for one of them to finish.
- At most `MAX_UNSIZED` questions of each kind are admitted and not tokenized yet.

So the windows each kind holds stay under the budget plus, at most, one question of that kind
per lane and `MAX_UNSIZED` more: `budget + (lanes + MAX_UNSIZED) x W` for each kind, W the most
windows a question of that kind can make. A question larger than the whole budget is still
admitted, and runs.
Lanes take turns at admission (each kind in a lane waits apart, so short questions do not queue
behind a long one waiting for the long ones' tokenizer).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable

__all__ = ["MAX_UNSIZED", "Admission", "WorkBudget"]

# Questions of one kind admitted but not yet tokenized. Each kind is tokenized on one thread, so
# two keep it busy; each may make as many windows as its context allows, which is what the budget
# can be exceeded by.
MAX_UNSIZED = 2


class Admission:
    """One question's place in the budget: unsized until `size`, held until `release`."""

    def __init__(self, budget: WorkBudget, lane: Hashable, kind: Hashable) -> None:
        self._budget = budget
        self.lane = lane
        self.kind = kind
        self.windows: int | None = None
        self.released = False

    def size(self, windows: int) -> None:
        """The question was tokenized into `windows` windows, which it now holds."""
        if self.released or self.windows is not None:
            return
        self.windows = windows
        self._budget._sized(self)

    def release(self) -> None:
        """The question is answered, failed or withdrawn; a second call does nothing."""
        if self.released:
            return
        self.released = True
        self._budget._released(self)


class _Waiter:
    __slots__ = ("future", "kind", "lane")

    def __init__(self, lane: Hashable, kind: Hashable, future: asyncio.Future[Admission]) -> None:
        self.lane = lane
        self.kind = kind
        self.future = future


class WorkBudget:
    """Admits questions by the windows held; see the module's docstring for the rules."""

    def __init__(self, windows: int) -> None:
        if windows < 1:
            raise ValueError(f"the work budget must be 1 window or more, got {windows}")
        self.windows = windows
        self._held: dict[Hashable, int] = {}
        self._unsized: dict[Hashable, int] = {}
        # Questions admitted and not released, by (lane, kind); a pair with none is not here.
        self._admitted_in: dict[tuple[Hashable, Hashable], int] = {}
        self._waiters: dict[tuple[Hashable, Hashable], deque[_Waiter]] = {}
        # The (lane, kind) pairs with a question waiting, in the order they take turns.
        self._turns: deque[tuple[Hashable, Hashable]] = deque()

    @property
    def waiting(self) -> int:
        """Questions waiting for admission (those withdrawn meanwhile are dropped lazily)."""
        return sum(
            not waiter.future.done() for waiters in self._waiters.values() for waiter in waiters
        )

    @property
    def held(self) -> int:
        """Windows held by the questions admitted, of every kind."""
        return sum(self._held.values())

    @property
    def unsized(self) -> int:
        """Questions admitted and not tokenized yet, of every kind."""
        return sum(self._unsized.values())

    async def admit(self, lane: Hashable = None, kind: Hashable = None) -> Admission:
        """Waits for this question's turn and for room for it, then admits it."""
        line = (lane, kind)
        waiter = _Waiter(lane, kind, asyncio.get_running_loop().create_future())
        waiters = self._waiters.get(line)
        if waiters is None:
            waiters = self._waiters[line] = deque()
            self._turns.append(line)
        waiters.append(waiter)
        self._admit_waiters()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                # Admitted in the same turn of the loop that cancelled the caller.
                waiter.future.result().release()
            raise

    def _has_room(self, lane: Hashable, kind: Hashable) -> bool:
        if self._unsized.get(kind, 0) >= MAX_UNSIZED:
            return False
        return self._held.get(kind, 0) < self.windows or (lane, kind) not in self._admitted_in

    def _admit_waiters(self) -> None:
        """Gives each (lane, kind) in turn its next question while there is room for it, until
        a whole round admits nothing; cancelled waiters are dropped on the way."""
        passed = 0
        while self._turns and passed < len(self._turns):
            line = self._turns.popleft()
            waiters = self._waiters[line]
            while waiters and waiters[0].future.done():
                waiters.popleft()
            if waiters and self._has_room(*line):
                waiter = waiters.popleft()
                waiter.future.set_result(self._admitted(waiter.lane, waiter.kind))
                passed = 0
            elif waiters:
                passed += 1
            if waiters:
                self._turns.append(line)
            else:
                del self._waiters[line]

    def _admitted(self, lane: Hashable, kind: Hashable) -> Admission:
        self._unsized[kind] = self._unsized.get(kind, 0) + 1
        self._admitted_in[lane, kind] = self._admitted_in.get((lane, kind), 0) + 1
        return Admission(self, lane, kind)

    def _sized(self, admission: Admission) -> None:
        self._unsized[admission.kind] -= 1
        self._held[admission.kind] = self._held.get(admission.kind, 0) + (admission.windows or 0)
        self._admit_waiters()

    def _released(self, admission: Admission) -> None:
        if admission.windows is None:
            self._unsized[admission.kind] -= 1
        else:
            self._held[admission.kind] -= admission.windows
        line = (admission.lane, admission.kind)
        self._admitted_in[line] -= 1
        if not self._admitted_in[line]:
            del self._admitted_in[line]
        self._admit_waiters()
