"""The bulk work's threads yield the CPU to the event loop's.

On two cores, two inference threads and the long-context tokenizer keep every core busy during a
backlog, and the event loop (reading, producing, probes, planning) then waits for the scheduler
to hand it one: its wake-ups came over 5 ms late about twice as often as with these threads at a
lower priority, for the same windows/s (docs/performance.md, "Event-loop lag under a backlog").
Raising a thread's nice value needs no privilege, so it works in a locked-down pod; where the
system refuses anyway, the thread keeps its priority.
"""

from __future__ import annotations

import contextlib
import os
import threading

__all__ = ["BULK_NICE", "yield_to_event_loop"]

# Nice 10 weighs a thread at about a tenth of a nice-0 one (the Linux scheduler's table), so the
# loop takes a core at once when it wakes, and the bulk threads keep whatever the loop leaves.
BULK_NICE = 10


def yield_to_event_loop() -> None:
    """Lowers the calling thread's priority to `BULK_NICE` (a thread pool's initializer)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BULK_NICE)
