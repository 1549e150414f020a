"""Clocks: the wall time of a call, and the CPU time of any process by its pid."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def timed(work: Callable[[], object]) -> float:
    began = time.perf_counter()
    work()
    return time.perf_counter() - began


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system, all threads) a process has used so far; None where unknown.

    Read from the process's CPU-time clock (Linux's clock_getcpuclockid), which counts in
    nanoseconds. /proc's stat counts in 10 ms ticks, and a process that used less than one tick
    in a short phase would read as idle.
    """
    if pid is None or not sys.platform.startswith("linux"):
        return None
    try:
        return time.clock_gettime(process_cpu_clock(pid))
    except OSError:  # the process has exited
        return None


def process_cpu_clock(pid: int) -> int:
    """The clock id clock_getcpuclockid(pid) returns on Linux: ~pid << 3 | CPUCLOCK_SCHED."""
    return (~pid << 3) | 2
