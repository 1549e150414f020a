"""Medians over repeated `qa-worker bench` reports: each run's ratios first, then their median.

Times on a shared 2-core machine swing by tens of percent between runs, and not alike for every
phase; a ratio taken inside one run (end_to_end over ceiling) cancels most of that, so targets are
checked on the median of the per-run ratios, never on a ratio of medians.
`python -m benchmarks.bench_medians RUN.json...` prints them as a table.
"""

from __future__ import annotations

import statistics
from typing import Any

from worker.bench.report import TARGETS, meets

FIGURES = (
    ("ceiling events/s", ("ceiling", "events_per_s")),
    ("ceiling streams", ("ceiling", "streams")),
    ("ceiling threads per stream", ("ceiling", "threads")),
    ("ceiling batch size", ("ceiling", "batch_size")),
    ("ceiling CPU cores", ("ceiling", "cpu_cores")),
    ("ceiling events per core-second", ("ceiling", "events_per_core_s")),
    ("ceiling share of GEMM peak", ("ceiling", "peak_share")),
    ("ceiling share of GEMM at the model's shapes", ("ceiling", "shape_matched_share")),
    ("baseline events/s", ("baseline", "events_per_s")),
    ("baseline batch size", ("baseline", "batch_size")),
    ("baseline CPU cores", ("baseline", "cpu_cores")),
    ("engine events/s", ("engine", "events_per_s")),
    ("end_to_end events/s", ("end_to_end", "events_per_s")),
    ("end_to_end worker CPU cores", ("end_to_end", "cpu_cores", "worker")),
    ("end_to_end broker CPU cores", ("end_to_end", "cpu_cores", "broker")),
    ("end_to_end load generator CPU cores", ("end_to_end", "cpu_cores", "load_generator")),
    ("end_to_end events per worker core-second", ("end_to_end", "events_per_core_s")),
    ("share of GEMM peak, end_to_end", ("end_to_end", "peak_share")),
    ("reference events/s", ("reference", "events_per_s")),
    ("GEMM int8 peak GOP/s", ("gemm_int8_gops",)),
    ("GEMM int8 at the model's shapes GOP/s", ("gemm_model_shapes", "gops")),
    ("window inference ms", ("window_inference_ms",)),
    ("p50 at 25% load, ms", ("sweep", 0.25, "p50")),
    ("p99 at 75% load, ms", ("sweep", 0.75, "p99")),
    ("p99 at 75% load queueing alone allows, ms", ("sweep", 0.75, "p99", "queueing_bound_ms")),
    ("p50 at 25% load queueing alone allows, ms", ("sweep", 0.25, "p50", "queueing_bound_ms")),
    ("p99 at 100% load, ms", ("sweep", 1.0, "p99")),
    ("goodput at the SLO, events/s", ("goodput", "events_per_s")),
    ("goodput's p99, ms", ("goodput", "p99_ms")),
    ("idle CPU cores", ("idle_cpu_cores",)),
    ("padding ratio", ("padding_ratio",)),
    ("peak RSS MB", ("peak_rss_mb",)),
    ("peak RSS with one stream MB", ("memory", "one_stream_peak_rss_mb")),
    ("RSS per stream MB", ("memory", "rss_per_stream_mb")),
    ("start to ready s", ("startup_s",)),
)


def figure(report: dict[str, Any], path: tuple[Any, ...]) -> float | None:
    if path[0] == "sweep":
        load, percentile = path[1], path[2]
        entry = next((e for e in report["sweep"] if e["load"] == load), None)
        if entry is None:
            return None
        latencies = entry.get(path[3] if len(path) > 3 else "latency_ms")
        return None if latencies is None else latencies[percentile]
    value: Any = report
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return float(value)


def medians(reports: list[dict[str, Any]]) -> list[tuple[str, float, float, float, str]]:
    """(name, median, min, max, check) for every figure and target the runs have."""
    rows = []
    for name, path in FIGURES:
        values = [v for v in (figure(r, path) for r in reports) if v is not None]
        if values:
            rows.append((name, statistics.median(values), min(values), max(values), ""))
    for name, meaning, operator, limit in TARGETS:
        values = [r["targets"][name]["value"] for r in reports if name in r["targets"]]
        if not values:
            continue
        median = statistics.median(values)
        check = f"{operator} {limit:g}: {'met' if meets(median, operator, limit) else 'MISSED'}"
        rows.append((f"{meaning} (target)", median, min(values), max(values), check))
    return rows
