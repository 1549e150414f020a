"""Event contracts: question parsing, answer and dead-letter events, and their JSON Schemas."""

from __future__ import annotations

import base64
import dataclasses
import json
import tomllib
import tracemalloc
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from worker.errors import ErrorCode, EventError
from worker.events import (
    DOCUMENT,
    QUESTION,
    Contract,
    InputLimits,
    QuestionEvent,
    answer_event,
    codec,
    dead_letter_bytes,
    dead_letter_event,
    decode_json,
    load_schema,
    parse_question,
    to_bytes,
)
from worker.qa import QAOptions, QAResult, Span

ROOT = Path(__file__).resolve().parent.parent
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


def epoch_ms(instant: datetime) -> int:
    return (instant - EPOCH) // timedelta(milliseconds=1)


# --- the schemas themselves


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schemas_ship_in_the_package_as_2020_12_with_ids(name: str) -> None:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name}.schema.json")
    assert schema["description"]
    assert schema == VALIDATORS[name].schema


def test_pyproject_packages_every_subpackage_and_the_schemas() -> None:
    # The package list is explicit (worker.schemas lives outside worker/), so a new subpackage
    # must be added to it or it is missing from wheels while editable installs still work.
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "worker").rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == on_disk | {"worker.schemas"}
    assert setuptools["package-dir"]["worker.schemas"] == "schemas"
    assert "*.json" in setuptools["package-data"]["worker.schemas"]


def test_every_question_property_is_used() -> None:
    # A property the code does not read would be accepted and silently ignored.
    read_by_code = {
        "id",
        "question",
        "context",
        "metadata",
        "created_at",
        "deadline_ms",
        "reply_to",
    }
    assert set(QUESTION_PROPERTIES) == read_by_code | set(OPTION_FIELDS)


def test_question_schema_uses_only_keywords_the_messages_put_into_words() -> None:
    # EventError messages describe each property from these keywords; a new one needs wording.
    described = {"type", "minLength", "minimum", "maximum", "format", "description"}
    for name, schema in QUESTION_PROPERTIES.items():
        assert set(schema) <= described, name


# --- parsing questions


def test_a_minimal_question_takes_the_defaults() -> None:
    event = parse(question_bytes())
    assert event == QuestionEvent(
        id="q1",
        question="Who wrote it?",
        context="It was written by Ada.",
        options=DEFAULTS,
        metadata=None,
        event_time_ms=KAFKA_TIME,
        deadline_ms=None,
    )


def test_per_event_options_override_the_defaults() -> None:
    event = parse(question_bytes(top_k=5, null_threshold=0.25, metadata={"trace": [1, "a"]}))
    assert event.options == dataclasses.replace(DEFAULTS, top_k=5, null_threshold=0.25)
    assert event.metadata == {"trace": [1, "a"]}
    every = parse(
        question_bytes(top_k=3, max_answer_len=7, handle_impossible_answer=True, null_threshold=-1)
    )
    assert every.options == QAOptions(
        top_k=3, max_answer_len=7, handle_impossible_answer=True, null_threshold=-1.0
    )
    assert isinstance(every.options.null_threshold, float)


def test_integral_floats_are_integers_as_the_schema_says() -> None:
    event = parse(question_bytes(top_k=3.0, max_answer_len=1e1, deadline_ms=100.0))
    assert (event.options.top_k, event.options.max_answer_len) == (3, 10)
    assert type(event.options.top_k) is int
    assert event.deadline_ms == KAFKA_TIME + 100


def test_unknown_properties_are_ignored() -> None:
    assert parse(question_bytes(extra={"x": 1}, language="en")) == parse(question_bytes())


