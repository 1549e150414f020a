"""Goodput at the SLO: the highest open-loop rate whose answer latency p99 stays within it."""

from __future__ import annotations

from collections.abc import Sequence

from ..squad import QuestionRecord
from .load import LoadGenerator, phase_events
from .offline import WindowTimer
from .report import Report, note

# The SLO, in windows' inference times: p99 at most this many times one window's batch-1 run.
SLO_WINDOWS = 10
GOODPUT_STEPS = 5


async def measure_goodput(
    load: LoadGenerator,
    records: Sequence[QuestionRecord],
    capacity: float,
    window: WindowTimer,
    events: int,
    steps: int = GOODPUT_STEPS,
) -> Report:
    """Bisection of [0, capacity]: capacity itself first, then the middle of what is left.

    A rate that holds the SLO raises the bracket's floor, one that misses it lowers its top; the
    goodput is the last floor, the highest rate seen holding the SLO (0 if none did). Each step is
    a short open-loop run of `events` Poisson arrivals through the worker.
    """
    # The window's median over the sweep's phases, which the latency ratios use too.
    slo_ms = SLO_WINDOWS * window.median_ms
    low, high = 0.0, capacity
    best: Report | None = None
    taken = []
    rate = capacity
    for step in range(steps):
        note(f"goodput: step {step + 1}, {events} events at {rate:.1f} events/s")
        phase = await load.run(phase_events(f"goodput-{step}", records, events), rate)
        p99 = phase["latency_ms"]["p99"]
        met = p99 <= slo_ms
        taken.append(
            {
                "target_events_per_s": rate,
                "events_per_s": phase["events_per_s"],
                "p99_ms": p99,
                "met": met,
                "bracket": [low, high],
            }
        )
        if met:
            low, best = rate, taken[-1]
            if rate == capacity:
                break
        else:
            high = rate
        rate = (low + high) / 2
    return {
        "slo_ms": slo_ms,
        "events_per_s": low,
        "p99_ms": best["p99_ms"] if best is not None else None,
        "capacity_events_per_s": capacity,
        "steps": taken,
    }
