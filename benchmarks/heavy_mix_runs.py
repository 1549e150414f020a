"""The bench's heavy mix repeated, optionally against the worker of an older checkout: medians.

    git archive d2bc384 | tar -x -C /tmp/before     # the code to compare with, if any
    python -m benchmarks.heavy_mix_runs --model /tmp/models/mobilebert \\
        --squad ../shared/data/squad-v2-dev-half.json --runs 3 \\
        [--long-counts 40 200] [--documents 2 --fields 12] [--context-chars N] \\
        [--compare before=/tmp/before ...] [--json OUT]

Each run measures `qa-worker bench --heavy-mix`'s phase (`worker.bench.heavy_mix`) on the same
inputs: the bench's first `--events` questions, their one-window ones as the light questions,
and "one window" timed once, as the bench does, on the worker's layout. With `--compare NAME=DIR`
(repeatable), each run measures each DIR's worker in turn and then this checkout's, so that all
see the same machine by turns; DIR's worker is this bench's `python -m worker run` run in DIR and
with DIR first on PYTHONPATH (every QA_ setting a checkout does not know is ignored by it).
Figures an older worker does not export (the planning histogram, the held-windows gauges) are
absent.

Printed: per code and case, the median (min-max) over the runs of RSS growth, the light
questions' p50 and p99 (ms and windows), windows/s, event-loop lag p99 (a bucket bound),
planning time (mean and the highest bucket reached), and the slowest /healthz and /readyz probe.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from worker.backends.onnx import OnnxBackend, stream_layout
from worker.bench.heavy_mix import HeavyMix, measure_heavy_mix, one_window_records
from worker.bench.medians import figure
from worker.bench.offline import WindowTimer
from worker.bench.workload import Workload
from worker.config import Settings
from worker.model.loading import load_engine
from worker.qa import QAOptions
from worker.squad import read_questions

Figure = tuple[str, Callable[[dict[str, Any]], float | None]]


def dig(*path: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda case: figure(case, path)


FIGURES: tuple[Figure, ...] = (
    ("RSS growth MB", dig("rss_mb", "growth")),
    ("RSS kept MB", lambda case: _kept(case)),
    ("light p50 ms", dig("light", "latency_ms", "p50")),
    ("light p99 ms", dig("light", "latency_ms", "p99")),
    ("light p50 windows", dig("light", "latency_windows", "p50")),
    ("light p99 windows", dig("light", "latency_windows", "p99")),
    ("light dead-lettered", dig("light", "dead_lettered")),
    ("long: all answered s", dig("long", "all_answered_s")),
    ("tags: slowest document s", lambda case: _slowest(case.get("time_to_tags_s"))),
    ("windows/s", dig("windows_per_s")),
    ("loop lag p99 at most ms", dig("runtime", "loop_lag_p99_at_most_ms")),
    ("loop lag share over 5 ms", dig("runtime", "loop_lag_share_over_5ms")),
    ("plan mean ms", dig("batch_plan", "mean_ms")),
    ("plan max at most ms", dig("batch_plan", "max_at_most_ms")),
    ("held windows max", dig("held_windows_max")),
    ("/healthz max ms", dig("probes", "healthz", "max_ms")),
    ("/readyz max ms", dig("probes", "readyz", "max_ms")),
    ("/readyz not 200", dig("probes", "readyz", "not_ok")),
)


def _slowest(times: list[float | None] | None) -> float | None:
    if not times:
        return None
    # A document with no tags event counts as never tagged.
    return float("inf") if None in times else float(max(t for t in times if t is not None))


def _kept(case: dict[str, Any]) -> float | None:
    rss = case.get("rss_mb") or {}
    if rss.get("after") is None or rss.get("idle") is None:
        return None
    return float(rss["after"] - rss["idle"])


def cases(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    named = {f"{case['long_contexts']} long contexts": case for case in report["long_contexts"]}
    tagging = report["tagging"]
    named[f"{tagging['documents']} documents x {tagging['fields']} fields"] = tagging
    return named


def measure(settings: Settings, args: argparse.Namespace) -> tuple[list[Any], list[Any], float]:
    """The corpus, the light questions and one window's median time, as `qa-worker bench`."""
    corpus = read_questions(args.squad)
    records = corpus[: args.events]
    engine = load_engine(settings)
    workload = Workload.encode(engine, records, settings.subset(QAOptions))
    threads, _ = stream_layout(settings.inference_streams, settings.threads)
    model_path = engine.manifest.onnx_path(settings.require_model(), settings.precision)
    timer = WindowTimer(
        OnnxBackend(model_path, threads, 1), workload, engine.manifest.tokenizer.pad_token_id
    )
    return list(corpus), list(one_window_records(records, workload)), timer.median_ms


def run_once(
    settings: Settings,
    sizes: HeavyMix,
    inputs: tuple[list[Any], list[Any], float],
    checkout: Path | None,
) -> dict[str, Any]:
    corpus, light, window_ms = inputs
    saved = os.environ.get("PYTHONPATH"), Path.cwd()
    if checkout is not None:
        # `python -m` puts its working directory first on the path, before PYTHONPATH.
        os.chdir(checkout)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout), saved[0]]))
    try:
        return asyncio.run(measure_heavy_mix(settings, None, corpus, light, window_ms, sizes))
    finally:
        os.chdir(saved[1])
        if saved[0] is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved[0]


def summary(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, str]]:
    table: dict[str, dict[str, str]] = {}
    for name in cases(runs[0]):
        row = {}
        for label, read in FIGURES:
            values = [v for v in (read(cases(run)[name]) for run in runs) if v is not None]
            if values:
                row[label] = (
                    f"{statistics.median(values):.4g} ({min(values):.4g}-{max(values):.4g})"
                )
        table[name] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--squad", type=Path, required=True)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--long-counts", type=int, nargs="+", default=[40])
    parser.add_argument("--documents", type=int, default=2)
    parser.add_argument("--fields", type=int, default=12)
    parser.add_argument(
        "--context-chars", type=int, help="default: the worker's --max-context-chars"
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="another checkout whose worker to measure, under NAME; repeatable",
    )
    parser.add_argument("--json", type=Path, help="every run's whole report")
    args = parser.parse_args()
    settings = Settings(model=args.model)
    sizes = HeavyMix(
        long_counts=tuple(args.long_counts),
        context_chars=args.context_chars,
        documents=args.documents,
        fields=args.fields,
    )
    inputs = measure(settings, args)
    print(f"one window: {inputs[2]:.1f} ms", flush=True)
    codes: dict[str, Path | None] = {}
    for given in args.compare:
        name, _, folder = given.partition("=")
        codes[name] = Path(folder)
    codes["this checkout"] = None
    runs: dict[str, list[dict[str, Any]]] = {code: [] for code in codes}
    for index in range(args.runs):
        for code, checkout in codes.items():
            print(f"run {index + 1} of {args.runs}: {code}", flush=True)
            runs[code].append(run_once(settings, sizes, inputs, checkout))
            if args.json:
                args.json.write_text(json.dumps(runs, indent=1, default=str))
    for code, reports in runs.items():
        for name, row in summary(reports).items():
            print(f"\n{code}: {name}, median (min-max) of {len(reports)}")
            for label, text in row.items():
                print(f"  {label:28} {text}")


if __name__ == "__main__":
    main()