@pytest.mark.parametrize(
    ("created_at", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00.25Z", datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)),
        # beyond milliseconds the fraction is cut, not rounded
        ("2024-05-01T12:00:00.123999999Z", datetime(2024, 5, 1, 12, 0, 0, 123_000, tzinfo=UTC)),
        ("2024-05-01T14:30:00+02:30", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T07:00:00-05:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01t12:00:00z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        # a leap second is the instant after 23:59:59
        ("2016-12-31T23:59:60Z", datetime(2017, 1, 1, tzinfo=UTC)),
        ("1969-12-31T23:59:59.5Z", datetime(1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC)),
    ],
)
def test_created_at_is_the_event_time(created_at: str, expected: datetime) -> None:
    assert parse(question_bytes(created_at=created_at)).event_time_ms == epoch_ms(expected)


def test_without_created_at_the_kafka_timestamp_is_the_event_time() -> None:
    assert parse(question_bytes()).event_time_ms == KAFKA_TIME


@pytest.mark.parametrize(
    ("created_at", "fragment"),
    [
        ("yesterday", "RFC 3339"),
        ("2024-05-01", "RFC 3339"),
        ("2024-05-01T12:00:00", "RFC 3339"),  # no time zone
        ("2024-05-01T12:00Z", "RFC 3339"),  # no seconds
        ("2024-05-01 12:00:00Z", "RFC 3339"),
        ("2024-05-01T12:00:00Z\n", "RFC 3339"),
        ("2024-05-01T12:00:00+0200", "RFC 3339"),
        ("\u0662\u0660\u0662\u0664-05-01T12:00:00Z", "RFC 3339"),  # Arabic-Indic digits
        ("2024-02-30T12:00:00Z", "day is out of range"),
        ("2024-05-01T24:00:00Z", "hour must be"),
        ("2024-05-01T12:00:61Z", "second must be"),
        ("0000-05-01T12:00:00Z", "year 0 is out of range"),
        ("2024-05-01T12:00:00+24:00", "offset out of range"),
        ("2024-05-01T12:00:00+02:60", "offset out of range"),
    ],
)
def test_bad_created_at(created_at: str, fragment: str) -> None:
    error = rejection(question_bytes(created_at=created_at))
    assert error.code == "invalid_created_at"
    assert '"created_at"' in error.message
    assert fragment in error.message


def test_per_event_deadline_is_relative_to_the_event_time() -> None:
    created = "2024-05-01T11:59:59Z"
    event = parse(question_bytes(created_at=created, deadline_ms=5_000), default_deadline_ms=60)
    assert event.deadline_ms == KAFKA_TIME - 1_000 + 5_000
    assert parse(question_bytes(deadline_ms=5_000)).deadline_ms == KAFKA_TIME + 5_000


def test_default_deadline_applies_when_the_event_has_none() -> None:
    assert parse(question_bytes(), default_deadline_ms=30_000).deadline_ms == KAFKA_TIME + 30_000
    created = parse(question_bytes(created_at="2024-05-01T11:00:00Z"), default_deadline_ms=1)
    assert created.deadline_ms == KAFKA_TIME - 3_600_000 + 1


def test_no_deadline_without_event_or_default() -> None:
    assert parse(question_bytes()).deadline_ms is None


# --- bad input


@pytest.mark.parametrize(
    ("value", "code", "fragment"),
    [
        (None, "invalid_json", "no value"),
        (b"", "invalid_json", "no value"),
        (b"\xff\xfe{}", "invalid_utf8", "byte 0xff at offset 0"),
        ('{"id": "caf\u00e9"}'.encode("latin-1"), "invalid_utf8", "byte 0xe9 at offset 11"),
        (b"who wrote it?", "invalid_json", "not JSON (Expecting value at line 1 column 1)"),
        # Where: column 13 up to Python 3.12; 3.13's parser names the trailing comma, column 12.
        (b'{"id": "q1",}', "invalid_json", "line 1 column 1"),
        (b'{"id": "q1"} {}', "invalid_json", "Extra data"),
        (b"\xef\xbb\xbf{}", "invalid_json", "byte order mark"),
        (b"[]", "invalid_event", "must be a JSON object"),
        (b'"Who wrote it?"', "invalid_event", 'must be a JSON object with "id", "question"'),
        (b"42", "invalid_event", "got 42"),
        (b"null", "invalid_event", "got null"),
        (b'{"id":"q","question":"?","context":"c","null_threshold":NaN}', "invalid_json", "NaN"),
        (b'{"id":"q","question":"?","context":"c","x":-Infinity}', "invalid_json", "-Infinity"),
        (b'{"id":"q","question":"?","context":"c","x":[1e400]}', "invalid_json", "1e400"),
        (b'{"id":"q","x":' + b"9" * 5000 + b"}", "invalid_json", "digits"),
        (b"[" * 5_000, "invalid_event", "more than 64 levels deep"),
        (b"[" * 100_000, "invalid_event", "holds 100001 JSON values"),
        (b'{"id":"q","question":"?\\ud800","context":"c"}', "invalid_json", "surrogate"),
        (b'{"id":"q","question":"?","context":"c","m":{"\\udc00":1}}', "invalid_json", "surrogate"),
    ],
)
def test_unreadable_values(value: bytes | None, code: str, fragment: str) -> None:
    error = rejection(value)
    assert error.code == code
    assert fragment in error.message


def test_paired_surrogate_escapes_are_one_character() -> None:
    event = parse(b'{"id":"q","question":"\\ud83d\\ude00?","context":"\\uD83D\\uDE00"}')
    assert (event.question, event.context) == ("\U0001f600?", "\U0001f600")


@pytest.mark.parametrize("name", ["id", "question", "context"])
def test_missing_required_field(name: str) -> None:
    error = rejection(question_bytes(**{name: OMIT}))
    assert error.code == "invalid_event"
    assert error.message == f'"{name}" is required'


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("id", 5, '"id" must be a non-empty string, got 5'),
        ("id", "", '"id" must be a non-empty string, got ""'),
        ("question", None, '"question" must be a string, got null'),
        ("question", ["Who?"], '"question" must be a string, got an array'),
        ("context", {"text": "x"}, '"context" must be a non-empty string, got an object'),
        ("context", "", '"context" must be a non-empty string, got ""'),
        ("top_k", "3", '"top_k" must be an integer from 1 to 20, got "3"'),
        ("top_k", 2.5, '"top_k" must be an integer from 1 to 20, got 2.5'),
        ("top_k", True, '"top_k" must be an integer from 1 to 20, got true'),
        ("top_k", 0, '"top_k" must be an integer from 1 to 20, got 0'),
        ("top_k", 21, '"top_k" must be an integer from 1 to 20, got 21'),
        ("max_answer_len", 0, '"max_answer_len" must be an integer from 1 to 512, got 0'),
        ("max_answer_len", 513, '"max_answer_len" must be an integer from 1 to 512, got 513'),
        ("max_answer_len", "15", '"max_answer_len" must be an integer from 1 to 512, got "15"'),
        (
            "handle_impossible_answer",
            "true",
            '"handle_impossible_answer" must be true or false, got "true"',
        ),
        ("handle_impossible_answer", 1, '"handle_impossible_answer" must be true or false, got 1'),
        ("null_threshold", "0.5", '"null_threshold" must be a number from -1 to 1, got "0.5"'),
        ("null_threshold", 1.5, '"null_threshold" must be a number from -1 to 1, got 1.5'),
        ("null_threshold", -2, '"null_threshold" must be a number from -1 to 1, got -2'),
        ("null_threshold", None, '"null_threshold" must be a number from -1 to 1, got null'),
        ("metadata", [1], '"metadata" must be a JSON object, got an array'),
        ("metadata", "trace", '"metadata" must be a JSON object, got "trace"'),
        (
            "created_at",
            1714564800,
            '"created_at" must be an RFC 3339 date-time string, got 1714564800',
        ),
        ("deadline_ms", 0, '"deadline_ms" must be an integer from 1 to 9007199254740991, got 0'),
        (
            "deadline_ms",
            1.5,
            '"deadline_ms" must be an integer from 1 to 9007199254740991, got 1.5',
        ),
        (
            "deadline_ms",
            "100",
            '"deadline_ms" must be an integer from 1 to 9007199254740991, got "100"',
        ),
    ],
)
def test_schema_violations_name_the_field_and_the_rule(name: str, value: Any, message: str) -> None:
    error = rejection(question_bytes(**{name: value}))
    assert error.code == "invalid_event"
    assert error.message.startswith(message)


