"""The one batch planner: which windows run together in one padded inference batch.

Pure functions of window lengths, shared by the streaming batcher (`worker.batching.batcher`,
which plans over the windows waiting, oldest first) and the offline engine
(`QAEngine.answer_many`, which plans over all windows of a call, shortest first), so every command
batches alike.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from ..config import LEAST_VALUES, check_least_values

__all__ = ["BatchLimits", "next_batch", "plan_batches", "seed_index"]


@dataclass(frozen=True)
class BatchLimits:
    """Bounds of one inference batch, and how long an idle engine may wait to fill one.

    A batch holds at most `batch_size` windows and `max_batch_tokens` padded tokens (windows x
    longest window), and its padded tokens exceed its real ones by at most `max_padding` (a
    share); a window longer than the token budget runs alone. With `max_wait_ms` at 0 an
    idle engine starts on whatever is pending at once. Above 0, an idle engine whose pending
    windows do not fill a batch waits until `max_wait_ms` after the oldest of them arrived for
    more to come, then runs what it has: fuller batches for a bounded delay, which pays off when
    questions arrive faster than one at a time but slower than the engine answers them. A batch
    that fills never waits, and time spent waiting for a busy engine counts toward the wait.
    Offline commands have every window at hand and never wait.
    """

    batch_size: int = 16
    max_batch_tokens: int = 1024
    max_wait_ms: float = 0.0
    max_padding: float = 0.05

    def __post_init__(self) -> None:
        # The settings' rules, but for the batch size: here the one chosen for the layout, where
        # the setting's 0 (choose) has become a size.
        check_least_values(self, {**LEAST_VALUES, "batch_size": 1})


def next_batch(
    lengths: Sequence[int],
    limits: BatchLimits,
    seed: int = 0,
    deadlines: Sequence[float | None] | None = None,
) -> list[int]:
    """Indexes into `lengths` of the next batch: the seed window, then those nearest its length.

    The seed (index `seed`) always runs, alone if it must, and comes first; the others join in
    order of how close their length is to the seed's, each only if the batch stays within every
    limit with it. Among windows equally close, the one with the earlier deadline (`deadlines`,
    None for none: after every deadline) goes first, then the earlier index.
    """
    seed_length = lengths[seed]
    batch = [seed]
    longest = real = seed_length
    others = [index for index in range(len(lengths)) if index != seed]

    def nearest_then_due(index: int) -> tuple[int, float, int]:
        due = deadlines[index] if deadlines is not None else None
        return abs(lengths[index] - seed_length), math.inf if due is None else due, index

    for index in sorted(others, key=nearest_then_due):
        if len(batch) == limits.batch_size:
            break
        widest = max(longest, lengths[index])
        padded = (len(batch) + 1) * widest
        with_window = real + lengths[index]
        if padded <= limits.max_batch_tokens and padded <= with_window * (1 + limits.max_padding):
            batch.append(index)
            longest, real = widest, with_window
    return batch


def seed_index(
    owners: Sequence[Hashable],
    previous: Hashable | None,
    deadlines: Sequence[float | None] | None = None,
    oldest_due: bool = False,
) -> int:
    """Which pending window seeds the next batch.

    `owners` names the event of each pending window, oldest first; `previous` is the event
    whose window seeded the last batch. The candidates are the windows of events other than
    `previous` (all of them when only its windows are pending): taking turns this way, one event
    with hundreds of windows gets every other batch at most instead of all of them.

    Of the candidates, the one with the earliest deadline seeds (`deadlines`, None for none:
    after every deadline, so with no deadlines the oldest candidate seeds), unless `oldest_due`,
    when the oldest candidate seeds. The batcher sets `oldest_due` after a batch whose seed went
    ahead of the oldest candidate, so the oldest window still seeds at least every second batch
    and no stream of urgent events can starve the rest.
    """
    candidates = [index for index, owner in enumerate(owners) if owner != previous]
    candidates = candidates or list(range(len(owners)))
    if not candidates or deadlines is None or oldest_due:
        return candidates[0] if candidates else 0

    def due_then_oldest(index: int) -> tuple[float, int]:
        due = deadlines[index]
        return math.inf if due is None else due, index

    return min(candidates, key=due_then_oldest)


def plan_batches(lengths: Sequence[int], limits: BatchLimits) -> list[list[int]]:
    """Every window into batches, each by `next_batch` seeded with the shortest window left."""
    remaining = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    while remaining:
        # Seeded with the shortest, a window that does not fit means no longer one fits either
        # (both limits only tighten with length), so a batch is a prefix of what is left and
        # only the first `batch_size` windows can be in it: planning stays linear in windows.
        candidates = remaining[: limits.batch_size]
        chosen = next_batch([lengths[index] for index in candidates], limits)
        batches.append([candidates[position] for position in chosen])
        taken = set(chosen)
        remaining = [
            index for position, index in enumerate(candidates) if position not in taken
        ] + remaining[limits.batch_size :]
    return batches
