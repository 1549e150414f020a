"""MicroBatcher: scheduling with a fake engine (tests/support/fake_engine.py) whose batches the
tests hold and release, and answer parity with `QAEngine.answer_many` on a real exported model.

The fake engine's `infer` reports every batch to the event loop before it runs; a held `Gate`
keeps it inside `infer` until the test lets it through, which is how the tests decide what is
pending when the next batch forms. Nothing waits for a length of time: where the batcher announces
nothing (windows reaching its queue), the tests poll `pending_windows` until it shows them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from parity import texts
from tests.support.fake_engine import OPTIONS, TIMEOUT, FakeEngine, Gate, ask, bounded, wait_until
from worker.batching.batcher import (
    LONG_CONTEXT_CHARS,
    Answered,
    MicroBatcher,
)
from worker.batching.estimate import RUN_ESTIMATE_BATCHES, RunEstimate
from worker.batching.plan import BatchLimits
from worker.batching.priority import BULK_NICE
from worker.errors import DeadlineExceeded, EventError
from worker.qa import QAEngine, QAOptions, QAResult, Question
from worker.qa.decode import WindowLogits
from worker.qa.windows import EncodedQuestion, Window


async def hold_a_batch(
    engine: FakeEngine, batcher: MicroBatcher, question: str, length: int
) -> asyncio.Task[Answered]:
    """Asks `question`, one window of `length` tokens, and returns once its batch is held in the
    engine: what is asked next waits in the queue until the test opens the gate."""
    engine.gate.hold()
    held = ask(batcher, question, length)
    await engine.gate.next_batch()
    return held


async def test_answers_equal_one_window_at_a_time() -> None:
    engine = FakeEngine()
    rng = random.Random(1)
    questions = [
        (f"q{i}", " ".join(str(rng.randint(3, 60)) for _ in range(rng.randint(1, 4))))
        for i in range(40)
    ]
    total = sum(len(context.split()) for _, context in questions)
    async with MicroBatcher(engine, BatchLimits(batch_size=5, max_batch_tokens=200)) as batcher:
        engine.gate.hold()
        tasks = [asyncio.create_task(batcher.answer(q, c, OPTIONS)) for q, c in questions]
        first = await engine.gate.next_batch()
        await wait_until(lambda: batcher.pending_windows == total - len(first))  # type: ignore[arg-type]
        engine.gate.open()
        answered = await bounded(asyncio.gather(*tasks))
    reference = FakeEngine()
    for (question, context), got in zip(questions, answered, strict=True):
        encoded = reference.encode(question, context)
        logits = [reference.infer([window])[0] for window in encoded.windows]
        assert got.result == reference.decode(encoded, logits, OPTIONS)
        assert got.queue_s >= 0 and got.inference_s >= 0
    assert max(len(batch) for batch in engine.batches) > 1


def stage_instants(answered: Answered) -> list[float]:
    assert answered.stages is not None
    return [getattr(answered.stages, f.name) for f in dataclasses.fields(answered.stages)]


async def test_stages_follow_each_answer_through_tokenizing_batches_and_decoding() -> None:
    engine = FakeEngine(streams=2)
    async with MicroBatcher(engine, BatchLimits(batch_size=2)) as batcher:
        engine.gate.hold()
        # Three windows each: every question needs at least two batches.
        tasks = [ask(batcher, f"q{i}", 8, 9, 10) for i in range(4)]
        held = [await engine.gate.next_batch(), await engine.gate.next_batch()]
        running = sum(len(batch) for batch in held)  # type: ignore[arg-type]
        await wait_until(lambda: batcher.pending_windows == 12 - running)
        released = time.monotonic()
        engine.gate.open()
        answered = await bounded(asyncio.gather(*tasks))
    done = time.monotonic()
    for item in answered:
        instants = stage_instants(item)
        assert instants == sorted(instants), item.stages
        stages = item.stages
        assert stages is not None
        assert stages.decoded <= done
        assert stages.batch_started - stages.submitted == pytest.approx(item.queue_s)
        # Every question has a window in a batch that ran only after the gate opened.
        assert stages.inferred >= released


async def test_a_question_waiting_for_the_tokenizer_shows_it_before_tokenize_started() -> None:
    engine = FakeEngine()
    entered = threading.Event()
    release = threading.Event()
    encode = engine.encode

    def slow_first(question: str, context: str) -> EncodedQuestion:
        if question == "first":
            entered.set()
            if not release.wait(TIMEOUT):
                raise TimeoutError("the test never released the tokenizer")
        return encode(question, context)

    engine.encode = slow_first  # type: ignore[method-assign]
    async with MicroBatcher(engine, BatchLimits(batch_size=4)) as batcher:
        first = ask(batcher, "first", 5)
        await bounded(asyncio.to_thread(entered.wait, TIMEOUT))
        second = ask(batcher, "second", 5)
        await wait_until(lambda: batcher.in_flight_requests == 2)
        released = time.monotonic()
        release.set()
        one, two = await bounded(asyncio.gather(first, second))
    assert one.stages is not None and two.stages is not None
    assert one.stages.tokenize_started <= released <= one.stages.tokenized
    # The second question was submitted while the first held the thread: it waited for it.
    assert two.stages.submitted <= released <= two.stages.tokenize_started


@pytest.mark.parametrize(
    ("batch_size", "max_batch_tokens", "max_padding"),
    [(1, 1000, 0.0), (4, 100, 0.05), (16, 250, 0.2), (16, 4000, 0.0)],
)
async def test_batches_stay_within_limits(
    batch_size: int, max_batch_tokens: int, max_padding: float
) -> None:
    engine = FakeEngine()
    rng = random.Random(batch_size)
    lengths = [[rng.randint(1, 90) for _ in range(rng.randint(1, 3))] for _ in range(30)]
    lengths[7].append(max_batch_tokens + 50)
    limits = BatchLimits(batch_size, max_batch_tokens, max_padding=max_padding)
    async with MicroBatcher(engine, limits) as batcher:
        answered = await bounded(
            asyncio.gather(*(ask(batcher, f"q{i}", *sizes) for i, sizes in enumerate(lengths)))
        )
    assert [a.result.answer for a in answered] == [f"q{i}" for i in range(len(lengths))]
    ran = sorted(name for batch in engine.labels() for name in batch)
    assert ran == sorted(f"q{i}#{w}" for i, sizes in enumerate(lengths) for w in range(len(sizes)))
    for batch in engine.batches:
        assert len(batch) <= batch_size
        padded = len(batch) * max(len(w) for w in batch)
        assert padded <= max_batch_tokens or len(batch) == 1
        assert padded <= sum(len(w) for w in batch) * (1 + max_padding)
    assert max(len(batch) for batch in engine.batches) > 1 or batch_size == 1


async def test_an_idle_engine_starts_at_once_without_waiting_for_more() -> None:
    engine = FakeEngine()
    async with MicroBatcher(engine, BatchLimits(batch_size=8, max_wait_ms=0)) as batcher:
        engine.gate.hold()
        # Submitted together: A is queued first and finds the engine idle, so it must not wait
        # for B, which is queued right after.
        first, second = ask(batcher, "A", 10), ask(batcher, "B", 10)
        assert await engine.gate.next_batch() == ["A#0"]
        await wait_until(lambda: batcher.pending_windows == 1)
        engine.gate.open()
        await bounded(asyncio.gather(first, second))
    assert engine.labels() == [["A#0"], ["B#0"]]


async def test_questions_accumulate_while_a_batch_runs() -> None:
    engine = FakeEngine()
    async with MicroBatcher(engine, BatchLimits(batch_size=8, max_padding=math.inf)) as batcher:
        engine.gate.hold()
        tasks = [ask(batcher, "A", 10)]
        assert await engine.gate.next_batch() == ["A#0"]
        tasks += [ask(batcher, "B", 12, 30), ask(batcher, "C", 9), ask(batcher, "D", 40)]
        await wait_until(lambda: batcher.pending_windows == 4)
        assert engine.labels() == [["A#0"]]
        engine.gate.step()
        assert sorted(await engine.gate.next_batch()) == ["B#0", "B#1", "C#0", "D#0"]  # type: ignore[arg-type]
        engine.gate.open()
        await bounded(asyncio.gather(*tasks))
    assert len(engine.batches) == 2


async def test_batches_grow_around_the_oldest_window_by_length() -> None:
    engine = FakeEngine()
    limits = BatchLimits(batch_size=3, max_batch_tokens=200, max_padding=math.inf)
    async with MicroBatcher(engine, limits) as batcher:
        tasks = [await hold_a_batch(engine, batcher, "hold", 5)]
        # One at a time, so that the queue holds them in this order.
        for queued, length in enumerate((50, 10, 48, 90, 52, 49), start=1):
            tasks.append(ask(batcher, f"w{length}", length))
            await wait_until(lambda queued=queued: batcher.pending_windows == queued)
        engine.gate.open()
        await bounded(asyncio.gather(*tasks))
    # 48 and 52 are equally close to 50; the older goes first. 3 x 90 exceeds the budget.
    assert engine.labels()[1:] == [
        ["w50#0", "w49#0", "w48#0"],
        ["w10#0", "w52#0"],
        ["w90#0"],
    ]


async def test_an_outlier_in_length_runs_apart_rather_than_padding_a_batch() -> None:
    engine = FakeEngine()
    async with MicroBatcher(engine, BatchLimits(batch_size=8, max_padding=0.05)) as batcher:
        tasks = [await hold_a_batch(engine, batcher, "hold", 5)]
        for queued, (name, length) in enumerate(
            [("long", 384), ("a", 100), ("b", 100), ("c", 98), ("d", 383), ("e", 80)], start=1
        ):
            tasks.append(ask(batcher, name, length))
            await wait_until(lambda queued=queued: batcher.pending_windows == queued)
        engine.gate.open()
        await bounded(asyncio.gather(*tasks))
    # 100-token windows padded to 384 would almost quadruple the work; adding the 80-token one
    # to a, b and c would pad the batch by 5.8% of its real tokens, over the 5% cap.
    assert engine.labels()[1:] == [["long#0", "d#0"], ["a#0", "b#0", "c#0"], ["e#0"]]


async def test_a_long_window_is_not_starved_by_a_stream_of_short_ones() -> None:
    engine = FakeEngine()
    async with MicroBatcher(engine, BatchLimits(batch_size=2, max_padding=math.inf)) as batcher:
        tasks = [await hold_a_batch(engine, batcher, "s", 10)]
        tasks.append(ask(batcher, "long", 300))
        await wait_until(lambda: batcher.pending_windows == 1)
        for round_ in range(4):
            # Two short windows arrive for every batch that runs: pure length grouping would
            # pair them up forever and never run the long one.
            before = batcher.pending_windows
            tasks += [ask(batcher, f"s{round_}a", 10), ask(batcher, f"s{round_}b", 11)]
            await wait_until(lambda before=before: batcher.pending_windows == before + 2)
            engine.gate.step()
            await engine.gate.next_batch()
        engine.gate.open()
        await bounded(asyncio.gather(*tasks))
    # The long window runs right after the held batch; every batch starts with the oldest window
    # and takes the one closest to it in length (10 and 11 differ, so they pair apart).
    assert engine.labels() == [
        ["s#0"],
        ["long#0", "s0b#0"],
        ["s0a#0", "s1a#0"],
        ["s1b#0", "s2b#0"],
        ["s2a#0", "s3a#0"],
        ["s3b#0"],
    ]


async def test_max_wait_groups_questions_that_arrive_within_it() -> None:
    engine = FakeEngine()
    # A wait far longer than the test: only a full batch can start.
    limits = BatchLimits(batch_size=3, max_wait_ms=600_000)
    async with MicroBatcher(engine, limits) as batcher:
        tasks = [ask(batcher, "A", 10)]
        await wait_until(lambda: batcher.pending_windows == 1)
        tasks.append(ask(batcher, "B", 10))
        await wait_until(lambda: batcher.pending_windows == 2)
        assert engine.batches == []
        tasks.append(ask(batcher, "C", 10))
        assert await engine.gate.next_batch() == ["A#0", "B#0", "C#0"]
        await bounded(asyncio.gather(*tasks))
    assert len(engine.batches) == 1


async def test_max_wait_runs_a_partial_batch_when_it_is_over() -> None:
    engine = FakeEngine()
    async with MicroBatcher(engine, BatchLimits(batch_size=8, max_wait_ms=50)) as batcher:
        answered = await bounded(ask(batcher, "A", 10))
    assert engine.labels() == [["A#0"]]
    assert answered.queue_s >= 0.05


async def test_stop_runs_a_batch_waiting_for_max_wait() -> None:
    engine = FakeEngine()
    batcher = MicroBatcher(engine, BatchLimits(batch_size=8, max_wait_ms=600_000))
    await batcher.start()
    task = ask(batcher, "A", 10)
    await wait_until(lambda: batcher.pending_windows == 1)
    await bounded(batcher.stop())
    assert task.result().result.answer == "A"


async def test_expired_questions_never_reach_inference() -> None:
    engine = FakeEngine()
    async with MicroBatcher(engine, BatchLimits()) as batcher:
        held = await hold_a_batch(engine, batcher, "A", 10)
        late = ask(batcher, "B", 10, 20, deadline=time.monotonic() + 0.5)
        await wait_until(lambda: batcher.pending_windows == 2)
        with pytest.raises(DeadlineExceeded):
            await bounded(late)
        assert batcher.pending_windows == 0
        with pytest.raises(DeadlineExceeded):
            await bounded(ask(batcher, "C", 10, deadline=time.monotonic() - 1))
        engine.gate.open()
        await bounded(held)
        assert (await bounded(ask(batcher, "D", 10))).result.answer == "D"
    assert engine.labels() == [["A#0"], ["D#0"]]


async def test_the_earliest_deadline_runs_first_and_the_oldest_right_after() -> None:
    engine = FakeEngine()
    async with MicroBatcher(engine, BatchLimits(batch_size=1)) as batcher:
        tasks = [await hold_a_batch(engine, batcher, "held", 10)]
        now = time.monotonic()
        tasks.append(ask(batcher, "old", 10))
        await wait_until(lambda: batcher.pending_windows == 1)
        tasks.append(ask(batcher, "later", 10, deadline=now + 600))
        await wait_until(lambda: batcher.pending_windows == 2)
        tasks.append(ask(batcher, "sooner", 10, deadline=now + 300))
        await wait_until(lambda: batcher.pending_windows == 3)
        engine.gate.open()
        await bounded(asyncio.gather(*tasks))
    # "sooner" goes ahead of the older two, so the oldest ("old") is due next, then "later".
    assert engine.labels() == [["held#0"], ["sooner#0"], ["old#0"], ["later#0"]]


def test_the_run_estimate_is_the_fastest_recent_rate() -> None:
    estimate = RunEstimate()
    assert estimate.seconds(1000) == 0.0  # nothing ran yet: nothing is known to be too late
    estimate.ran(100, 0.5)
    estimate.ran(200, 0.2)
    assert estimate.seconds(1000) == pytest.approx(1.0)
    for _ in range(RUN_ESTIMATE_BATCHES):
        estimate.ran(100, 0.3)
    # The fast batch is no longer among the last RUN_ESTIMATE_BATCHES.
    assert estimate.seconds(1000) == pytest.approx(3.0)


def one_second_a_token() -> RunEstimate:
    """A run estimate that has seen a batch run at 1 s a padded token."""
    estimate = RunEstimate()
    estimate.ran(1, 1.0)
    return estimate


@pytest.mark.parametrize(("margin_s", "runs"), [(-0.1, False), (0.1, True), (5.0, True)])
async def test_a_deadline_the_batch_could_not_make_fails_before_inference(
    margin_s: float, runs: bool
) -> None:
    """The batch would take at least 10 s (1 s a token, 10 tokens): a deadline just before that
    fails without running, one just after runs."""
    engine = FakeEngine()
    estimate = one_second_a_token()
    async with MicroBatcher(engine, BatchLimits(batch_size=1), run_estimate=estimate) as batcher:
        task = ask(batcher, "A", 10, deadline=time.monotonic() + 10 + margin_s)
        if runs:
            assert (await bounded(task)).result.answer == "A"
        else:
            with pytest.raises(DeadlineExceeded, match="before its window could finish"):
                await bounded(task)
        # The questions around it are answered either way.
        assert (await bounded(ask(batcher, "B", 10))).result.answer == "B"
    assert engine.labels() == ([["A#0"]] if runs else []) + [["B#0"]]


async def test_a_doomed_question_leaves_the_batch_to_the_others() -> None:
    engine = FakeEngine()
    # Only a full batch of three starts; at 1 s a token, B's window alone takes 10 s.
    limits = BatchLimits(batch_size=3, max_wait_ms=600_000)
    async with MicroBatcher(engine, limits, run_estimate=one_second_a_token()) as batcher:
        tasks = [ask(batcher, "A", 10)]
        await wait_until(lambda: batcher.pending_windows == 1)
        # B fails as soon as it is planned into the batch that waits to fill, before it runs.
        with pytest.raises(DeadlineExceeded, match="before its window could finish"):
            await bounded(ask(batcher, "B", 10, deadline=time.monotonic() + 5))
        assert batcher.pending_windows == 1
        tasks += [ask(batcher, "C", 10), ask(batcher, "D", 10)]
        await bounded(asyncio.gather(*tasks))
    assert engine.labels() == [["A#0", "C#0", "D#0"]]


class FixedRate(RunEstimate):
    """A run estimate that learns nothing from the batches that run."""

    def __init__(self, seconds_per_token: float) -> None:
        super().__init__()
        self._rate = seconds_per_token

    def ran(self, padded_tokens: int, seconds: float) -> None:
        pass

    def seconds(self, padded_tokens: int) -> float:
        return self._rate * padded_tokens


async def test_every_doomed_question_fails_at_once_before_the_next_batch() -> None:
    engine = FakeEngine()
    # 1 s a token, whatever the held batch takes: each 10-token window takes at least 10 s,
    # past every deadline below.
    estimate = FixedRate(1.0)
    async with MicroBatcher(engine, BatchLimits(batch_size=1), run_estimate=estimate) as batcher:
        held = await hold_a_batch(engine, batcher, "held", 10)
        now = time.monotonic()
        doomed = [ask(batcher, f"d{i}", 10, 10, deadline=now + 5) for i in range(50)]
        kept = ask(batcher, "ok", 10)
        await wait_until(lambda: batcher.pending_windows == 101)
        engine.gate.open()
        results = await bounded(asyncio.gather(*doomed, return_exceptions=True))
        assert all(isinstance(result, DeadlineExceeded) for result in results)
        assert (await bounded(kept)).result.answer == "ok"
        await bounded(held)
    assert engine.labels() == [["held#0"], ["ok#0"]]


async def test_the_lanes_whose_windows_ran_are_told_once_each() -> None:
    """What the partition watchdog counts as a partition working: a lane is told after a window
    of it ran, and once; a lane whose question is still held before inference is not."""
    engine = FakeEngine()
    async with MicroBatcher(engine, BatchLimits(batch_size=1)) as batcher:
        assert batcher.lanes_run() == set()
        engine.gate.hold()
        first = asyncio.create_task(batcher.answer("A", "1 2", OPTIONS, lane=("q", 0)))
        await engine.gate.next_batch()
        second = asyncio.create_task(batcher.answer("B", "3", OPTIONS, lane=("q", 1)))
        await wait_until(lambda: batcher.pending_windows == 1)  # type: ignore[arg-type]
        assert batcher.lanes_run() == set()
        engine.gate.open()
        await bounded(asyncio.gather(first, second))
        assert batcher.lanes_run() == {("q", 0), ("q", 1)}
        assert batcher.lanes_run() == set()


async def test_bad_input_fails_alone() -> None:
    engine = FakeEngine()
    async with MicroBatcher(engine, BatchLimits()) as batcher:
        results = await bounded(
            asyncio.gather(
                ask(batcher, "A", 10),
                asyncio.create_task(batcher.answer("bad", "", OPTIONS)),
                ask(batcher, "C", 10),
                return_exceptions=True,
            )
        )
    assert isinstance(results[1], EventError)
    assert results[1].code == "empty_context"
    assert [r.result.answer for r in (results[0], results[2])] == ["A", "C"]  # type: ignore[union-attr]


async def test_one_window_that_fails_fails_only_its_question() -> None:
    """A batch of several windows that raises runs again one window at a time: only the question
    whose window fails alone fails, with the engine's error, and each window runs alone once."""
    engine = FakeEngine()
    async with MicroBatcher(engine, BatchLimits(batch_size=8, max_padding=math.inf)) as batcher:
        tasks = [await hold_a_batch(engine, batcher, "A", 5)]
        names = ("X", "boom", "Y")
        tasks += [ask(batcher, "X", 5, 6), ask(batcher, "boom", 5), ask(batcher, "Y", 7, 5, 6)]
        await wait_until(lambda: batcher.pending_windows == 6)
        engine.gate.open()
        results = await bounded(asyncio.gather(*tasks, return_exceptions=True))
        after = await bounded(ask(batcher, "after", 5))
    many = engine.labels()[1]
    assert sorted(many) == ["X#0", "X#1", "Y#0", "Y#1", "Y#2", "boom#0"]
    alone = engine.labels()[2:8]
    assert all(len(batch) == 1 for batch in alone)
    assert sorted(batch[0] for batch in alone) == sorted(many)
    failed = [n for n, r in zip(("A", *names), results, strict=True) if not isinstance(r, Answered)]
    assert failed == ["boom"]
    error = results[2]
    assert isinstance(error, RuntimeError) and str(error) == "inference failed"
    assert after.result.answer == "after"
    assert engine.labels()[8:] == [["after#0"]]


