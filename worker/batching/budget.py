"""Admission by work: the windows that questions in the batcher may hold at once.

A question holds its windows from the moment it is tokenized until it is answered: waiting for a
batch, running, or waiting with its logits to be decoded. Memory follows the windows held, not
the number of questions, since one question of 100,000 characters makes hundreds of windows.
How many windows a question makes is known only once it is tokenized, so admission looks at
what is held when a question is about to be tokenized:

- A question is admitted while the windows held are under the budget, or when its lane (the
  worker's partition) holds nothing at all: a lane of long questions that fills the budget
  cannot keep another lane's next question waiting for one of them to finish.
- At most `MAX_UNSIZED` questions of each kind (the batcher tokenizes long contexts on a thread
  of their own) are admitted and not tokenized yet.

So the windows held stay under the budget plus, at most, one question of each lane and
`MAX_UNSIZED` questions of each kind: `budget + (lanes + 2 x MAX_UNSIZED) x the windows of the
longest context allowed`. A question larger than the whole budget is still admitted, and runs.
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
        self.held = 0
        self._unsized: dict[Hashable, int] = {}
        # Questions admitted and not released, by lane; a lane with none is in no dict.
        self._admitted_in: dict[Hashable, int] = {}
        self._waiters: dict[tuple[Hashable, Hashable], deque[_Waiter]] = {}
        # The (lane, kind) pairs with a question waiting, in the order they take turns.
        self._turns: deque[tuple[Hashable, Hashable]] = deque()

    @property
    def waiting(self) -> int:
        return sum(len(waiters) for waiters in self._waiters.values())

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
        return self.held < self.windows or lane not in self._admitted_in

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
        self._admitted_in[lane] = self._admitted_in.get(lane, 0) + 1
        return Admission(self, lane, kind)

    def _sized(self, admission: Admission) -> None:
        self._unsized[admission.kind] -= 1
        self.held += admission.windows or 0
        self._admit_waiters()

    def _released(self, admission: Admission) -> None:
        if admission.windows is None:
            self._unsized[admission.kind] -= 1
        else:
            self.held -= admission.windows
        self._admitted_in[admission.lane] -= 1
        if not self._admitted_in[admission.lane]:
            del self._admitted_in[admission.lane]
        self._admit_waiters()