def test_every_violation_is_reported_in_schema_order() -> None:
    error = rejection(json.dumps({"top_k": 0, "question": 1, "id": "q"}).encode())
    assert error.message == (
        '"question" must be a string, got 1; "context" is required; '
        '"top_k" must be an integer from 1 to 20, got 0'
    )


def test_long_bad_values_are_cut_short_in_messages() -> None:
    error = rejection(question_bytes(created_at=12, id="x" * 10_000, top_k="y" * 10_000))
    assert len(error.message) < 300
    assert '"id"' not in error.message  # a long id is fine
    assert '"top_k" must be an integer from 1 to 20, got "yyyy' in error.message


INVISIBLE_TEXTS = [
    "",
    " ",
    "\t\n ",
    "\u3000\u00a0",
    "\u200b\u200b\u200d",
    "\ufeff\u2060\u200c \x00",
]


@pytest.mark.parametrize("question", INVISIBLE_TEXTS)
def test_empty_question(question: str) -> None:
    error = rejection(question_bytes(question=question))
    assert error.code == "empty_question"
    assert error.message.startswith('"question" must contain a visible character, got "')


# "" breaks the schema's minLength first: invalid_event.
@pytest.mark.parametrize("context", INVISIBLE_TEXTS[1:])
def test_empty_context(context: str) -> None:
    error = rejection(question_bytes(context=context))
    assert error.code == "empty_context"
    assert error.message.startswith('"context" must contain a visible character, got "')


@pytest.mark.parametrize("text", ["\u200bx", "\u0301", "\u200d\U0001f600"])
def test_one_visible_character_is_enough(text: str) -> None:
    event = parse(question_bytes(question=text, context=text))
    assert (event.question, event.context) == (text, text)


@pytest.mark.parametrize(
    ("name", "limit", "setting"),
    [
        ("question", LIMITS.max_question_chars, "--max-question-chars"),
        ("context", LIMITS.max_context_chars, "--max-context-chars"),
    ],
)
def test_question_and_context_over_their_limits(name: str, limit: int, setting: str) -> None:
    # characters, not bytes: "é" is two bytes in UTF-8
    assert parse(question_bytes(**{name: "é" * limit}))
    error = rejection(question_bytes(**{name: "é" * (limit + 1)}))
    assert error.code == f"{name}_too_large"
    assert f"{limit + 1:,} characters" in error.message
    assert f"limit of {limit:,}" in error.message
    assert setting in error.message


# --- answer events

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


# --- dead-letter events


def make_dead_letter(value: bytes | None, code: str = "invalid_json") -> dict[str, Any]:
    return dead_letter_event(value, "questions", 3, 1234, code, "broken", "0.1.0", NOW)


def test_dead_letter_of_text() -> None:
    dead_letter = make_dead_letter(b'{"id": "q7", "question": "caf\xc3\xa9"')
    assert_fits("dead-letter", dead_letter)
    assert dead_letter == {
        "payload": '{"id": "q7", "question": "caf\u00e9"',
        "payload_encoding": "utf-8",
        "source": {"topic": "questions", "partition": 3, "offset": 1234},
        "error": {"code": "invalid_json", "message": "broken"},
        "failed_at": "2024-05-01T12:00:01.250Z",
        "worker_version": "0.1.0",
    }


