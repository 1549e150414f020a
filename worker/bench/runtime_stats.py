"""A phase's event-loop lag and garbage-collection pauses, from the worker's /metrics histograms.

The worker measures both all the time (`qa_worker_event_loop_lag_seconds`,
`qa_worker_gc_pause_seconds`); the difference of the histograms before and after a phase is
that phase's. A quantile is read from the cumulative buckets as the upper bound of the bucket it
falls in: no finer than the buckets, never lower than the truth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..observability.metrics import GC_GENERATIONS, LOOP_LAG_BUCKETS
from .report import Report

LOOP_LAG = "qa_worker_event_loop_lag_seconds"
GC_PAUSE = "qa_worker_gc_pause_seconds"


def runtime_statistics(before: Mapping[str, float], after: Mapping[str, float]) -> Report:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    samples = delta(f"{LOOP_LAG}_count")
    cumulative = [(bound, delta(f"{LOOP_LAG}_bucket{{le={bound}}}")) for bound in LOOP_LAG_BUCKETS]
    return {
        "loop_lag_samples": samples,
        "loop_lag_mean_ms": delta(f"{LOOP_LAG}_sum") / samples * 1000 if samples else None,
        "loop_lag_p99_at_most_ms": bucket_quantile(cumulative, samples, 0.99),
        "loop_lag_share_over_5ms": share_over(cumulative, samples, 0.005),
        "gc_pauses": {
            str(generation): {
                "count": delta(f"{GC_PAUSE}_count{{generation={generation}}}"),
                "total_ms": delta(f"{GC_PAUSE}_sum{{generation={generation}}}") * 1000,
            }
            for generation in range(GC_GENERATIONS)
        },
    }


def share_over(cumulative: list[tuple[float, float]], total: float, bound: float) -> float | None:
    """The share of `total` samples above `bound`, which must be one of the buckets' bounds."""
    if not total:
        return None
    return 1 - dict(cumulative)[bound] / total


def bucket_quantile(
    cumulative: list[tuple[float, float]], total: float, quantile: float
) -> float | None:
    """The upper bound in ms of the bucket holding `quantile` of `total` samples; infinity past
    the last bucket, None with no samples."""
    if not total:
        return None
    for bound, count in cumulative:
        if count >= quantile * total:
            return bound * 1000
    return math.inf
