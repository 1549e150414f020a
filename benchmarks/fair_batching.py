"""Latency of normal questions queued behind one question with a 99,990-character context.

    python -m benchmarks.fair_batching --model MODEL_FOLDER [--normal 50] [--rounds 3]
    python -m benchmarks.fair_batching --model MODEL_FOLDER --oldest-seeds   # the old planner
    python -m benchmarks.fair_batching --model MODEL_FOLDER --without-long   # the baseline

One long question is submitted to a `MicroBatcher` with the worker's default batch limits, then
`--normal` short ones at once; each short one's latency runs from its submission to its answer.
`--oldest-seeds` seeds every batch with the oldest pending window, as the planner did before
events took turns (`worker.batching.plan.seed_index`), for the comparison. Prints p50 / p99 in ms
over all rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from worker import batcher as batcher_module
from worker.batching.batcher import MicroBatcher
from worker.batching.plan import BatchLimits
from worker.config import Settings
from worker.model.loading import load_engine
from worker.qa.types import QAOptions

LONG_CONTEXT = ("The quick brown fox jumps over the lazy dog near the river bank. " * 1600)[:99_990]
NORMAL_CONTEXT = (
    "In March, Acme Corp. acquired the robotics startup Widget Inc. for $40 million after "
    "months of talks. The deal gives Acme a foothold in warehouse automation."
)


async def one_round(batcher: MicroBatcher, normal: int, long_context: str) -> list[float]:
    options = QAOptions()
    long_one = asyncio.ensure_future(batcher.answer("What jumps?", long_context, options))
    await asyncio.sleep(0)

    async def timed(index: int) -> float:
        started = time.perf_counter()
        await batcher.answer(f"Who bought Widget ({index})?", NORMAL_CONTEXT, options)
        return time.perf_counter() - started

    latencies = await asyncio.gather(*(timed(i) for i in range(normal)))
    await long_one
    return list(latencies)


async def main(model: Path, normal: int, rounds: int, long_context: str) -> None:
    settings = Settings(model=model, precision="fp32")
    engine = load_engine(settings)
    async with MicroBatcher(engine, settings.subset(BatchLimits)) as batcher:
        await one_round(batcher, 2, long_context)  # warm-up
        latencies: list[float] = []
        for _ in range(rounds):
            latencies += await one_round(batcher, normal, long_context)
    cuts = statistics.quantiles(latencies, n=100)
    p50, p99 = cuts[49] * 1000, cuts[98] * 1000
    print(f"{len(latencies)} normal questions: p50 {p50:.0f} ms, p99 {p99:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--normal", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--oldest-seeds", action="store_true")
    parser.add_argument("--without-long", action="store_true", help="a short question instead")
    args = parser.parse_args()
    if args.oldest_seeds:
        batcher_module.seed_index = lambda owners, previous, *rest: 0  # type: ignore[assignment]
    long_context = NORMAL_CONTEXT if args.without_long else LONG_CONTEXT
    asyncio.run(main(args.model, args.normal, args.rounds, long_context))