def test_dead_letter_of_bytes_that_are_not_utf8() -> None:
    value = b'{"id": "q7", "question": "caf\xe9"}'
    dead_letter = make_dead_letter(value, "invalid_utf8")
    assert_fits("dead-letter", dead_letter)
    assert dead_letter["payload_encoding"] == "base64"
    assert base64.b64decode(dead_letter["payload"]) == value
    assert "id" not in dead_letter


def test_dead_letter_of_no_value() -> None:
    dead_letter = make_dead_letter(None)
    assert_fits("dead-letter", dead_letter)
    assert (dead_letter["payload"], dead_letter["payload_encoding"]) == ("", "utf-8")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (question_bytes(id="q9", top_k=0), "q9"),
        (b'{"id": "q9", "x": NaN}', "q9"),
        (b'{"id": 9}', None),
        (b'{"id": ""}', None),
        (b'{"id": "\\ud800"}', None),
        (b'["q9"]', None),
        (b'{"id": "q9"', None),
        (b"[" * 100_000, None),
    ],
)
def test_dead_letter_keeps_a_readable_id(value: bytes, expected: str | None) -> None:
    dead_letter = make_dead_letter(value)
    assert_fits("dead-letter", dead_letter)
    assert dead_letter.get("id") == expected
    to_bytes(dead_letter)


def test_dead_letter_from_a_rejection_round_trips() -> None:
    value = question_bytes(top_k="3")
    error = rejection(value)
    data = to_bytes(dead_letter_event(value, "q", 0, 0, error.code, error.message, "0.1.0", NOW))
    dead_letter = json.loads(data)
    assert dead_letter["error"] == {"code": "invalid_event", "message": error.message}
    assert dead_letter["payload"].encode() == value and dead_letter["id"] == "q1"


# --- properties: the schema and the code agree

PROPERTY_LIMITS = InputLimits(max_question_chars=30, max_context_chars=60)
PROPERTY_DEADLINE = 45_000

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def sometimes(
    rare: st.SearchStrategy[Any], usual: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """`rare` one time in four, so most generated events stay valid or nearly."""
    return st.sampled_from([usual, usual, usual, rare]).flatmap(lambda chosen: chosen)


def near(low: int, high: int) -> st.SearchStrategy[Any]:
    """Integers in a range, also as integral floats; sometimes just outside it."""
    integers = st.integers(low, high)
    return sometimes(
        st.sampled_from([low - 1, high + 1, low + 0.5]), integers | integers.map(float)
    )


# Only valid RFC 3339 strings: the schema leaves the format to the code (tested above).
created_at_strings = st.builds(
    lambda instant, offset, timespec, zulu: (
        instant.replace(tzinfo=timezone(timedelta(minutes=offset)))
        .isoformat(timespec=timespec)
        .replace("+00:00", "Z" if zulu else "+00:00")
    ),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
    st.sampled_from(["seconds", "milliseconds", "microseconds"]),
    st.booleans(),
)

# Each field's values, mostly valid; the code-only checks (blank question, the limits of
# PROPERTY_LIMITS) and the schema's edges come up now and then.
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": sometimes(st.just(""), st.text(min_size=1, max_size=5)),
    "question": sometimes(
        st.sampled_from(["", " ", "\t\n", "\u2003"]) | st.text(min_size=25, max_size=35),
        st.text(min_size=1, max_size=20),
    ),
    "context": sometimes(
        st.just("") | st.text(min_size=55, max_size=65), st.text(min_size=1, max_size=40)
    ),
    "top_k": near(1, 20),
    "max_answer_len": near(1, 512),
    "handle_impossible_answer": st.booleans(),
    "null_threshold": st.floats(-1, 1) | near(-1, 1),
    "metadata": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    "created_at": created_at_strings,
    "deadline_ms": near(1, 10**12),
}
REQUIRED = VALIDATORS["question"].schema["required"]


def with_faults(
    fields: dict[str, Any], replaced: dict[str, Any], removed: set[str], extra: dict[str, Any]
) -> dict[str, Any]:
    # Any string passes the schema's created_at, so a replacement string is no schema fault.
    faults = {
        name: value
        for name, value in replaced.items()
        if not (name == "created_at" and isinstance(value, str))
    }
    document = extra | fields | faults
    return {name: value for name, value in document.items() if name not in removed}


documents = st.builds(
    with_faults,
    st.fixed_dictionaries(
        {name: FIELDS[name] for name in REQUIRED},
        optional={name: field for name, field in FIELDS.items() if name not in REQUIRED},
    ),
    sometimes(
        st.dictionaries(st.sampled_from(list(FIELDS)), json_values, min_size=1, max_size=2),
        st.just({}),
    ),
    sometimes(st.sets(st.sampled_from(REQUIRED), min_size=1, max_size=1), st.just(set())),
    st.dictionaries(st.text(max_size=8), json_values, max_size=2),
)


def invisible(text: str) -> bool:
    return all(
        char.isspace() or unicodedata.category(char) in {"Cc", "Cf", "Zs", "Zl", "Zp"}
        for char in text
    )