async def test_stop_finishes_what_was_submitted() -> None:
    engine = FakeEngine()
    batcher = MicroBatcher(engine, BatchLimits(batch_size=2))
    await batcher.start()
    tasks = [await hold_a_batch(engine, batcher, "A", 10)]
    tasks += [ask(batcher, "B", 10, 11), ask(batcher, "C", 10)]
    await wait_until(lambda: batcher.pending_windows == 3)
    stopping = asyncio.create_task(batcher.stop())
    # One turn of the loop: stop() runs until it waits for the questions in flight.
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await batcher.answer("late", "10", OPTIONS)
    assert not stopping.done()
    engine.gate.open()
    await bounded(stopping)
    assert [task.result().result.answer for task in tasks] == ["A", "B", "C"]
    assert (batcher.pending_windows, batcher.in_flight_requests) == (0, 0)


async def test_cancelling_a_caller_drops_its_windows() -> None:
    engine = FakeEngine()
    async with MicroBatcher(engine, BatchLimits()) as batcher:
        held = await hold_a_batch(engine, batcher, "A", 10)
        cancelled = ask(batcher, "B", 10, 20, 30)
        await wait_until(lambda: batcher.pending_windows == 3)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert (batcher.pending_windows, batcher.in_flight_requests) == (0, 1)
        engine.gate.open()
        await bounded(held)
    assert engine.labels() == [["A#0"]]


