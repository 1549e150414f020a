"""The pending queue: turns by lane then event, deadlines within the turns, fill by length, and
the same batches as the list planner where both apply."""

from __future__ import annotations

import math
import random
from collections.abc import Hashable
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.batching.plan import BatchLimits, next_batch
from worker.batching.queue import Entry, PendingQueue

ONE = BatchLimits(batch_size=1)


@dataclass(eq=False)
class Question:
    name: str
    lane: Hashable = None
    deadline: float | None = None
    event: Hashable = field(default=None)

    def __post_init__(self) -> None:
        if self.event is None:
            self.event = self


def never(entry: Entry[Question]) -> bool:
    return False


def seeds(queue: PendingQueue[Question], limits: BatchLimits = ONE) -> list[str]:
    """Every batch until the queue is empty, as 'name#index' of each window."""
    order = []
    while batch := queue.next_batch(limits, never):
        order.append(" ".join(f"{e.owner.name}#{e.index}" for e in batch))
    return order


def test_lanes_take_turns_whatever_one_lane_holds() -> None:
    queue: PendingQueue[Question] = PendingQueue()
    queue.add(Question("heavy", lane=0), [384] * 5, now=0)
    queue.add(Question("heavy2", lane=0), [384] * 5, now=0)
    queue.add(Question("light", lane=1), [100], now=1)
    queue.add(Question("other", lane=2), [100, 100], now=2)
    assert seeds(queue)[:6] == ["heavy#0", "light#0", "other#0", "heavy2#0", "other#1", "heavy#1"]
    assert len(queue) == 0


def test_the_oldest_event_of_a_lane_seeds_every_other_time_and_the_others_take_turns() -> None:
    """The oldest event is the one its partition's commits wait for: it keeps half of its lane's
    turns, while later ones still get the rest, each event's windows in order."""
    queue: PendingQueue[Question] = PendingQueue()
    queue.add(Question("long"), [384] * 4, now=0)
    queue.add(Question("short"), [50], now=1)
    queue.add(Question("mid"), [200, 100], now=2)
    queue.add(Question("mid2"), [200, 100], now=3)
    assert seeds(queue) == [
        *("long#0", "short#0", "long#1", "mid#0", "long#2", "mid2#0", "long#3", "mid#1"),
        "mid2#1",
    ]


def test_questions_of_one_event_share_its_turn() -> None:
    queue: PendingQueue[Question] = PendingQueue()
    document = object()
    queue.add(Question("field1", event=document), [384, 384], now=0)
    queue.add(Question("field2", event=document), [384, 384], now=0)
    queue.add(Question("next"), [10], now=1)
    assert seeds(queue)[:3] == ["field1#0", "next#0", "field1#1"]


def test_the_earliest_deadline_seeds_and_the_turns_go_on_right_after() -> None:
    queue: PendingQueue[Question] = PendingQueue()
    queue.add(Question("old"), [10], now=0)
    queue.add(Question("later", deadline=600), [10], now=1)
    queue.add(Question("sooner", deadline=300), [10], now=2)
    queue.add(Question("sooner2", deadline=301), [10], now=3)
    assert seeds(queue) == ["sooner#0", "old#0", "sooner2#0", "later#0"]


def test_a_refused_window_withdraws_its_question_and_the_next_one_seeds() -> None:
    queue: PendingQueue[Question] = PendingQueue()
    entries = {}
    for name, deadline in (("doomed", 1.0), ("doomed2", 2.0), ("fine", None)):
        question = Question(name, deadline=deadline)
        entries[name] = queue.add(question, [10, 10], now=0)
    refused = []

    def refuse(entry: Entry[Question]) -> bool:
        if entry.owner.name.startswith("doomed"):
            refused.append(entry.owner.name)
            queue.withdraw(entries[entry.owner.name])
            return True
        return False

    queue.refuse_urgent(refuse)
    assert refused == ["doomed", "doomed2"]
    assert len(queue) == 2
    assert [e.owner.name for e in queue.next_batch(ONE, refuse)] == ["fine"]


def test_retries_run_alone_before_everything_else() -> None:
    queue: PendingQueue[Question] = PendingQueue()
    queue.add(Question("a"), [10, 10], now=0)
    limits = BatchLimits(batch_size=4, max_padding=math.inf)
    failed = queue.next_batch(limits, never)
    assert len(failed) == 2
    queue.add(Question("b"), [10], now=1)
    queue.retry_alone(failed)
    assert len(queue) == 3
    assert seeds(queue, limits) == ["a#0", "a#1", "b#0"]