def expected_code(document: Any) -> str | None:
    """What parse_question should say, from jsonschema plus the code-only checks in order."""
    if not VALIDATORS["question"].is_valid(document):
        return "invalid_event"
    if invisible(document["question"]):
        return "empty_question"
    if len(document["question"]) > PROPERTY_LIMITS.max_question_chars:
        return "question_too_large"
    if invisible(document["context"]):
        return "empty_context"
    if len(document["context"]) > PROPERTY_LIMITS.max_context_chars:
        return "context_too_large"
    return None


def expected_event(document: dict[str, Any]) -> QuestionEvent:
    converters = {"integer": int, "number": float, "boolean": bool}
    overrides = {
        name: converters[QUESTION_PROPERTIES[name]["type"]](document[name])
        for name in OPTION_FIELDS
        if name in document
    }
    if "created_at" in document:
        event_time = epoch_ms(datetime.fromisoformat(document["created_at"]))
    else:
        event_time = KAFKA_TIME
    return QuestionEvent(
        id=document["id"],
        question=document["question"],
        context=document["context"],
        options=dataclasses.replace(DEFAULTS, **overrides),
        metadata=document.get("metadata"),
        event_time_ms=event_time,
        deadline_ms=event_time + int(document.get("deadline_ms", PROPERTY_DEADLINE)),
    )


@settings(max_examples=600, deadline=None)
@given(document=sometimes(json_values, documents), ascii_only=st.booleans())
def test_parse_accepts_exactly_what_the_schema_and_code_checks_allow(
    document: Any, ascii_only: bool
) -> None:
    value = json.dumps(document, ensure_ascii=ascii_only).encode()
    expected = expected_code(document)
    try:
        event = parse_question(value, KAFKA_TIME, DEFAULTS, PROPERTY_LIMITS, PROPERTY_DEADLINE)
    except EventError as error:
        assert error.code == expected, error.message
        if expected == "invalid_event":
            for problem in VALIDATORS["question"].iter_errors(document):
                if problem.validator == "required":
                    named = [name for name in problem.validator_value if name not in document]
                else:
                    named = list(problem.path)[:1] or ["JSON object"]
                assert all(str(name) in error.message for name in named), error.message
        return
    assert expected is None
    # repr tells 3 from 3.0, which == does not
    assert repr(event) == repr(expected_event(document))


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


@settings(max_examples=200, deadline=None)
@given(
    value=st.none()
    | st.binary(max_size=40)
    | json_values.map(lambda value: json.dumps(value).encode())
    | st.fixed_dictionaries({"id": json_values}).map(lambda value: json.dumps(value).encode()),
    now=st.integers(0, 253_402_300_799_999),
)
def test_every_dead_letter_fits_its_schema_and_keeps_the_payload(
    value: bytes | None, now: int
) -> None:
    dead_letter = dead_letter_event(value, "questions", 0, 0, "invalid_json", "x", "0.1.0", now)
    assert_fits("dead-letter", dead_letter)
    assert json.loads(to_bytes(dead_letter)) == dead_letter
    if dead_letter["payload_encoding"] == "base64":
        assert base64.b64decode(dead_letter["payload"]) == value
    else:
        assert dead_letter["payload"].encode() == (value or b"")
    assert datetime.fromisoformat(dead_letter["failed_at"]) == EPOCH + timedelta(milliseconds=now)


def failed_letter(value: bytes) -> dict[str, Any]:
    return dead_letter_event(
        value, "questions", 3, 77, ErrorCode.CONTEXT_TOO_LARGE, "too big", "1.0", NOW
    )


