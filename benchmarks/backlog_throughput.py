"""Windows/s with a large backlog waiting against a small one: does what waits slow what runs?

    python -m benchmarks.backlog_throughput --model DIR [--backlogs 100 100000] [--measure 400]
        [--rounds 3] [--chars 100000]

For each backlog B, the worker's micro-batcher (the model loaded as `qa-worker run` would, the
default layout and limits, a work budget above B) is given questions over generated contexts of
`--chars` characters on four lanes, one more whenever fewer than B windows wait, until B wait;
then the next `--measure` windows to run are timed, from the batcher's own batch reports, while
the backlog is kept topped up. The backlogs take turns, `--rounds` times; a fresh batcher each
time, the same engine. Prints windows/s per round and the median ratio of each backlog's to the
first's. Each context is tokenized once and its windows copied for every question after (arrays
shared), so a backlog of 100,000 windows fills in seconds, not the minutes tokenizing would take
beside inference: what is measured is running windows with that many waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from parity import texts
from worker.batching.batcher import MicroBatcher
from worker.batching.layout import batch_limits
from worker.config import Settings
from worker.model.loading import load_engine
from worker.qa import QAEngine, QAOptions, QAResult
from worker.qa.decode import WindowLogits
from worker.qa.windows import EncodedQuestion, Window

LANES = 4


class ReusedEncodings:
    """The engine, with each context tokenized once: later questions get copies of its windows."""

    def __init__(self, engine: QAEngine) -> None:
        self._engine = engine
        self.streams = engine.streams
        self._encoded: dict[tuple[str, str], EncodedQuestion] = {}

    def encode(self, question: str, context: str) -> EncodedQuestion:
        key = (question, context)
        if key not in self._encoded:
            self._encoded[key] = self._engine.encode(question, context)
        encoded = self._encoded[key]
        windows = [dataclasses.replace(window) for window in encoded.windows]
        return dataclasses.replace(encoded, windows=windows)

    def infer(self, windows: Sequence[Window], stream: int) -> list[WindowLogits]:
        return self._engine.infer(windows, stream)

    def decode(
        self, encoded: EncodedQuestion, logits: Sequence[WindowLogits], options: QAOptions
    ) -> QAResult:
        return self._engine.decode(encoded, logits, options)


class BatchClock:
    """The end time and windows of every batch the batcher reports."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, int]] = []

    def on_batch(
        self, windows: int, real_tokens: int, padded_tokens: int, seconds: float, plan_s: float
    ) -> None:
        self.batches.append((time.perf_counter(), windows))

    def windows(self) -> int:
        return sum(windows for _, windows in self.batches)


async def windows_per_s(
    engine: ReusedEncodings, settings: Settings, contexts: list[str], backlog: int, measure: int
) -> float:
    clock = BatchClock()
    question = "Which company acquired the startup?"
    per_question = max(len(engine.encode(question, context).windows) for context in contexts)
    # Room for the backlog and for the windows of questions partly run, held until decoded.
    budget = 2 * backlog + 4 * per_question
    async with MicroBatcher(engine, batch_limits(settings), clock, work_budget=budget) as batcher:
        asked: set[asyncio.Task[object]] = set()
        lanes = itertools.cycle(range(LANES))
        supply = itertools.cycle(contexts)

        def coming() -> int:
            """Windows of questions asked and not tokenized yet, counted at their size."""
            return max(0, len(asked) * per_question - batcher.held_windows)

        async def top_up() -> None:
            while True:
                while batcher.pending_windows + coming() < backlog:
                    task = asyncio.create_task(
                        batcher.answer(question, next(supply), QAOptions(), lane=next(lanes))
                    )
                    asked.add(task)
                    task.add_done_callback(asked.discard)
                await asyncio.sleep(0.01)

        filler = asyncio.create_task(top_up())
        try:
            while batcher.pending_windows < 0.9 * backlog:
                await asyncio.sleep(0.05)
            start_windows, start = clock.windows(), time.perf_counter()
            while clock.windows() - start_windows < measure:
                await asyncio.sleep(0.05)
            ended, ran = clock.batches[-1][0], clock.windows() - start_windows
        finally:
            filler.cancel()
            for task in list(asked):
                task.cancel()
            await asyncio.gather(filler, *asked, return_exceptions=True)
    return ran / (ended - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--backlogs", type=int, nargs="+", default=[100, 100_000])
    parser.add_argument("--measure", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chars", type=int, default=100_000)
    args = parser.parse_args()
    settings = Settings(model=args.model)
    engine = ReusedEncodings(load_engine(settings))
    rng = random.Random(1)
    contexts = [texts.context(rng, args.chars // 4)[: args.chars] for _ in range(8)]
    rates: dict[int, list[float]] = {backlog: [] for backlog in args.backlogs}
    for round_ in range(1, args.rounds + 1):
        for backlog in args.backlogs:
            rate = asyncio.run(windows_per_s(engine, settings, contexts, backlog, args.measure))
            rates[backlog].append(rate)
            print(f"round {round_}: {backlog:>7,} waiting: {rate:6.2f} windows/s", flush=True)
    first = args.backlogs[0]
    for backlog in args.backlogs[1:]:
        ratios = [rate / base for rate, base in zip(rates[backlog], rates[first], strict=True)]
        print(
            f"{backlog:,} against {first:,} waiting: median ratio {statistics.median(ratios):.3f} "
            f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})"
        )


if __name__ == "__main__":
    main()
