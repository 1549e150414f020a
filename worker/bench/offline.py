"""In-process measurements beside the ceiling: one window's time, the engine's rate."""

from __future__ import annotations

import statistics
import time

from ..backends import InferenceBackend
from ..config import Settings
from ..qa import QAEngine
from ..qa.batching import BatchLimits
from ..qa.engine import InferenceStats, pad_windows
from .clock import timed
from .report import Report
from .workload import Workload

WINDOW_WARMUP = 3
WINDOW_REPEATS = 20


def measure_window(backend: InferenceBackend, workload: Workload, pad_id: int) -> float:
    """Median batch-1 session time of a window of the median length, in ms."""
    inputs = pad_windows([workload.typical_window], pad_id)
    for _ in range(WINDOW_WARMUP):
        backend.run(inputs)
    times = [timed(lambda: backend.run(inputs)) for _ in range(WINDOW_REPEATS)]
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
