"""Medians over repeated `qa-worker bench` runs: each run's ratios first, then their median.

    for run in 1 2 3 4 5; do
        qa-worker bench --model models/mobilebert --squad FILE --json runs/$run.json
    done
    python -m benchmarks.bench_medians runs/*.json

Times on a shared 2-core machine swing by tens of percent between runs, and not alike for every
phase; a ratio taken inside one run (end_to_end over ceiling) cancels most of that, so targets are
checked on the median of the per-run ratios, never on a ratio of medians
(`worker/bench/medians.py`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from worker.bench.medians import medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="JSON reports of qa-worker bench")
    args = parser.parse_args()
    reports = [json.loads(path.read_text()) for path in args.reports]
    models = {(r["model_type"], r["precision"]) for r in reports}
    if len(models) != 1:
        raise SystemExit(f"the reports are of different models or precisions: {sorted(models)}")
    ((model_type, precision),) = models
    print(
        f"{model_type} {precision}, median of {len(reports)} runs of {reports[0]['events']} events"
    )
    print()
    print("| figure | median | min | max | target |")
    print("|---|---|---|---|---|")
    for name, median, low, high, check in medians(reports):
        print(f"| {name} | {median:.3g} | {low:.3g} | {high:.3g} | {check} |")


if __name__ == "__main__":
    main()
