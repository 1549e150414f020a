"""The bench's ideal worker (worker/bench/queueing.py): latencies that queueing alone allows."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.windows import token_window
from worker.bench.queueing import (
    WINDOW_TIME_REPEATS,
    QueueingModel,
    measure_window_times,
    queueing_latencies_ms,
)
from worker.bench.workload import Workload
from worker.errors import ErrorCode, EventError
from worker.qa.windows import EncodedQuestion, Window


def test_events_far_apart_take_their_own_work() -> None:
    # One stream: an event's windows run one after another.
    assert queueing_latencies_ms([0.0, 1.0], [[10.0, 20.0], [5.0]], streams=1) == pytest.approx(
        [30.0, 5.0]
    )
    # Two streams: its two windows run at once.
    assert queueing_latencies_ms([0.0, 1.0], [[10.0, 20.0], [5.0]], streams=2) == pytest.approx(
        [20.0, 5.0]
    )


def test_events_arriving_together_queue_in_order_of_arrival() -> None:
    latencies = queueing_latencies_ms([0.002, 0.0, 0.001], [[10.0], [10.0], [10.0]], streams=1)
    # They arrive at 0, 1 and 2 ms (the second, third, first given); each waits for those before.
    assert latencies == pytest.approx([28.0, 10.0, 19.0])


def test_a_refused_event_takes_no_time_and_what_cannot_be_modelled_is_refused() -> None:
    assert queueing_latencies_ms([0.0], [[]], streams=1) == [0.0]
    with pytest.raises(ValueError, match="streams"):
        queueing_latencies_ms([0.0], [[1.0]], streams=0)
    with pytest.raises(ValueError, match="2 arrivals for 1 events"):
        queueing_latencies_ms([0.0, 1.0], [[1.0]], streams=1)


events = st.lists(
    st.tuples(
        st.floats(0, 2, allow_nan=False),
        st.lists(st.floats(0.1, 400, allow_nan=False), min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(events, st.integers(1, 4))
def test_no_event_is_faster_than_its_longest_window_and_more_streams_never_hurt(
    drawn: list[tuple[float, list[float]]], streams: int
) -> None:
    arrivals = [arrival for arrival, _ in drawn]
    windows = [work for _, work in drawn]
    latencies = queueing_latencies_ms(arrivals, windows, streams)
    more = queueing_latencies_ms(arrivals, windows, streams + 1)
    for index, latency in enumerate(latencies):
        assert latency >= max(windows[index]) - 1e-9
        # A stream for every window: nothing waits, each event takes its longest window.
        if streams >= sum(len(work) for work in windows):
            assert latency == pytest.approx(max(windows[index]))
        assert more[index] <= latency + 1e-6


@settings(max_examples=200, deadline=None)
@given(events)
def test_one_stream_is_busy_for_all_the_work(drawn: list[tuple[float, list[float]]]) -> None:
    arrivals = [arrival for arrival, _ in drawn]
    latencies = queueing_latencies_ms(arrivals, [work for _, work in drawn], 1)
    finish_s = max(a + latency / 1000 for a, latency in zip(arrivals, latencies, strict=True))
    work_s = sum(sum(work) for _, work in drawn) / 1000
    assert finish_s - min(arrivals) >= work_s - 1e-9


def test_the_model_cycles_through_the_records_as_the_phases_do() -> None:
    model = QueueingModel([[10.0], [30.0, 30.0]], streams=2)
    # Event i is record i % 2: far apart, each takes its own record's work.
    assert model.latencies_ms([0.0, 1.0, 2.0]) == pytest.approx([10.0, 30.0, 10.0])


class CountingBackend:
    """Records the length of every batch it runs."""

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def run(
        self, inputs: Mapping[str, np.ndarray], stream: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        self.lengths.append(inputs["input_ids"].shape[1])
        zeros = np.zeros(inputs["input_ids"].shape, dtype=np.float32)
        return zeros, zeros


def window(length: int) -> Window:
    return token_window(np.arange(length, dtype=np.int64))


def test_each_length_is_timed_once_and_each_question_gets_its_windows_times() -> None:
    first = EncodedQuestion("q1", "c1", [window(20), window(7)], context_sequence=1)
    second = EncodedQuestion("q2", "c2", [window(20)], context_sequence=1)
    refused = EventError(ErrorCode.EMPTY_CONTEXT, "context cannot be empty")
    encoded: list[EncodedQuestion | EventError] = [first, refused, second]
    workload = Workload([], encoded, [*first.windows, *second.windows])
    backend = CountingBackend()
    times = measure_window_times(backend, workload, pad_id=0)
    # One warm-up run and the timed runs per distinct length, in order of first appearance.
    assert backend.lengths == [20] * (1 + WINDOW_TIME_REPEATS) + [7] * (1 + WINDOW_TIME_REPEATS)
    assert [len(item) for item in times] == [2, 0, 1]
    assert times[0][0] == times[2][0]  # one length, one time
    assert all(ms > 0 for item in times for ms in item)