class GatedEngine:
    """A real engine whose batches pass through a Gate, so the test can make them pile up (the
    support GatedEngine holds every batch on one switch and cannot step them)."""

    def __init__(self, engine: QAEngine) -> None:
        self.engine = engine
        self.streams = engine.streams
        self.gate = Gate()

    def encode(self, question: str, context: str) -> EncodedQuestion:
        return self.engine.encode(question, context)

    def infer(self, windows: Sequence[Window], stream: int) -> list[WindowLogits]:
        self.gate.enter(len(windows))
        return self.engine.infer(windows, stream)

    def decode(
        self, encoded: EncodedQuestion, logits: Sequence[WindowLogits], options: QAOptions
    ) -> QAResult:
        return self.engine.decode(encoded, logits, options)


class BatchSizes:
    def __init__(self) -> None:
        self.windows: list[int] = []

    def on_batch(
        self, windows: int, real_tokens: int, padded_tokens: int, seconds: float, plan_s: float
    ) -> None:
        assert real_tokens <= padded_tokens
        self.windows.append(windows)


@pytest.mark.parametrize("streams", [1, 2])
async def test_real_model_answers_equal_answer_many(
    exported_models: dict[str, Path], streams: int
) -> None:
    engine = QAEngine.load(exported_models["bert"], precision="fp32", streams=streams)
    options = QAOptions(top_k=2)
    pairs = texts.pairs(seed=5, count=50)
    expected = engine.answer_many([Question(q, c, options) for q, c in pairs])
    windows = sum(len(engine.encode(q, c).windows) for q, c in pairs)
    gated, sizes = GatedEngine(engine), BatchSizes()
    limits = BatchLimits(batch_size=8, max_batch_tokens=4096)
    async with MicroBatcher(gated, limits, sizes) as batcher:
        # The first batches wait until every other window is queued, so batches must form.
        gated.gate.hold()
        tasks = [asyncio.create_task(batcher.answer(q, c, options)) for q, c in pairs]
        started = sum([await gated.gate.next_batch() for _ in range(streams)])  # type: ignore[misc]
        await wait_until(lambda: batcher.pending_windows == windows - started)
        gated.gate.open()
        answered = await bounded(asyncio.gather(*tasks))
    assert sum(sizes.windows) == windows
    assert max(sizes.windows) > 1
    for want, got in zip(expected, answered, strict=True):
        assert isinstance(want, QAResult)
        assert [(s.answer, s.start, s.end) for s in got.result.answers] == [
            (s.answer, s.start, s.end) for s in want.answers
        ]
        assert [s.score for s in got.result.answers] == pytest.approx(
            [s.score for s in want.answers], abs=1e-5
        )


