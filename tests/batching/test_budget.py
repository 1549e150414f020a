"""The work budget: admission by windows held, at, under and over the budget, lanes taking turns,
and through a real MicroBatcher, a heavy partition beside light ones."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.fake_engine import FakeEngine, ask, bounded, wait_until
from worker.batching.batcher import MicroBatcher
from worker.batching.budget import MAX_UNSIZED, Admission, WorkBudget
from worker.batching.plan import BatchLimits
from worker.errors import DeadlineExceeded


async def admitted_now(budget: WorkBudget, lane: object = None, kind: object = None) -> bool:
    """Whether a question would be admitted without waiting (it is withdrawn either way)."""
    task = asyncio.ensure_future(budget.admit(lane, kind))
    await asyncio.sleep(0)
    if task.done():
        task.result().release()
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


async def test_admission_at_under_and_over_the_budget() -> None:
    budget = WorkBudget(10)
    first = await budget.admit()
    first.size(9)
    assert budget.held == 9
    assert await admitted_now(budget)  # 9 of 10: under
    second = await budget.admit()
    second.size(1)
    assert budget.held == 10
    assert not await admitted_now(budget)  # at the budget
    second.release()
    assert await admitted_now(budget)
    first.release()
    assert budget.held == 0


async def test_a_question_larger_than_the_budget_runs_alone() -> None:
    budget = WorkBudget(4)
    large = await budget.admit()
    large.size(100)
    assert budget.held == 100
    waiting = asyncio.ensure_future(budget.admit())
    await asyncio.sleep(0)
    assert not waiting.done()
    large.release()
    small = await bounded(waiting)
    small.size(1)
    assert budget.held == 1
    small.release()


async def test_a_budget_of_one_window_admits_one_question_at_a_time_once_sized() -> None:
    budget = WorkBudget(1)
    one = await budget.admit()
    # Not tokenized yet: its size is unknown, and up to MAX_UNSIZED such may be admitted.
    others = [await budget.admit() for _ in range(MAX_UNSIZED - 1)]
    assert not await admitted_now(budget)
    one.size(1)
    for other in others:
        other.size(3)
    assert budget.held == 1 + 3 * len(others)
    assert not await admitted_now(budget)
    for admission in (one, *others):
        admission.release()
    assert budget.held == 0
    assert await admitted_now(budget)


async def test_lanes_take_turns_for_admission() -> None:
    budget = WorkBudget(1)
    holder = await budget.admit()
    holder.size(1)
    order: list[str] = []

    async def question(name: str, lane: int) -> Admission:
        admission = await budget.admit(lane)
        order.append(name)
        return admission

    tasks = [asyncio.ensure_future(question(f"heavy{i}", 0)) for i in range(4)]
    tasks.append(asyncio.ensure_future(question("light", 1)))
    await asyncio.sleep(0)
    holder.release()
    await wait_until(lambda: len(order) == MAX_UNSIZED)
    # The heavy lane's first question was first in line; the light lane's goes next, not fifth.
    assert order == ["heavy0", "light"]
    while len(order) < len(tasks):
        for task in [t for t in tasks if t.done() and t.result().windows is None]:
            task.result().size(1)
            task.result().release()
        await asyncio.sleep(0)
    await bounded(asyncio.gather(*tasks))
    for task in tasks:
        task.result().release()
    assert order == ["heavy0", "light", "heavy1", "heavy2", "heavy3"]
    assert budget.held == budget.unsized == 0


async def test_a_long_question_being_tokenized_does_not_hold_up_short_ones() -> None:
    budget = WorkBudget(100)
    longs = [await budget.admit(kind="long") for _ in range(MAX_UNSIZED)]
    assert not await admitted_now(budget, kind="long")
    assert await admitted_now(budget, kind="short")
    for admission in longs:
        admission.release()


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    budget = WorkBudget(1)
    holder = await budget.admit(lane=3)
    holder.size(1)
    waiter = asyncio.ensure_future(budget.admit(lane=3))
    await asyncio.sleep(0)
    assert budget.waiting == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    holder.release()
    assert budget.held == budget.unsized == 0
    assert budget.waiting == 0
    assert await admitted_now(budget)


@given(
    st.integers(1, 50),
    st.lists(st.tuples(st.integers(0, 3), st.integers(1, 120), st.booleans()), max_size=40),
)
@settings(max_examples=150, deadline=None)
def test_every_question_is_admitted_and_the_budget_is_exceeded_only_by_unsized_ones(
    windows: int, questions: list[tuple[int, int, bool]]
) -> None:
    """Questions of random sizes, lanes and kinds, each answered as soon as admitted: all of them
    are admitted, and the windows held exceed the budget by at most the documented bound."""

    async def run() -> None:
        budget = WorkBudget(windows)
        largest = max((size for _, size, _ in questions), default=0)
        admitted: list[int] = []

        async def question(index: int, lane: int, size: int, long: bool) -> None:
            admission = await budget.admit(lane, kind=long)
            await asyncio.sleep(0)
            admission.size(size)
            # Each kind: its budget, one question of each lane (four) and MAX_UNSIZED more.
            assert budget.held <= 2 * (windows - 1 + (4 + MAX_UNSIZED) * largest)
            admitted.append(index)
            await asyncio.sleep(0)
            admission.release()

        await bounded(
            asyncio.gather(
                *(question(i, lane, size, long) for i, (lane, size, long) in enumerate(questions))
            )
        )
        assert sorted(admitted) == list(range(len(questions)))
        assert budget.held == budget.unsized == budget.waiting == 0

    asyncio.run(run())


async def test_light_partitions_are_answered_while_a_heavy_one_holds_the_budget() -> None:
    """Partition 0 sends questions of many windows, over the budget together; partitions 1-3
    send one-window questions after them: each light window runs within one window of each
    other busy partition of being queued, and only what the budget admits is ever held."""
    engine = FakeEngine()
    budget = 60
    async with MicroBatcher(engine, BatchLimits(batch_size=1), work_budget=budget) as batcher:
        engine.gate.hold()
        held = ask(batcher, "held", 5)
        await engine.gate.next_batch()
        heavy = [ask(batcher, f"heavy{i}", *([384] * 40), lane=0) for i in range(5)]
        await wait_until(lambda: batcher.budget.unsized == 0 and batcher.budget.waiting > 0)
        heavy_waiting = batcher.pending_windows
        # Admitted while under the budget, each before the one ahead of it was tokenized.
        assert batcher.held_windows <= budget + MAX_UNSIZED * 40
        light = [ask(batcher, f"light{lane}", 30, lane=lane) for lane in (1, 2, 3)]
        await wait_until(lambda: batcher.pending_windows == heavy_waiting + 3)
        engine.gate.open()
        await bounded(asyncio.gather(held, *heavy, *light))
        assert batcher.held_windows == 0
    order = [batch[0] for batch in engine.labels()]
    for lane in (1, 2, 3):
        # Behind it: the held batch, at most one heavy window, and the other light ones.
        assert order.index(f"light{lane}#0") <= 1 + 1 + 2


async def test_every_partition_heavy_at_once_still_answers_everything_in_turns() -> None:
    engine = FakeEngine()
    async with MicroBatcher(engine, BatchLimits(batch_size=1), work_budget=30) as batcher:
        tasks = [
            ask(batcher, f"p{lane}q{i}", *([100] * 20), lane=lane)
            for lane in range(4)
            for i in range(3)
        ]
        answers = await bounded(asyncio.gather(*tasks))
    assert [a.result.answer for a in answers] == [
        f"p{lane}q{i}" for lane in range(4) for i in range(3)
    ]
    assert sum(len(batch) for batch in engine.batches) == 4 * 3 * 20
    # Once every partition has a window waiting, they take turns: each run of four has one of
    # each (lane 0's questions, asked first, ran alone until the others were tokenized).
    lanes = [batch[0].split("q")[0] for batch in engine.labels()]
    start = lanes.index("p3")
    turns = range(start, start + 40, 4)
    assert all(sorted(lanes[i : i + 4]) == ["p0", "p1", "p2", "p3"] for i in turns)


class HeldWindows:
    """An observer that reads the batcher's windows held after every batch."""

    def __init__(self) -> None:
        self.batcher: MicroBatcher | None = None
        self.most = 0

    def on_batch(
        self, windows: int, real_tokens: int, padded_tokens: int, seconds: float, plan_s: float
    ) -> None:
        assert self.batcher is not None
        self.most = max(self.most, self.batcher.held_windows)


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(1, 30)), min_size=1, max_size=25),
    st.integers(1, 40),
    st.integers(1, 4),
)
@settings(max_examples=40, deadline=None)
def test_every_question_is_answered_once_within_the_budget_whatever_the_mix(
    questions: list[tuple[int, int]], budget: int, batch_size: int
) -> None:
    """Questions of random sizes on random partitions, all at once, through a real batcher: each
    is answered exactly once with its own answer, every window runs once, and the windows held
    stay within the documented bound."""

    async def run() -> None:
        engine = FakeEngine()
        observer = HeldWindows()
        limits = BatchLimits(batch_size=batch_size, max_padding=1.0)
        async with MicroBatcher(engine, limits, observer, work_budget=budget) as batcher:
            observer.batcher = batcher
            tasks = [
                ask(batcher, f"q{index}", *([50] * windows), lane=lane)
                for index, (lane, windows) in enumerate(questions)
            ]
            answers = await bounded(asyncio.gather(*tasks))
            assert batcher.held_windows == 0
        assert [a.result.answer for a in answers] == [f"q{i}" for i in range(len(questions))]
        ran = sorted(label for batch in engine.labels() for label in batch)
        assert ran == sorted(f"q{i}#{w}" for i, (_, n) in enumerate(questions) for w in range(n))
        largest = max(windows for _, windows in questions)
        lanes = len({lane for lane, _ in questions})
        assert observer.most <= budget - 1 + (lanes + 2 * MAX_UNSIZED) * largest

    asyncio.run(run())


