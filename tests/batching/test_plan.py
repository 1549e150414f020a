import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.batching.plan import BatchLimits, next_batch, plan_batches, seed_index

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


def test_next_batch_seeded_elsewhere_starts_with_that_window() -> None:
    limits = BatchLimits(batch_size=3, max_batch_tokens=10_000, max_padding=UNCAPPED)
    assert next_batch([384, 384, 100, 104, 98], limits, seed=2) == [2, 4, 3]
    # The seed is not taken twice, and a seed that fits with nothing runs alone.
    assert next_batch([384, 100], BatchLimits(batch_size=4, max_batch_tokens=400), seed=1) == [1]


@pytest.mark.parametrize(
    ("owners", "previous", "expected"),
    [
        (["a", "a", "b", "c"], "a", 2),  # the oldest of another event
        (["a", "a", "b", "c"], "b", 0),  # the oldest, when it is not the last seed's
        (["a", "a", "b", "c"], None, 0),
        (["a", "a"], "a", 0),  # only the last seed's event is pending
        ([], "a", 0),
    ],
)
def test_seed_index_takes_turns_oldest_first(
    owners: list[str], previous: str | None, expected: int
) -> None:
    assert seed_index(owners, previous) == expected


def simulate(owners: list[str], lengths: list[int], limits: BatchLimits) -> list[list[str]]:
    """The owners of each batch, as the streaming batcher would take them from `pending`."""
    pending = list(zip(owners, lengths, strict=True))
    previous: str | None = None
    batches = []
    while pending:
        seed = seed_index([owner for owner, _ in pending], previous)
        chosen = next_batch([length for _, length in pending], limits, seed)
        previous = pending[chosen[0]][0]
        batches.append([pending[index][0] for index in chosen])
        taken = set(chosen)
        pending = [item for index, item in enumerate(pending) if index not in taken]
    return batches


def test_one_long_event_does_not_hold_the_events_behind_it() -> None:
    # A 99,990-character context is about 200 windows of 384 tokens; two fit the token budget.
    limits = BatchLimits(batch_size=16, max_batch_tokens=1024)
    owners = ["long"] * 200 + [f"q{i}" for i in range(50)]
    lengths = [384] * 200 + [60 + i % 5 for i in range(50)]
    batches = simulate(owners, lengths, limits)
    last_normal = max(i for i, batch in enumerate(batches) if "long" not in batch)
    normal_batches = sum(1 for batch in batches if "long" not in batch)
    # Each normal batch waits behind at most one batch of the long event.
    assert last_normal < 2 * normal_batches
    assert last_normal < 10, last_normal
    # The oldest event is never starved: it seeds at least every second batch while pending.
    long_batches = [i for i, batch in enumerate(batches) if "long" in batch]
    assert all(b - a <= 2 for a, b in itertools.pairwise([-1, *long_batches]))
    assert sum(batch.count("long") for batch in batches) == 200


def test_turns_leave_a_single_event_its_batches() -> None:
    limits = BatchLimits(batch_size=4, max_batch_tokens=10_000)
    batches = simulate(["only"] * 10, [100] * 10, limits)
    assert [len(batch) for batch in batches] == [4, 4, 2]


@pytest.mark.parametrize(
    ("owners", "deadlines", "previous", "oldest_due", "expected"),
    [
        (["a", "b", "c"], [None, 5.0, 3.0], None, False, 2),  # the earliest deadline
        (["a", "b", "c"], [None, 5.0, 3.0], None, True, 0),  # the oldest, when it is due
        (["a", "b", "c"], [None, None, None], None, False, 0),  # no deadlines: the oldest
        (["a", "b", "c"], [9.0, None, 3.0], "c", False, 0),  # never the last seed's event
        (["a", "b", "b"], [None, 4.0, 4.0], None, False, 1),  # equal deadlines: the older
        (["a", "a"], [1.0, 1.0], "a", False, 0),  # only the last seed's event is pending
        ([], [], "a", False, 0),
    ],
)
def test_seed_index_takes_the_earliest_deadline_within_the_turns(
    owners: list[str],
    deadlines: list[float | None],
    previous: str | None,
    oldest_due: bool,
    expected: int,
) -> None:
    assert seed_index(owners, previous, deadlines, oldest_due) == expected


def test_equally_near_windows_join_a_batch_earliest_deadline_first() -> None:
    limits = BatchLimits(batch_size=2, max_batch_tokens=10_000, max_padding=UNCAPPED)
    # 90 and 110 are both 10 from the seed's 100: the one due first joins.
    assert next_batch([100, 90, 110], limits, 0, [None, 8.0, 2.0]) == [0, 2]
    assert next_batch([100, 90, 110], limits, 0, [None, 2.0, 8.0]) == [0, 1]
    assert next_batch([100, 90, 110], limits, 0) == [0, 1]
    # Nearness in length still comes first: 101 joins before a 90 that is due sooner.
    assert next_batch([100, 90, 101], limits, 0, [None, 1.0, 9.0]) == [0, 2]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(8, 384)), min_size=1, max_size=60),
    st.lists(st.one_of(st.none(), st.floats(0, 100)), min_size=6, max_size=6),
    st.integers(1, 4),
)
def test_deadlines_go_first_yet_the_oldest_window_waits_two_batches_at_most(
    windows: list[tuple[int, int]], deadline_of: list[float | None], batch_size: int
) -> None:
    """The batcher's loop over `pending`: each batch's seed is the earliest deadline among the
    candidates or, right after a seed that went ahead of the oldest candidate, the oldest; the
    oldest pending window is in one of the next three batches, whatever the deadlines."""
    limits = BatchLimits(batch_size=batch_size, max_batch_tokens=1024)
    # (arrival, owner, length), oldest first; an event's windows share its deadline.
    pending = [(arrival, owner, length) for arrival, (owner, length) in enumerate(windows)]
    previous: int | None = None
    oldest_due = False
    waited: dict[int, int] = {}  # batches run while a window was the oldest pending
    while pending:
        owners = [owner for _, owner, _ in pending]
        deadlines = [deadline_of[owner] for owner in owners]
        seed = seed_index(owners, previous, deadlines, oldest_due)
        oldest = seed_index(owners, previous)
        candidates = [i for i, owner in enumerate(owners) if owner != previous]
        candidates = candidates or list(range(len(owners)))
        assert seed in candidates
        if not oldest_due:
            due = [math.inf if deadlines[i] is None else deadlines[i] for i in candidates]
            assert (math.inf if deadlines[seed] is None else deadlines[seed]) == min(due)
        chosen = next_batch([length for *_, length in pending], limits, seed, deadlines)
        assert chosen[0] == seed and len(chosen) <= batch_size
        if 0 not in chosen:
            waited[pending[0][0]] = waited.get(pending[0][0], 0) + 1
            assert waited[pending[0][0]] <= 2
        previous, oldest_due = owners[seed], seed != oldest
        taken = set(chosen)
        pending = [item for index, item in enumerate(pending) if index not in taken]