class BarrierEngine(FakeEngine):
    """A FakeEngine whose batches meet at a barrier of two and count how many run at once."""

    def __init__(self, streams: int) -> None:
        super().__init__(streams)
        self.barrier = threading.Barrier(2, timeout=TIMEOUT)
        self._lock = threading.Lock()
        self._running = 0
        self.most_at_once = 0
        self.streams_seen: set[int] = set()

    def infer(self, windows: Sequence[Window], stream: int = 0) -> list[WindowLogits]:
        with self._lock:
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
            self.streams_seen.add(stream)
        try:
            # Only two batches running at the same time get past this; one alone times out.
            self.barrier.wait()
            return super().infer(windows, stream)
        finally:
            with self._lock:
                self._running -= 1


async def test_two_streams_run_two_batches_at_once_and_never_more() -> None:
    engine = BarrierEngine(streams=2)
    async with MicroBatcher(engine, BatchLimits(batch_size=1)) as batcher:
        answered = await bounded(asyncio.gather(*(ask(batcher, f"q{i}", 10) for i in range(8))))
    assert [a.result.answer for a in answered] == [f"q{i}" for i in range(8)]
    assert engine.most_at_once == 2
    assert engine.streams_seen == {0, 1}


async def test_one_stream_never_runs_two_batches_at_once() -> None:
    engine = FakeEngine(streams=1)
    seen: list[int] = []
    lock = threading.Lock()
    running = 0
    infer = engine.infer

    def counting(windows: Sequence[Window], stream: int = 0) -> list[WindowLogits]:
        nonlocal running
        with lock:
            running += 1
            seen.append(running)
        try:
            return infer(windows, stream)
        finally:
            with lock:
                running -= 1

    engine.infer = counting  # type: ignore[method-assign]
    async with MicroBatcher(engine, BatchLimits(batch_size=1)) as batcher:
        await bounded(asyncio.gather(*(ask(batcher, f"q{i}", 10) for i in range(6))))
    assert seen == [1] * 6
    assert set(engine.streams_used) == {0}