@pytest.mark.parametrize(
    ("value", "grows_by"),
    [
        # One byte of payload is one encoded byte, two bytes (JSON escaping), and base64.
        (question_bytes(context="a" * 5_000), 1),
        (question_bytes(context='"' * 2_500), 2),
        (b"\xff" + b"\x00" * 4_000, 4 / 3),
    ],
    ids=["plain", "escaped", "base64"],
)
def test_a_dead_letter_fits_the_limit_at_under_and_over(value: bytes, grows_by: float) -> None:
    letter = failed_letter(value)
    whole = to_bytes(letter)
    # At the limit and above it the record goes out whole.
    for limit in (len(whole), len(whole) + 1):
        assert dead_letter_bytes(letter, limit) == whole
    # Just under it, and far under it, the payload is cut to fit and says so.
    for limit in (len(whole) - 1, len(whole) // 2, 600):
        fitted = dead_letter_bytes(letter, limit)
        assert len(fitted) <= limit
        record = json.loads(fitted)
        VALIDATORS["dead-letter"].validate(record)
        assert record["payload_truncated"] is True
        assert record["payload_size"] == len(value)
        assert record["source"] == {"topic": "questions", "partition": 3, "offset": 77}
        assert letter["payload"].startswith(record["payload"])
        # Cut no more than one step of the encoding short of the limit.
        assert len(fitted) > limit - 4 * grows_by - 1
        if letter["payload_encoding"] == "base64":
            assert value.startswith(base64.b64decode(record["payload"]))


def test_a_dead_letter_whose_id_alone_is_too_large_drops_the_id() -> None:
    letter = failed_letter(question_bytes(id="i" * 3_000, context="c" * 3_000))
    assert letter["id"] == "i" * 3_000
    record = json.loads(dead_letter_bytes(letter, 1_000))
    assert "id" not in record and record["payload_truncated"] is True
    VALIDATORS["dead-letter"].validate(record)


# --- the per-event fast paths agree with the oracles

DOCUMENT_VALIDATOR = Draft202012Validator(
    json.loads((ROOT / "schemas" / "document.schema.json").read_text())
)
document_events = st.fixed_dictionaries(
    {"id": FIELDS["id"], "text": FIELDS["context"]},
    optional={
        "question_set": sometimes(st.just(""), st.text(min_size=1, max_size=5)),
        "metadata": FIELDS["metadata"],
        "created_at": created_at_strings,
    },
)


@settings(max_examples=600, deadline=None)
@given(
    question=sometimes(json_values, documents),
    document=sometimes(json_values, document_events),
)
def test_the_compiled_contracts_accept_exactly_what_jsonschema_accepts(
    question: Any, document: Any
) -> None:
    assert QUESTION.accepts(question) == VALIDATORS["question"].is_valid(question)
    assert DOCUMENT.accepts(document) == DOCUMENT_VALIDATOR.is_valid(document)


def test_a_schema_keyword_the_compiled_check_may_read_otherwise_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema = VALIDATORS["question"].schema
    patched = {
        **schema,
        "properties": {**schema["properties"], "id": {"type": "string", "pattern": "x"}},
    }
    monkeypatch.setattr(codec, "load_schema", lambda name: patched)
    with pytest.raises(ValueError, match="pattern"):
        Contract("question", "question event")


def stdlib_decoded(value: bytes) -> tuple[str, Any]:
    """What the standard library's reading makes of `value`: the document, or the error."""
    try:
        return "document", repr(codec._decode_exactly(value))
    except EventError as error:
        return error.code, error.message


def fast_decoded(value: bytes) -> tuple[str, Any]:
    try:
        return "document", repr(decode_json(value))
    except EventError as error:
        return error.code, error.message


json_texts = st.builds(
    lambda value, ascii_only: json.dumps(value, ensure_ascii=ascii_only).encode(),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(10**30), 10**30)
        | st.integers(-(2**64), 2**64)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    ),
    st.booleans(),
)
# Bytes that are JSON now and then, nearly JSON often: spliced, cut or with a strange token.
near_json = st.one_of(
    json_texts,
    st.builds(lambda text, cut: text[:cut], json_texts, st.integers(0, 40)),
    st.builds(
        lambda text, at, token: text[:at] + token + text[at:],
        json_texts,
        st.integers(0, 40),
        st.sampled_from(
            [
                b"NaN",
                b"-Infinity",
                b"1e400",
                b'"\\ud800"',
                b"\xff",
                b"\xed\xa0\x80",
                b",",
                b"01",
                b"\xef\xbb\xbf",
                b"9" * 25,
                b"\x01",
                b'"\\ud83d\\ude00"',
                b" ",
                b"[" * 1100,
            ]
        ),
    ),
    st.binary(max_size=20),
)


@settings(max_examples=1500, deadline=None)
@given(value=near_json)
def test_fast_decoding_reads_and_refuses_exactly_as_the_standard_library(value: bytes) -> None:
    assert fast_decoded(value) == stdlib_decoded(value)


@pytest.mark.parametrize(
    "value",
    [
        b'{"big": 123456789012345678901234567890}',
        b'{"big": 18446744073709551616, "f": 0.5}',
        b'{"edge": [9223372036854775807, -9223372036854775808, 18446744073709551615, 1.5]}',
        b'{"x": "\\ud83d\\ude00", "y": 1e308, "z": -0.0}',
        b"[" * 1100 + b"]" * 1100,
    ],
)
def test_values_orjson_reads_otherwise_decode_as_the_standard_library_does(value: bytes) -> None:
    assert fast_decoded(value) == stdlib_decoded(value)


@pytest.mark.parametrize("name", ["question", "context"])
@pytest.mark.parametrize("text", ["é", "\U0001f600", "a"])
@pytest.mark.parametrize("ascii_only", [True, False])
def test_limits_count_characters_at_under_and_over_whatever_the_encoding(
    name: str, text: str, ascii_only: bool
) -> None:
    limit = {"question": LIMITS.max_question_chars, "context": LIMITS.max_context_chars}[name]
    for length in (limit - 1, limit, limit + 1):
        document = json.loads(question_bytes(**{name: text * length}))
        value = json.dumps(document, ensure_ascii=ascii_only).encode()
        if length > limit:
            assert rejection(value).code == f"{name}_too_large"
        else:
            assert len(getattr(parse(value), name)) == length


