"""What queueing alone allows: the latencies an ideal worker gives for a phase's own arrivals.

The ideal worker has the measured worker's streams and nothing else to do: no broker hops, no
tokenizing, no event loop, no other thread on its cores. It runs each window alone (batch 1) on
the first stream to come free, events in the order they arrived, each window in the time it took
alone on one stream's session on an idle machine (`measure_window_times`). Its latencies depend
only on the arrivals and the work they bring, so they bound the worker's from below: a long
context that makes several windows, or questions on one long passage arriving together, queue
here too. The part of a measured latency above the bound is the worker's own.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from ..backends import InferenceBackend
from ..qa.windows import EncodedQuestion
from .offline import time_window
from .workload import Workload

# Runs per distinct window length; the median is kept.
WINDOW_TIME_REPEATS = 3


def queueing_latencies_ms(
    arrivals_s: Sequence[float], windows_ms: Sequence[Sequence[float]], streams: int
) -> list[float]:
    """Each event's latency in ms on the ideal worker, from its arrival to the end of its last
    window, in the order given. `arrivals_s[i]` is event i's arrival in seconds on any clock,
    `windows_ms[i]` the run times of its windows; an event with no windows (refused) takes 0."""
    if len(arrivals_s) != len(windows_ms):
        raise ValueError(f"{len(arrivals_s)} arrivals for {len(windows_ms)} events")
    if streams < 1:
        raise ValueError(f"streams must be 1 or more, got {streams}")
    free_at = [float("-inf")] * streams  # a heap: when each stream is next free
    latencies = [0.0] * len(arrivals_s)
    for index in sorted(range(len(arrivals_s)), key=arrivals_s.__getitem__):
        arrival = arrivals_s[index]
        finish = arrival
        for run_ms in windows_ms[index]:
            start = max(arrival, heapq.heappop(free_at))
            end = start + run_ms / 1000
            heapq.heappush(free_at, end)
            finish = max(finish, end)
        latencies[index] = (finish - arrival) * 1000
    return latencies


def measure_window_times(
    backend: InferenceBackend, workload: Workload, pad_id: int
) -> list[list[float]]:
    """The batch-1 run time in ms of each window of each question of the workload (none for a
    question the engine refused), timed once per distinct length (windows of one length cost
    the same) as the median of `WINDOW_TIME_REPEATS` runs."""
    by_length: dict[int, float] = {}
    for window in workload.windows:
        if len(window) not in by_length:
            # One warm-up: the first run of a new shape sets up buffers for it.
            by_length[len(window)] = time_window(
                backend, window, pad_id, WINDOW_TIME_REPEATS, warmup=1
            )
    return [
        [by_length[len(window)] for window in item.windows]
        if isinstance(item, EncodedQuestion)
        else []
        for item in workload.encoded
    ]


@dataclass(frozen=True)
class QueueingModel:
    """The ideal worker for a run: the run times of each record's windows, in the records'
    order, and the worker's streams."""

    windows_ms: Sequence[Sequence[float]]
    streams: int

    def latencies_ms(self, arrivals_s: Sequence[float]) -> list[float]:
        """Latencies of a phase whose event i, arriving at `arrivals_s[i]`, is record i modulo
        the records (as `load.phase_events` cycles through them)."""
        count = len(self.windows_ms)
        work = [self.windows_ms[index % count] for index in range(len(arrivals_s))]
        return queueing_latencies_ms(arrivals_s, work, self.streams)
