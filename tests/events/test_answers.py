"""The answer and tags events (`worker.events.answers`) and how they are encoded."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.events import (
    DEFAULTS,
    KAFKA_TIME,
    NOW,
    assert_fits,
    json_values,
    parse,
    question_bytes,
)
from worker.events import QuestionEvent, answer_event, to_bytes
from worker.qa import QAResult, Span

RESULT = QAResult(
    answer="Ada",
    score=0.75,
    start=18,
    end=21,
    is_impossible=False,
    null_score=0.01,
    answers=[Span("Ada", 0.75, 18, 21), Span("", 0.01, 0, 0)],
    best_span=Span("Ada", 0.75, 18, 21),
)


def make_answer(event: QuestionEvent, result: QAResult = RESULT, **times: float) -> dict[str, Any]:
    timings = {"queue_ms": 12.5, "inference_ms": 3.25, "total_ms": 16.0} | times
    return answer_event(
        event, result, "mobilebert", "ab" * 32, **timings, worker_version="0.1.0", now_ms=NOW
    )


def test_answer_event() -> None:
    event = parse(question_bytes(metadata={"trace": "t-1", "n": [1, 2]}))
    answer = make_answer(event)
    assert_fits("answer", answer)
    assert answer == {
        "id": "q1",
        "answer": "Ada",
        "score": 0.75,
        "start": 18,
        "end": 21,
        "is_impossible": False,
        "null_score": 0.01,
        "answers": [
            {"answer": "Ada", "score": 0.75, "start": 18, "end": 21},
            {"answer": "", "score": 0.01, "start": 0, "end": 0},
        ],
        "model": {"name": "mobilebert", "checksum": "ab" * 32},
        "timings": {"queue_ms": 12.5, "inference_ms": 3.25, "total_ms": 16.0},
        "metadata": {"trace": "t-1", "n": [1, 2]},
        "worker_version": "0.1.0",
        "answered_at": "2024-05-01T12:00:01.250Z",
    }


def test_answer_without_metadata_and_with_a_clock_ahead() -> None:
    answer = make_answer(parse(question_bytes()), queue_ms=-40.0, total_ms=-5.0)
    assert_fits("answer", answer)
    assert "metadata" not in answer
    assert answer["timings"] == {"queue_ms": 0.0, "inference_ms": 3.25, "total_ms": 0.0}


def test_to_bytes_is_compact_utf8() -> None:
    event = parse(question_bytes(id="q-\u00e9\U0001f600", metadata={"a": "\u4e2d"}))
    data = to_bytes(make_answer(event))
    assert "q-\u00e9\U0001f600".encode() in data and "\u4e2d".encode() in data
    assert b", " not in data and b": " not in data
    assert json.loads(data) == make_answer(event)


def test_to_bytes_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        to_bytes({"score": float("nan")})


@settings(max_examples=200, deadline=None)
@given(
    id_=st.text(min_size=1, max_size=10),
    spans=st.lists(
        st.builds(
            Span,
            st.text(max_size=10),
            st.floats(0, 1),
            st.integers(0, 10**6),
            st.integers(0, 10**6),
        ),
        min_size=1,
        max_size=5,
    ),
    null_score=st.floats(0, 1),
    metadata=st.none() | st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    times=st.lists(st.floats(-1e6, 1e9), min_size=3, max_size=3),
)
def test_every_answer_event_fits_its_schema(
    id_: str,
    spans: list[Span],
    null_score: float,
    metadata: dict[str, Any] | None,
    times: list[float],
) -> None:
    event = QuestionEvent(id_, "q", "c", DEFAULTS, metadata, KAFKA_TIME, None)
    best = spans[0]
    result = QAResult(
        best.answer, best.score, best.start, best.end, not best.answer, null_score, spans, best
    )
    answer = make_answer(event, result, queue_ms=times[0], inference_ms=times[1], total_ms=times[2])
    assert_fits("answer", answer)
    assert json.loads(to_bytes(answer)) == answer