async def test_a_failing_batch_on_one_stream_fails_only_its_requests() -> None:
    engine = FakeEngine(streams=2)
    async with MicroBatcher(engine, BatchLimits(batch_size=1)) as batcher:
        engine.gate.hold()
        tasks = [ask(batcher, "boom", 5), ask(batcher, "A", 5)]
        # Both streams hold a batch: the failing one and a healthy one beside it.
        assert sorted([await engine.gate.next_batch(), await engine.gate.next_batch()]) == [  # type: ignore[type-var]
            ["A#0"],
            ["boom#0"],
        ]
        tasks += [ask(batcher, name, 5) for name in ("X", "Y")]
        await wait_until(lambda: batcher.pending_windows == 2)
        engine.gate.open()
        results = await bounded(asyncio.gather(*tasks, return_exceptions=True))
    assert isinstance(results[0], RuntimeError) and str(results[0]) == "inference failed"
    assert [r.result.answer for r in results[1:]] == ["A", "X", "Y"]  # type: ignore[union-attr]
    assert set(engine.streams_used) == {0, 1}


def test_inference_stats_add_up_across_concurrent_streams(
    exported_models: dict[str, Path],
) -> None:
    engine = QAEngine.load(exported_models["bert"], precision="fp32", streams=2, threads=1)
    encoded = engine.tokenizer.encode_many(texts.pairs(seed=3, count=12))
    windows = [w for item in encoded if isinstance(item, EncodedQuestion) for w in item.windows]
    batches = [windows[i : i + 2] for i in range(0, len(windows), 2)] * 10
    barrier = threading.Barrier(2, timeout=TIMEOUT)

    def stream(index: int) -> None:
        barrier.wait()
        for batch in batches[index::2]:
            engine.infer(batch, index)

    threads = [threading.Thread(target=stream, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert engine.stats.batches == len(batches)
    assert engine.stats.windows == sum(len(batch) for batch in batches)
    assert engine.stats.real_tokens == sum(len(w) for batch in batches for w in batch)


class SlowLongEngine(FakeEngine):
    """Tokenizing a context over LONG_CONTEXT_CHARS blocks until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.long_started = threading.Event()
        self.release_long = threading.Event()

    def encode(self, question: str, context: str) -> EncodedQuestion:
        if len(context) > LONG_CONTEXT_CHARS:
            self.long_started.set()
            if not self.release_long.wait(TIMEOUT):
                raise TimeoutError("the test never let the long context through")
            context = "384 384"
        return super().encode(question, context)


async def test_a_long_context_being_tokenized_holds_up_no_short_question() -> None:
    engine = SlowLongEngine()
    async with MicroBatcher(engine, BatchLimits(batch_size=1)) as batcher:
        long = asyncio.create_task(batcher.answer("long", "x" * (LONG_CONTEXT_CHARS + 1), OPTIONS))
        await bounded(asyncio.to_thread(engine.long_started.wait, TIMEOUT))
        # Tokenizing and decoding the short ones go on beside it, on the other thread.
        short = await bounded(asyncio.gather(*(ask(batcher, f"s{i}", 10, 20) for i in range(3))))
        assert [a.result.answer for a in short] == ["s0", "s1", "s2"]
        assert not long.done()
        engine.release_long.set()
        assert (await bounded(long)).result.answer == "long"


class PriorityEngine(FakeEngine):
    """Records the nice value of the thread each stage runs on."""

    def __init__(self) -> None:
        super().__init__()
        self.nice: dict[str, set[int]] = {"short": set(), "long": set(), "infer": set()}

    @staticmethod
    def own_nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def encode(self, question: str, context: str) -> EncodedQuestion:
        kind = "long" if len(context) > LONG_CONTEXT_CHARS else "short"
        self.nice[kind].add(self.own_nice())
        return super().encode(question, "30 30" if kind == "long" else context)

    def infer(self, windows: Sequence[Window], stream: int = 0) -> list[WindowLogits]:
        self.nice["infer"].add(self.own_nice())
        return super().infer(windows, stream)


async def test_inference_and_long_tokenizing_yield_the_cpu_to_the_event_loop() -> None:
    engine = PriorityEngine()
    engine.streams = 2
    base = PriorityEngine.own_nice()
    async with MicroBatcher(engine, BatchLimits(batch_size=1)) as batcher:
        await bounded(
            asyncio.gather(
                batcher.answer("long", "x" * (LONG_CONTEXT_CHARS + 1), OPTIONS),
                *(ask(batcher, f"s{i}", 10, 20) for i in range(4)),
            )
        )
    # Nice values only go up without privileges: a thread already above BULK_NICE stays there.
    bulk = max(base, BULK_NICE)
    assert engine.nice == {"short": {base}, "long": {bulk}, "infer": {bulk}}
    assert PriorityEngine.own_nice() == base
