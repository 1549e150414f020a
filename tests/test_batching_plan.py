import math
import random

import pytest

from worker.qa.batching import BatchLimits, next_batch, plan_batches

# The length-grouping tests below leave padding uncapped, to see grouping alone.
UNCAPPED = math.inf


@pytest.mark.parametrize("seed", range(5))
def test_every_window_runs_once_within_limits(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(5, 384) for _ in range(rng.randint(1, 300))]
    batch_size, budget = rng.choice([(1, 4096), (8, 2048), (16, 8192), (64, 1000)])
    max_padding = rng.choice([0.0, 0.05, 0.5, UNCAPPED])
    batches = plan_batches(lengths, BatchLimits(batch_size, budget, max_padding=max_padding))
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= batch_size
        real = sum(lengths[i] for i in batch)
        padded = len(batch) * max(lengths[i] for i in batch)
        assert (padded <= budget and padded <= real * (1 + max_padding)) or len(batch) == 1


def test_similar_lengths_share_a_batch() -> None:
    lengths = [300, 20, 310, 25, 305, 22]
    batches = plan_batches(lengths, BatchLimits(3, 10_000, max_padding=UNCAPPED))
    assert [sorted(lengths[i] for i in batch) for batch in batches] == [
        [20, 22, 25],
        [300, 305, 310],
    ]


def test_a_window_longer_than_the_budget_runs_alone() -> None:
    limits = BatchLimits(8, 200, max_padding=UNCAPPED)
    assert plan_batches([50, 500, 60], limits) == [[0, 2], [1]]


def test_the_padding_cap_splits_what_the_token_budget_would_allow() -> None:
    lengths = [100, 100, 100, 130]
    assert plan_batches(lengths, BatchLimits(8, 10_000, max_padding=UNCAPPED)) == [[0, 1, 2, 3]]
    # 4 x 130 = 520 padded for 430 real is 21% padding: over a 5% cap, under a 25% one.
    assert plan_batches(lengths, BatchLimits(8, 10_000, max_padding=0.05)) == [[0, 1, 2], [3]]
    assert plan_batches(lengths, BatchLimits(8, 10_000, max_padding=0.25)) == [[0, 1, 2, 3]]


def test_next_batch_is_seeded_with_the_first_window_then_the_nearest() -> None:
    lengths = [200, 10, 190, 220, 205, 205]
    limits = BatchLimits(4, 10_000, max_padding=UNCAPPED)
    # 205 twice: the earlier first; 10 is farthest and the batch is full before it.
    assert next_batch(lengths, limits) == [0, 4, 5, 2]
    assert next_batch([500, 10, 20], BatchLimits(8, 400)) == [0]


@pytest.mark.parametrize("seed", range(20))
def test_planning_over_a_prefix_equals_planning_over_everything(seed: int) -> None:
    """plan_batches looks at `batch_size` windows at a time; that must change no batch."""
    rng = random.Random(seed)
    lengths = [rng.randint(5, 384) for _ in range(rng.randint(1, 200))]
    limits = BatchLimits(
        rng.choice([1, 2, 8, 16, 64]),
        rng.choice([200, 1024, 4096, 100_000]),
        max_padding=rng.choice([0.0, 0.05, 0.3, UNCAPPED]),
    )
    remaining = sorted(range(len(lengths)), key=lengths.__getitem__)
    expected = []
    while remaining:
        chosen = next_batch([lengths[i] for i in remaining], limits)
        expected.append([remaining[position] for position in chosen])
        remaining = [i for position, i in enumerate(remaining) if position not in set(chosen)]
    assert plan_batches(lengths, limits) == expected


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BatchLimits(batch_size=0)
    with pytest.raises(ValueError, match="max_padding cannot be negative"):
        BatchLimits(max_padding=-0.1)
