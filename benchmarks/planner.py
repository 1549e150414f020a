"""What planning one batch costs the event loop, against how many windows wait.

    python -m benchmarks.planner [--pending 1000 10000 100000] [--batches 2000]

For each backlog it fills a `PendingQueue` with long questions of 400 windows (384 tokens, the
last shorter) on four partitions and one-window questions of random length on four others, then
times `next_batch` for `--batches` batches (refilling what leaves, so the backlog holds), at
batch size 1 (the default on single-threaded streams) and 16. Beside it, the list planner the
batcher used before the queue (`plan.seed_index` and `plan.next_batch` over every waiting window,
then the list rebuilt without the batch), on the same backlog. Prints ms per batch, mean and p99.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from worker.batching.plan import BatchLimits, next_batch, seed_index
from worker.batching.queue import Entry, PendingQueue

LONG_WINDOWS = 400


@dataclass(eq=False)
class Question:
    lane: Hashable
    lengths: list[int]
    deadline: float | None = None
    event: Hashable = field(default=None)

    def __post_init__(self) -> None:
        self.event = self


def questions(rng: random.Random) -> Callable[[], Question]:
    """Long and one-window questions, as many windows of each, on eight partitions."""
    count = 0

    def make() -> Question:
        nonlocal count
        count += 1
        if count % (LONG_WINDOWS + 1) == 0:
            lengths = [384] * (LONG_WINDOWS - 1) + [rng.randint(130, 384)]
            return Question(rng.randrange(4), lengths)
        return Question(4 + rng.randrange(4), [rng.randint(40, 384)])

    return make


def never(entry: Entry[Question]) -> bool:
    return False


def time_queue(pending: int, batches: int, limits: BatchLimits, seed: int) -> list[float]:
    make = questions(random.Random(seed))
    queue: PendingQueue[Question] = PendingQueue()
    while len(queue) < pending:
        question = make()
        queue.add(question, question.lengths, now=0.0)
    seconds = []
    for _ in range(batches):
        began = time.perf_counter()
        batch = queue.next_batch(limits, never)
        seconds.append(time.perf_counter() - began)
        while len(queue) < pending:
            question = make()
            queue.add(question, question.lengths, now=0.0)
        assert batch
    return seconds


def time_list_planner(pending: int, batches: int, limits: BatchLimits, seed: int) -> list[float]:
    make = questions(random.Random(seed))
    waiting: list[tuple[Question, int]] = []
    while len(waiting) < pending:
        question = make()
        waiting.extend((question, length) for length in question.lengths)
    last: Question | None = None
    seconds = []
    for _ in range(batches):
        began = time.perf_counter()
        owners = [owner for owner, _ in waiting]
        deadlines = [owner.deadline for owner, _ in waiting]
        seed_at = seed_index(owners, last, deadlines)
        chosen = next_batch([length for _, length in waiting], limits, seed_at, deadlines)
        last = waiting[chosen[0]][0]
        taken = set(chosen)
        waiting = [item for index, item in enumerate(waiting) if index not in taken]
        seconds.append(time.perf_counter() - began)
        while len(waiting) < pending:
            question = make()
            waiting.extend((question, length) for length in question.lengths)
    return seconds


def summary(seconds: list[float]) -> str:
    ms = sorted(value * 1000 for value in seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"mean {statistics.fmean(ms):8.4f} ms  p99 {p99:8.4f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pending", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--batches", type=int, default=2_000)
    parser.add_argument("--list-batches", type=int, default=200, help="the list planner's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for batch_size in (1, 16):
        limits = BatchLimits(batch_size=batch_size)
        for pending in args.pending:
            queue = summary(time_queue(pending, args.batches, limits, args.seed))
            listed = summary(time_list_planner(pending, args.list_batches, limits, args.seed))
            print(
                f"batch {batch_size:2d}  pending {pending:7,d}  queue: {queue}  "
                f"list planner: {listed}"
            )


if __name__ == "__main__":
    main()
