"""What the event-contract tests share: the schemas as the oracle reads them, a question event
to vary, and the answering defaults and limits it is parsed with."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from worker.errors import EventError
from worker.events import InputLimits, QuestionEvent, parse_question
from worker.qa import QAOptions

ROOT = Path(__file__).resolve().parent.parent.parent


SCHEMA_NAMES = ("question", "answer", "dead-letter")


# The oracle reads the repository's files, not the package's, so packaging is checked separately.
VALIDATORS = {
    name: Draft202012Validator(json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text()))
    for name in SCHEMA_NAMES
}


QUESTION_PROPERTIES: dict[str, dict[str, Any]] = VALIDATORS["question"].schema["properties"]


OPTION_FIELDS = [
    spec.name for spec in dataclasses.fields(QAOptions) if spec.name in QUESTION_PROPERTIES
]


DEFAULTS = QAOptions(top_k=2, max_answer_len=30, handle_impossible_answer=False)


LIMITS = InputLimits(max_question_chars=100, max_context_chars=1000)


KAFKA_TIME = 1_714_564_800_000  # 2024-05-01T12:00:00Z


NOW = KAFKA_TIME + 1_250


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


OMIT = object()  # a field to leave out of the base question


def question_bytes(**fields: Any) -> bytes:
    document = {"id": "q1", "question": "Who wrote it?", "context": "It was written by Ada."}
    document.update(fields)
    return json.dumps({k: v for k, v in document.items() if v is not OMIT}).encode()


def parse(value: bytes | None, default_deadline_ms: int | None = None) -> QuestionEvent:
    return parse_question(value, KAFKA_TIME, DEFAULTS, LIMITS, default_deadline_ms)


def rejection(value: bytes | None) -> EventError:
    with pytest.raises(EventError) as caught:
        parse(value)
    assert str(caught.value) == caught.value.message
    return caught.value


def closed(schema: Any) -> Any:
    """The schema with its objects closed, so that events write only properties it declares."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copy = {key: closed(value) for key, value in schema.items()}
    if "properties" in schema:
        copy["additionalProperties"] = False
    return copy


CLOSED = {name: Draft202012Validator(closed(VALIDATORS[name].schema)) for name in SCHEMA_NAMES}


def assert_fits(name: str, event: dict[str, Any]) -> None:
    VALIDATORS[name].validate(event)
    CLOSED[name].validate(event)


def small_json(integers: st.SearchStrategy[int], max_leaves: int) -> st.SearchStrategy[Any]:
    """JSON values of at most `max_leaves` leaves: null, booleans, `integers`, finite floats and
    short texts, nested in short lists and objects."""
    return st.recursive(
        st.none()
        | st.booleans()
        | integers
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=max_leaves,
    )


json_values = small_json(st.integers(-(10**20), 10**20), max_leaves=6)
