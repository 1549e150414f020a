"""`qa-worker bench`: the command's body, from parsed flags to the printed and written report."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..config import Settings
from ..errors import BenchError
from .options import BenchOptions
from .plot import import_pyplot, plot_report
from .report import print_summary
from .run import run_bench


def command_bench(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    settings = Settings.from_sources(args)
    options = BenchOptions(
        squad=args.squad,
        events=args.events,
        sweep_events=args.sweep_events,
        broker=args.broker,
        reference_python=args.reference_python,
        reference_model=args.reference_model,
        tracing_overhead=args.tracing_overhead,
        heavy_mix=args.heavy_mix,
        idle_seconds=args.idle_seconds,
    )
    try:
        if args.plot is not None:
            # Checked first: a missing library should not cost a run of several minutes.
            import_pyplot()
        report = run_bench(settings, options)
    except BenchError as error:
        print(f"qa-worker bench: {error}", file=sys.stderr)
        return 1
    print_summary(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.plot is not None:
        plot_report(report, args.plot)
    return 0