def test_withdrawn_windows_never_leave_and_the_queue_stays_small() -> None:
    queue: PendingQueue[Question] = PendingQueue()
    kept = Question("kept")
    queue.add(kept, [10], now=0)
    for round_ in range(50):
        entries = queue.add(Question(f"gone{round_}", lane=round_ % 3), [20] * 100, now=1)
        assert queue.withdraw(entries) == 100
    assert len(queue) == 1
    # What left is dropped lazily, but never piles up beyond what is waiting plus a rebuild's worth.
    assert sum(len(turn.entries) for lane in queue._lanes for turn in lane.turns) <= 1 + 1024
    assert seeds(queue) == ["kept#0"]


@given(
    lengths=st.lists(st.integers(1, 384), min_size=1, max_size=60),
    batch_size=st.integers(1, 16),
    max_batch_tokens=st.integers(1, 4096),
    max_padding=st.sampled_from([0.0, 0.05, 0.3, math.inf]),
)
@settings(max_examples=300, deadline=None)
def test_a_batch_fills_as_the_list_planner_fills_it(
    lengths: list[int], batch_size: int, max_batch_tokens: int, max_padding: float
) -> None:
    """With no deadlines and one event per window, the first batch is the list planner's batch
    seeded with the oldest window: nearest length first, then the oldest among equals."""
    limits = BatchLimits(
        batch_size=batch_size, max_batch_tokens=max_batch_tokens, max_padding=max_padding
    )
    queue: PendingQueue[Question] = PendingQueue()
    for index, length in enumerate(lengths):
        queue.add(Question(str(index)), [length], now=index)
    batch = [int(entry.owner.name) for entry in queue.next_batch(limits, never)]
    assert batch == next_batch(lengths, limits, seed=0)
    assert len(queue) == len(lengths) - len(batch)


@st.composite
def mixes(draw: st.DrawFn) -> list[tuple[int, int, int]]:
    """(arrival step, lane, windows) of events: heavy and light ones over up to six lanes."""
    count = draw(st.integers(1, 40))
    return [
        (
            draw(st.integers(0, 30)),
            draw(st.integers(0, 5)),
            draw(st.sampled_from([1, 1, 2, 400])) if draw(st.booleans()) else 1,
        )
        for _ in range(count)
    ]


@given(mixes(), st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_every_window_runs_once_and_a_question_waits_one_turn_of_each_lane(
    events: list[tuple[int, int, int]], seed: int
) -> None:
    """One batch a step: every window leaves exactly once, and an event's first window waits for
    at most one window of each other lane per turn of its own lane, each event waiting ahead of
    it in its lane taking at most two such turns (its own, and the oldest's), however many
    windows the others hold."""
    rng = random.Random(seed)
    events.sort(key=lambda item: item[0])
    queue: PendingQueue[Question] = PendingQueue()
    arrived: dict[str, int] = {}
    ahead: dict[str, int] = {}
    first: dict[str, int] = {}
    ran: dict[str, list[int]] = {}
    pending = list(enumerate(events))
    step = 0
    while pending or len(queue):
        while pending and pending[0][1][0] <= step:
            index, (_, lane, windows) = pending.pop(0)
            name = f"e{index}"
            ahead[name] = len({e.owner.name for e in _waiting(queue) if e.owner.lane == lane})
            queue.add(Question(name, lane=lane), [rng.randint(1, 384)] * windows, now=step)
            arrived[name] = step
            ran[name] = []
        for entry in queue.next_batch(ONE, never):
            ran[entry.owner.name].append(entry.index)
            first.setdefault(entry.owner.name, step)
        step += 1
    for index, (_, _, windows) in enumerate(events):
        assert sorted(ran[f"e{index}"]) == list(range(windows))
    lanes = len({lane for _, lane, _ in events})
    for name, start in arrived.items():
        assert first[name] - start < (2 * ahead[name] + 1) * lanes


def _waiting(queue: PendingQueue[Question]) -> list[Entry[Question]]:
    return [e for lane in queue._lanes for t in lane.turns for e in t.entries if e.waiting]


def test_many_long_events_in_one_lane_finish_one_after_another_not_all_at_the_end() -> None:
    """Ten events of twenty windows in one partition: the first finishes within its own windows
    and as many of the others', so its partition's commits move long before the last window."""
    queue: PendingQueue[Question] = PendingQueue()
    for index in range(10):
        queue.add(Question(f"e{index}"), [384] * 20, now=index)
    order = seeds(queue)
    last_of = {
        name: max(i for i, seed in enumerate(order) if seed.startswith(f"{name}#"))
        for name in ("e0", "e1")
    }
    assert last_of["e0"] < 2 * 20
    assert last_of["e1"] < 2 * 20 + 2 * 20
