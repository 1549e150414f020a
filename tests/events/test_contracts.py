"""The incoming events' contracts (`worker.events.contracts`): the JSON Schemas, and question
and document events parsed and checked by them."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from tests.support.events import (
    DEFAULTS,
    EPOCH,
    KAFKA_TIME,
    LIMITS,
    OMIT,
    OPTION_FIELDS,
    QUESTION_PROPERTIES,
    ROOT,
    SCHEMA_NAMES,
    VALIDATORS,
    json_values,
    parse,
    question_bytes,
    rejection,
)
from worker.errors import ErrorCode, EventError
from worker.events import (
    DOCUMENT,
    QUESTION,
    Contract,
    InputLimits,
    QuestionEvent,
    contracts,
    load_schema,
    parse_question,
)
from worker.qa import QAOptions


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


# --- properties: the schema and the code agree


PROPERTY_LIMITS = InputLimits(max_question_chars=30, max_context_chars=60)


PROPERTY_DEADLINE = 45_000


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


# --- the compiled contracts agree with jsonschema


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
    monkeypatch.setattr(contracts, "load_schema", lambda name: patched)
    with pytest.raises(ValueError, match="pattern"):
        Contract("question", "question event")


# --- limits


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
