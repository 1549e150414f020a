"""The bare session's ceiling: the best of streams x threads x batch size, and the baseline.

A layout of s streams with t intra-op threads each runs s caller threads, each taking the next
planned batch from a shared list and running it on its own stream, as the worker's batcher does.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backends.onnx import OnnxBackend
from ..batching.layout import batch_limits
from ..batching.plan import BatchLimits, plan_batches
from ..batching.streams import each_stream_takes_next
from ..config import Settings
from ..qa.engine import pad_windows
from .report import Report
from .workload import Workload

CEILING_BATCH_SIZES = (1, 4, 8, 16)
CEILING_ROUNDS = 3

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class Layout:
    streams: int
    threads: int

    @property
    def name(self) -> str:
        return f"{self.streams}x{self.threads}"


def ceiling_batch_sizes(settings: Settings) -> list[int]:
    return sorted({*CEILING_BATCH_SIZES, batch_limits(settings).batch_size})


def ceiling_layouts(cores: int) -> list[Layout]:
    """Every (streams, threads per stream) with streams x threads <= cores: 1x1, 1x2, 2x1 on 2."""
    return [
        Layout(streams, threads)
        for streams in range(1, cores + 1)
        for threads in range(1, cores // streams + 1)
    ]


@dataclass(frozen=True)
class Timing:
    seconds: float
    cpu_cores: float


def run_streams(streams: int, work: Callable[[int], None]) -> Timing:
    """`work(stream)` on `streams` threads at once: the wall time, and the process's CPU cores.

    Process CPU time counts every thread's, ONNX Runtime's intra-op pools included, as the
    worker's cpu_cores does.
    """
    with ThreadPoolExecutor(streams) as pool:
        began, cpu_began = time.perf_counter(), time.process_time()
        for future in [pool.submit(work, stream) for stream in range(streams)]:
            future.result()
        seconds = time.perf_counter() - began
        cpu = time.process_time() - cpu_began
    return Timing(seconds, cpu / seconds)


def time_batches(backend: OnnxBackend, batches: Sequence[Batch]) -> Timing:
    """Every batch run once, each stream taking the next one left, as the batcher does."""

    def run(index: int, stream: int) -> None:
        backend.run(batches[index], stream)

    return run_streams(backend.streams, each_stream_takes_next(len(batches), run))


def plan_padded(workload: Workload, limits: BatchLimits, pad_id: int) -> list[Batch]:
    plan = plan_batches(workload.lengths, limits)
    return [pad_windows([workload.windows[i] for i in batch], pad_id) for batch in plan]


def measure_layouts(
    model_path: Path,
    workload: Workload,
    layouts: Sequence[Layout],
    batch_sizes: Sequence[int],
    limits: BatchLimits,
    pad_id: int,
) -> Report:
    """`ceiling` (the best layout and size) and `baseline` (1 x cores, its best size).

    Every (layout, size) runs CEILING_ROUNDS times, in a fresh order each round, and keeps its
    median: the best of single noisy runs would overstate what the session sustains, and
    interleaving spreads the machine's slow moments over all of them alike.
    """
    backends = {
        layout: OnnxBackend(model_path, layout.threads, layout.streams) for layout in layouts
    }
    plans = {
        size: plan_padded(workload, dataclasses.replace(limits, batch_size=size), pad_id)
        for size in batch_sizes
    }
    for layout, backend in backends.items():
        # The longest batch, on every stream: each sizes its buffers for it once.
        for stream in range(layout.streams):
            for batches in plans.values():
                backend.run(batches[-1], stream)
    cases = [(layout, size) for layout in layouts for size in batch_sizes]
    runs: dict[tuple[Layout, int], list[Timing]] = {case: [] for case in cases}
    rng = random.Random(0)
    for _ in range(CEILING_ROUNDS):
        for layout, size in rng.sample(cases, len(cases)):
            runs[layout, size].append(time_batches(backends[layout], plans[size]))
    padded = {
        size: sum(inputs["input_ids"].size for inputs in batches) for size, batches in plans.items()
    }
    table = [
        {
            "streams": layout.streams,
            "threads": layout.threads,
            "batch_size": size,
            "events_per_s": workload.events / statistics.median(t.seconds for t in timings),
            "cpu_cores": statistics.median(t.cpu_cores for t in timings),
        }
        for (layout, size), timings in runs.items()
    ]
    cores = max(layout.streams * layout.threads for layout in layouts)
    baseline = [row for row in table if (row["streams"], row["threads"]) == (1, cores)]
    return {
        "ceiling": _section(table, workload, plans, padded),
        "baseline": _section(baseline, workload, plans, padded),
    }


def _section(
    table: list[Report],
    workload: Workload,
    plans: dict[int, list[Batch]],
    padded: dict[int, int],
) -> Report:
    best = max(table, key=lambda row: row["events_per_s"])
    size = best["batch_size"]
    return {
        **best,
        "seconds": workload.events / best["events_per_s"],
        "padding_ratio": padded[size] / sum(workload.lengths),
        # Rows of the matrix products' left operand in one batch, as this size runs them.
        "mean_batch_tokens": padded[size] / len(plans[size]),
        "events_per_core_s": best["events_per_s"] / best["cpu_cores"],
        "layouts": table,
    }
