import random

import pytest

from worker.qa import plan_batches


@pytest.mark.parametrize("seed", range(5))
def test_every_window_runs_once_within_limits(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(5, 384) for _ in range(rng.randint(1, 300))]
    batch_size, budget = rng.choice([(1, 4096), (8, 2048), (16, 8192), (64, 1000)])
    batches = plan_batches(lengths, batch_size, budget)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= batch_size
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= budget or len(batch) == 1


def test_similar_lengths_share_a_batch() -> None:
    lengths = [300, 20, 310, 25, 305, 22]
    batches = plan_batches(lengths, batch_size=3, max_batch_tokens=10_000)
    assert [sorted(lengths[i] for i in batch) for batch in batches] == [
        [20, 22, 25],
        [300, 305, 310],
    ]


def test_a_window_longer_than_the_budget_runs_alone() -> None:
    assert plan_batches([50, 500, 60], batch_size=8, max_batch_tokens=200) == [[0, 2], [1]]
