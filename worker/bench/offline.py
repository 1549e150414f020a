"""In-process measurements: the bare session's ceiling, one window's time, the engine's rate."""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Sequence

from ..config import Settings
from ..qa import QAEngine
from ..qa.batching import BatchLimits, plan_batches
from ..qa.engine import InferenceStats, pad_windows
from .clock import timed
from .report import Report
from .workload import Workload

CEILING_BATCH_SIZES = (1, 4, 8, 16)
CEILING_ROUNDS = 3


WINDOW_WARMUP = 3
WINDOW_REPEATS = 20


def ceiling_batch_sizes(settings: Settings) -> list[int]:
    return sorted({*CEILING_BATCH_SIZES, settings.batch_size})


def measure_ceiling(
    engine: QAEngine, workload: Workload, batch_sizes: Sequence[int], limits: BatchLimits
) -> Report:
    """Session runs only, over windows tokenized and padded beforehand, at each batch size.

    Each size runs CEILING_ROUNDS times, the sizes in a fresh order each round, and keeps its
    median: the best of single noisy runs would overstate what the session sustains.
    """
    rng = random.Random(0)
    runs: dict[int, list[tuple[float, float]]] = {size: [] for size in batch_sizes}
    for _ in range(CEILING_ROUNDS):
        for size in rng.sample(list(batch_sizes), len(batch_sizes)):
            runs[size].append(
                _time_batches(engine, workload, dataclasses.replace(limits, batch_size=size))
            )
    by_size = {
        size: (statistics.median(seconds for seconds, _ in timed), timed[0][1])
        for size, timed in runs.items()
    }
    best = min(by_size, key=lambda size: by_size[size][0])
    seconds, padding = by_size[best]
    return {
        "events_per_s": workload.events / seconds,
        "seconds": seconds,
        "batch_size": best,
        "padding_ratio": padding,
        "events_per_s_by_batch_size": {
            str(size): workload.events / by_size[size][0] for size in batch_sizes
        },
    }


def _time_batches(engine: QAEngine, workload: Workload, limits: BatchLimits) -> tuple[float, float]:
    """Seconds to run every window in batches planned within `limits`, and the padding ratio."""
    pad_id = engine.manifest.tokenizer.pad_token_id
    plan = plan_batches(workload.lengths, limits)
    batches = [pad_windows([workload.windows[i] for i in batch], pad_id) for batch in plan]
    # The last batch holds the longest windows: the session sizes its buffers for it once.
    engine.backend.run(batches[-1])
    began = time.perf_counter()
    for inputs in batches:
        engine.backend.run(inputs)
    seconds = time.perf_counter() - began
    padded = sum(inputs["input_ids"].size for inputs in batches)
    return seconds, padded / sum(workload.lengths)


def measure_window(engine: QAEngine, workload: Workload) -> float:
    """Median batch-1 session time of a window of the median length, in ms."""
    inputs = pad_windows([workload.typical_window], engine.manifest.tokenizer.pad_token_id)
    for _ in range(WINDOW_WARMUP):
        engine.backend.run(inputs)
    times = [timed(lambda: engine.backend.run(inputs)) for _ in range(WINDOW_REPEATS)]
    return statistics.median(times) * 1000


def measure_engine(engine: QAEngine, workload: Workload, settings: Settings) -> Report:
    engine.stats = InferenceStats()
    began = time.perf_counter()
    engine.answer_many(workload.questions, settings.subset(BatchLimits))
    seconds = time.perf_counter() - began
    return {
        "events_per_s": workload.events / seconds,
        "seconds": seconds,
        "inference_share": engine.stats.seconds / seconds,
        "padding_ratio": engine.stats.padding_ratio,
    }