@pytest.mark.parametrize("kind", ["object", "array"])
@pytest.mark.parametrize("limit", [1, 2, 64, 500])
def test_nesting_is_read_up_to_the_depth_limit_and_refused_past_it(kind: str, limit: int) -> None:
    def nested(depth: int) -> bytes:
        # `depth` levels: the question is the outermost object, metadata the rest.
        inner: Any = "leaf"
        for _ in range(depth - 2):
            inner = {"m": inner} if kind == "object" else [inner]
        metadata = {"m": inner} if depth >= 2 else None
        fields = {"id": "q", "question": "?", "context": "c"}
        return json.dumps({**fields, "metadata": metadata} if metadata else fields).encode()

    limits = InputLimits(100, 1000, max_json_depth=limit)
    # At the limit (an object of depth 1 holds no metadata) and just past it.
    if limit >= 2:
        assert parse_question(nested(limit), 0, QAOptions(), limits).id == "q"
    with pytest.raises(EventError) as caught:
        parse_question(nested(max(limit + 1, 2)), 0, QAOptions(), limits)
    assert caught.value.code is ErrorCode.INVALID_EVENT
    assert f"more than {limit} levels" in caught.value.message
    assert "--max-json-depth" in caught.value.message


@pytest.mark.parametrize(
    "value",
    [
        b"[" * 200_000,
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
        b'["' + b"[" * 10_000 + b'"]',
        b"[1e999" + b"," + b"[" * 3_000,
    ],
    ids=["open-brackets", "objects-past-orjson", "brackets-in-a-string", "fallback-path"],
)
def test_deep_values_never_reach_a_recursive_decoder(value: bytes) -> None:
    # Python's own recursion limit stays: a recursive walk would raise RecursionError here.
    try:
        document = decode_json(value)
    except EventError as error:
        assert error.code in (ErrorCode.INVALID_EVENT, ErrorCode.INVALID_JSON), error
    else:
        assert document == ["[" * 10_000]


@given(st.integers(0, 3_000), st.sampled_from(["[", "{"]))
@settings(max_examples=100, deadline=None)
def test_the_bracket_scan_agrees_with_a_decoder_on_depth(depth: int, opener: str) -> None:
    text = ("[" * depth + "]" * depth) if opener == "[" else ('{"a":' * depth + "1" + "}" * depth)
    assert codec.nesting_exceeds(text.encode(), 64) == (depth > 64)


def values_in(document: Any) -> int:
    """The values of a decoded document, counted by walking it: what the byte count must say."""
    count = 0
    pending = [document]
    while pending:
        node = pending.pop()
        count += 1
        if isinstance(node, dict):
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return count


# Metadata each test event holds, padded with zeros to the number of values wanted.
VALUE_SHAPES: dict[str, Any] = {
    "array": [0, 1.5, -2e30, "x", True, False, None],
    "object": {"a": 0, "b": "x", "c": None, "d": True},
    "nested": {"a": [{"b": [1, [2, {"c": None}]]}], "d": {"e": {"f": [True, False]}}},
    "empty-containers": [[], {}, [[]], {"a": {}}, [{}], {"b": []}, [[], {}]],
    "strings-like-json": [
        "a,b",
        "[1, 2]",
        '{"x": [1, {}]}',
        'a "quote", ] [',
        "\\",
        '\\"[,',
        "}{,][",
    ],
    "keys-like-json": {"a,b": 1, "[{": 2, '"x,"': 3, "\\": {"[]": [], "{}": {}}},
    # Many more commas and brackets in a string than the limit: only the exact count passes it.
    "commas-in-a-long-string": {"csv": "a,b,[c]{d}" * 5_000},
}


def event_holding(values: int, shape: Any, indent: int | None) -> bytes:
    """A question event of exactly `values` values: `shape` in its metadata, padded with 0s."""
    document: dict[str, Any] = {"id": "q", "question": "?", "context": "c"}
    document["metadata"] = {"shape": shape, "pad": []}
    document["metadata"]["pad"] = [0] * (values - values_in(document))
    assert values_in(document) == values
    return json.dumps(document, indent=indent).encode()


def refused_for_values(decode: Any, value: bytes) -> EventError:
    """The INVALID_EVENT error `decode(value)` raises."""
    with pytest.raises(EventError) as caught:
        decode(value)
    assert caught.value.code is ErrorCode.INVALID_EVENT
    return caught.value