async def test_a_deadline_that_passes_while_waiting_for_admission_fails_the_question() -> None:
    engine = FakeEngine()
    async with MicroBatcher(engine, BatchLimits(batch_size=1), work_budget=1) as batcher:
        engine.gate.hold()
        held = ask(batcher, "held", 5, lane=0)
        await engine.gate.next_batch()
        late = ask(batcher, "late", 5, lane=0, deadline=time.monotonic() + 0.2)
        with pytest.raises(DeadlineExceeded, match="waited for the work budget"):
            await bounded(late)
        assert batcher.budget.waiting == 0
        engine.gate.open()
        await bounded(held)
        assert (await bounded(ask(batcher, "after", 5, lane=0))).result.answer == "after"
    assert engine.labels() == [["held#0"], ["after#0"]]


async def test_long_questions_that_fill_the_budget_keep_no_short_one_waiting() -> None:
    """Every partition holds a long question and has more waiting: a short question on any of
    them is still admitted, since each kind has the budget to itself."""
    budget = WorkBudget(10)
    longs = []
    for lane in range(4):
        admission = await budget.admit(lane, kind=True)
        admission.size(400)
        longs.append(admission)
    assert not await admitted_now(budget, lane=0, kind=True)
    for lane in range(4):
        assert await admitted_now(budget, lane=lane, kind=False)
    for admission in longs:
        admission.release()
