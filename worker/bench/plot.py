"""The latency-against-throughput chart (`--plot`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BenchError
from .report import Report


def import_pyplot() -> Any:
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise BenchError("--plot needs matplotlib: pip install 'kafka-qa-worker[bench]'") from None
    # No display is needed to write a file.
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def plot_report(report: Report, path: Path) -> None:
    """Latency percentiles of the sweep against achieved throughput, and the end-to-end burst."""
    pyplot = import_pyplot()
    figure, axes = pyplot.subplots(figsize=(8, 5))
    sweep = report["sweep"]
    rates = [entry["events_per_s"] for entry in sweep]
    burst = report["end_to_end"]
    for percentile, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        line = axes.plot(
            rates, [entry["latency_ms"][percentile] for entry in sweep], style, label=percentile
        )[0]
        axes.plot(
            burst["events_per_s"], burst["latency_ms"][percentile], "x", color=line.get_color()
        )
    for entry in sweep:
        axes.annotate(
            f"{entry['load']:.0%}", (entry["events_per_s"], entry["latency_ms"]["p50"]), fontsize=8
        )
    axes.axhline(
        report["window_inference_ms"], linestyle=":", color="grey", label="one window, batch 1"
    )
    axes.axvline(report["ceiling"]["events_per_s"], linestyle="--", color="grey", label="ceiling")
    axes.plot([], [], "x", color="black", label="all events at once")
    axes.set_yscale("log")
    axes.set_xlabel("events/s answered")
    axes.set_ylabel("latency, produce to answer (ms)")
    axes.set_title(f"{Path(report['model']).name} ({report['precision']}): latency by load")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