@pytest.mark.parametrize("indent", [None, 2], ids=["compact", "indented"])
@pytest.mark.parametrize("shape", VALUE_SHAPES.values(), ids=list(VALUE_SHAPES))
@pytest.mark.parametrize("limit", [40, 10_000])
def test_values_are_read_up_to_the_value_limit_and_refused_past_it(
    limit: int, shape: Any, indent: int | None
) -> None:
    limits = InputLimits(100, 1000, max_json_values=limit)
    for values in (limit - 1, limit):
        value = event_holding(values, shape, indent)
        assert (
            parse_question(value, 0, QAOptions(), limits).metadata == json.loads(value)["metadata"]
        )
        assert codec._decode_exactly(value, max_values=limit) == json.loads(value)
    over = event_holding(limit + 1, shape, indent)
    # Both decoding paths and the question parser refuse it alike, naming count, limit, setting.
    refusals = [
        refused_for_values(lambda value: parse_question(value, 0, QAOptions(), limits), over),
        refused_for_values(lambda value: decode_json(value, max_values=limit), over),
        refused_for_values(lambda value: codec._decode_exactly(value, max_values=limit), over),
    ]
    assert {error.message for error in refusals} == {
        f"the value holds {limit + 1} JSON values, over the limit of {limit} "
        "(--max-json-values / QA_MAX_JSON_VALUES); send fewer (a smaller metadata, say), or "
        "raise the limit"
    }


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("1", 1),
        ('""', 1),
        ("[]", 1),
        ("{}", 1),
        ("[[]]", 2),
        ("[{}, []]", 3),
        (" [ 1 , [ ] , { \n } ] ", 4),
        ('{"a": {}}', 2),
        ('{"a": [1, {"b": null}], "c": "d"}', 6),
        ('["a,b", "[", "{", "\\"", "\\\\", "\\\\\\"[,"]', 7),
        ('{"[,{": "\\"[,{\\\\", "k\\\\": ["\\\\"]}', 4),
        ("[true, false, null, -1.5e3, 0]", 6),
    ],
)
def test_values_count_every_value_but_no_key_nor_byte_within_a_string(
    text: str, values: int
) -> None:
    value = text.encode()
    assert values_in(json.loads(value)) == values
    assert codec.count_json_values(value) == values
    assert decode_json(value, max_values=values) == json.loads(value)
    if values > 1:
        error = refused_for_values(lambda v: decode_json(v, max_values=values - 1), value)
        assert f"holds {values} JSON values, over the limit of {values - 1} " in error.message


json_keys_and_strings = st.text(
    st.sampled_from('",[]{}\\:/ \t\n') | st.characters(blacklist_categories=("Cs",)), max_size=8
)
json_documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_keys_and_strings,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(json_keys_and_strings, inner, max_size=5)
    ),
    max_leaves=40,
)


def loosely(document: Any) -> str:
    """`document` as JSON with whitespace around every token, inside empty containers too
    (which json.dumps never writes)."""
    if isinstance(document, list):
        return "[ " + " , ".join(loosely(item) for item in document) + "\n]"
    if isinstance(document, dict):
        members = (f"{json.dumps(key)} : {loosely(item)}" for key, item in document.items())
        return "{\t" + " ,\r\n".join(members) + " }"
    return json.dumps(document)


@settings(max_examples=500, deadline=None)
@given(
    document=json_documents,
    indent=st.sampled_from([None, 0, 2, "\t"]),
    ascii_only=st.booleans(),
)
def test_the_byte_count_of_any_document_is_the_number_of_its_values(
    document: Any, indent: int | str | None, ascii_only: bool
) -> None:
    expected = values_in(document)
    spaced = json.dumps(document, indent=indent, ensure_ascii=ascii_only).encode()
    compact = json.dumps(document, separators=(",", ":"), ensure_ascii=ascii_only).encode()
    for value in (spaced, compact, loosely(document).encode()):
        assert codec.count_json_values(value) == expected
        # The quick bound never says less, so an event it passes is within the limit.
        assert value.count(b",") + value.count(b"[") + value.count(b"{") + 1 >= expected
        assert codec.json_values_over(value, expected) is None
        assert codec.json_values_over(value, expected - 1) == expected


def test_refusing_an_event_of_too_many_values_builds_none_of_them() -> None:
    # 870 kB of empty objects in metadata: 290,006 values, each a Python object once decoded.
    value = (
        b'{"id":"q","question":"q","context":"c","metadata":{"a":['
        + b",".join([b"{}"] * 290_000)
        + b"]}}"
    )
    tracemalloc.start()
    try:
        document = decode_json(value, max_values=1_000_000)
        decoding = tracemalloc.get_traced_memory()[1]
        del document
        tracemalloc.reset_peak()
        error = refused_for_values(decode_json, value)
        refusing = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        dead_letter = dead_letter_event(value, "q", 0, 0, error.code, error.message, "0.1.0", NOW)
        dead_lettering = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "holds 290006 JSON values, over the limit of 10000" in error.message
    # Decoding takes some 30 MB; counting, a few copies of the 870 kB, and the dead letter the
    # payload's text besides (its id is not read: that would decode it).
    assert refusing < decoding / 10, (refusing, decoding)
    assert dead_lettering < decoding / 8, (dead_lettering, decoding)
    assert "id" not in dead_letter


LARGEST_EXACT_JSON_INTEGER = 2**53 - 1


@pytest.mark.parametrize(
    "deadline",
    [
        LARGEST_EXACT_JSON_INTEGER - 1,
        LARGEST_EXACT_JSON_INTEGER,
        LARGEST_EXACT_JSON_INTEGER + 1,
        10**400,
    ],
    ids=["just-under", "at", "just-over", "400-digits"],
)
def test_deadline_ms_up_to_the_largest_exact_json_integer(deadline: int) -> None:
    if deadline <= LARGEST_EXACT_JSON_INTEGER:
        assert parse(question_bytes(deadline_ms=deadline)).deadline_ms == KAFKA_TIME + deadline
        return
    error = rejection(question_bytes(deadline_ms=deadline))
    assert error.code == ErrorCode.INVALID_EVENT
    assert error.message.startswith(
        f'"deadline_ms" must be an integer from 1 to {LARGEST_EXACT_JSON_INTEGER}'
    )
