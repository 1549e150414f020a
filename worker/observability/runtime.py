"""Stalls of the Python runtime itself: how late the event loop runs, and garbage collection.

Both hold up every event whatever stage it is in, so neither shows in one stage's time; they are
measured all the time, cheaply, so that a tail can be told apart from queueing.

Event-loop lag: a task sleeps `LOOP_LAG_INTERVAL_S` and reports how much later than asked it
woke. A callback that holds the loop (or a thread holding the GIL) for longer than the time left
to the next wake-up delays it by what is left of the stall, so a stall of L seconds is seen with
probability about L / interval, as up to L. Ten wake-ups a second cost too little to tell from
noise (an idle loop for 10 s on a busy machine: 0.002 cores with them, 0.004 without). asyncio
rounds its waits up to whole milliseconds, so up to 1 ms of lag is the timer's own.

Garbage-collection pauses: `gc.callbacks` are called, with the GIL held, on whatever thread
allocated the object that triggered the collection, at its start and at its stop. The callback
only reads a clock and appends to a deque (atomic in CPython, no lock): a callback that took a
lock could deadlock on a thread interrupted while holding it. The pauses are handed to the
observer on the event loop, at every lag sample and at stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..lifecycle import AsyncLifecycle

__all__ = ["LOOP_LAG_INTERVAL_S", "RuntimeMonitor", "RuntimeObserver"]

LOOP_LAG_INTERVAL_S = 0.1
# Pauses not yet handed over while the loop is held up; beyond this the oldest are let go.
MAX_UNREPORTED_PAUSES = 1_000


class RuntimeObserver(Protocol):
    """Told about every lag sample and every collection, on the event loop."""

    def loop_lagged(self, seconds: float) -> None: ...

    def gc_paused(self, generation: int, seconds: float) -> None: ...


class RuntimeMonitor(AsyncLifecycle):
    """Samples the running loop's lag and times collections while started.

    `start()` and `stop()` may each be called more than once; a second call does nothing. `clock`
    and `sleep` drive the lag sampler (tests pass ones they control); `gc_clock` times pauses.
    """

    def __init__(
        self,
        observer: RuntimeObserver,
        interval_s: float = LOOP_LAG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        gc_clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._observer = observer
        self._interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        self._gc_clock = gc_clock
        self._pauses: deque[tuple[int, float]] = deque(maxlen=MAX_UNREPORTED_PAUSES)
        # Per thread, for a runtime without a GIL; with one, collections never overlap.
        self._collecting = threading.local()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        if self._task is not None:
            return
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._sample(), name="qa-loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.report_pauses()

    def report_pauses(self) -> None:
        """Hands the collections timed since the last call to the observer."""
        while self._pauses:
            generation, seconds = self._pauses.popleft()
            self._observer.gc_paused(generation, seconds)

    async def _sample(self) -> None:
        while True:
            due = self._clock() + self._interval_s
            await self._sleep(self._interval_s)
            # asyncio may wake a timer up to its clock's resolution early.
            self._observer.loop_lagged(max(0.0, self._clock() - due))
            self.report_pauses()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._collecting.began = self._gc_clock()
            return
        began = getattr(self._collecting, "began", None)
        if began is not None:
            self._collecting.began = None
            self._pauses.append((info["generation"], self._gc_clock() - began))
