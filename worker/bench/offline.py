"""In-process measurements beside the ceiling: one window's time, the engine's rate."""

from __future__ import annotations

import statistics
import time

from ..backends import InferenceBackend
from ..batching.layout import batch_limits
from ..config import Settings
from ..qa import QAEngine
from ..qa.engine import InferenceStats, pad_windows
from ..qa.windows import Window
from .clock import timed
from .report import Report
from .workload import Workload

WINDOW_WARMUP = 3
WINDOW_REPEATS = 20
# Per latency phase: the median over the phases is what the ratios use.
PHASE_WINDOW_REPEATS = 7


def measure_window(
    backend: InferenceBackend, workload: Workload, pad_id: int, repeats: int = WINDOW_REPEATS
) -> float:
    """Median batch-1 session time of a window of the median length, in ms."""
    return time_window(backend, workload.typical_window, pad_id, repeats)


def time_window(
    backend: InferenceBackend,
    window: Window,
    pad_id: int,
    repeats: int,
    warmup: int = WINDOW_WARMUP,
) -> float:
    """Median batch-1 session time of `window` over `repeats` runs after `warmup` ones, in ms."""
    inputs = pad_windows([window], pad_id)
    for _ in range(warmup):
        backend.run(inputs)
    times = [timed(lambda: backend.run(inputs)) for _ in range(repeats)]
    return statistics.median(times) * 1000


class WindowTimer:
    """One window of the median length at batch 1 on a session of the worker's threads per
    stream, timed again before each latency phase while the worker is idle: the latency ratios'
    denominator then shares the phases' conditions, where a figure taken once, apart from them,
    moved from 15 to 26 ms between runs and carried the ratios with it."""

    def __init__(self, backend: InferenceBackend, workload: Workload, pad_id: int) -> None:
        self._backend = backend
        self._workload = workload
        self._pad_id = pad_id
        self.samples_ms: list[float] = []

    def sample(self) -> float:
        self.samples_ms.append(
            measure_window(self._backend, self._workload, self._pad_id, PHASE_WINDOW_REPEATS)
        )
        return self.samples_ms[-1]

    @property
    def median_ms(self) -> float:
        """The median of the samples so far; one is taken when there is none yet."""
        if not self.samples_ms:
            self.sample()
        return statistics.median(self.samples_ms)


def measure_engine(engine: QAEngine, workload: Workload, settings: Settings) -> Report:
    engine.stats = InferenceStats()
    began = time.perf_counter()
    engine.answer_many(workload.questions, batch_limits(settings))
    seconds = time.perf_counter() - began
    return {
        "events_per_s": workload.events / seconds,
        "seconds": seconds,
        "inference_share": engine.stats.seconds / seconds,
        "padding_ratio": engine.stats.padding_ratio,
    }
