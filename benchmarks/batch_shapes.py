"""Which batch size and token budget run the most windows per second, and the longest batch each
makes (what a question arriving behind it may wait).

    python -m benchmarks.batch_shapes --model models/mobilebert \\
        --squad ../shared/data/squad-v2-dev-half.json [--windows N] [--rounds R] [--json OUT]

The first questions' windows are grouped by length (the engine's own `plan_batches`) for every
pair of batch size and token budget, and each plan runs through the engine's session once per
round, plans in a fresh random order every round, so that noise on this shared machine hits them
all alike. Speed-ups are medians of per-round ratios against the worker's defaults.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
import time
from pathlib import Path

from worker.batching.plan import BatchLimits, plan_batches
from worker.config import Settings
from worker.qa import QAEngine
from worker.qa.windows import EncodedQuestion, Window
from worker.squad import read_questions

BATCH_SIZES = (1, 2, 4, 8, 16)
TOKEN_BUDGETS = (512, 1024, 2048, 8192)

Shape = tuple[int, int]


def first_windows(engine: QAEngine, squad: Path, count: int) -> list[Window]:
    windows: list[Window] = []
    for record in read_questions(squad):
        encoded = engine.tokenizer.encode_many([(record.question, record.context)])[0]
        if isinstance(encoded, EncodedQuestion):
            windows.extend(encoded.windows)
        if len(windows) >= count:
            break
    return windows


def run_plan(engine: QAEngine, windows: list[Window], plan: list[list[int]]) -> list[float]:
    """Seconds of each batch of the plan."""
    seconds = []
    for batch in plan:
        began = time.perf_counter()
        engine.infer([windows[index] for index in batch])
        seconds.append(time.perf_counter() - began)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--squad", type=Path, required=True)
    parser.add_argument("--precision", choices=("fp32", "int8"), default=None)
    parser.add_argument("--windows", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    defaults = Settings()
    baseline: Shape = (defaults.batch_size, defaults.max_batch_tokens)
    engine = QAEngine.load(args.model, precision=args.precision)
    windows = first_windows(engine, args.squad, args.windows)
    lengths = [len(window) for window in windows]
    shapes = sorted({*itertools.product(BATCH_SIZES, TOKEN_BUDGETS), baseline})
    # Uncapped padding: the shapes are compared on batch size and token budget alone.
    plans = {
        shape: plan_batches(lengths, BatchLimits(*shape, max_padding=math.inf)) for shape in shapes
    }
    for plan in plans.values():  # warm-up: the session's arenas grow to every batch shape once
        run_plan(engine, windows, plan)

    rng = random.Random(args.seed)
    runs: dict[Shape, list[list[float]]] = {shape: [] for shape in shapes}
    for _ in range(args.rounds):
        for shape in rng.sample(shapes, len(shapes)):
            runs[shape].append(run_plan(engine, windows, plans[shape]))

    rows = []
    real = sum(lengths)
    for shape in shapes:
        totals = [sum(run) for run in runs[shape]]
        ratios = [sum(base) / total for base, total in zip(runs[baseline], totals, strict=True)]
        plan = plans[shape]
        padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in plan)
        rows.append(
            {
                "batch_size": shape[0],
                "max_batch_tokens": shape[1],
                "windows_per_s": len(windows) / statistics.median(totals),
                "speedup": statistics.median(ratios),
                "padding_ratio": padded / real,
                "longest_batch_ms": 1000 * statistics.median(max(run) for run in runs[shape]),
            }
        )
    print(
        f"{len(windows)} windows of {real / len(windows):.0f} tokens on average, "
        f"{args.rounds} rounds; speed-up against batch size {baseline[0]}, "
        f"{baseline[1]} tokens (the defaults)\n"
    )
    print("| batch size | token budget | windows/s | speed-up | padding | longest batch ms |")
    print("|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: -r["speedup"]):
        print(
            f"| {row['batch_size']} | {row['max_batch_tokens']} | {row['windows_per_s']:.1f} | "
            f"{row['speedup']:.2f}x | {row['padding_ratio']:.3f} | {row['longest_batch_ms']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
