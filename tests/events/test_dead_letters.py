"""Dead letters (`worker.events.dead_letters`): built from any value, cut to fit a record, and
the minimal one that stands in when building one fails."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.events import (
    EPOCH,
    NOW,
    VALIDATORS,
    assert_fits,
    json_values,
    question_bytes,
    rejection,
)
from worker.errors import ErrorCode
from worker.events import (
    dead_letter_bytes,
    dead_letter_event,
    encodable_text,
    minimal_dead_letter,
    shortest_dead_letter,
    to_bytes,
)


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


# --- cut to fit a record


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


# --- the minimal dead letter, for when building the full one fails


def minimal(
    topic: str = "questions",
    partition: int = 3,
    offset: int = 77,
    reason: str = "too big",
    failure: BaseException | None = None,
    **envelope: int,
) -> dict[str, Any]:
    return minimal_dead_letter(
        topic,
        partition,
        offset,
        ErrorCode.CONTEXT_TOO_LARGE,
        reason,
        KeyError("x") if failure is None else failure,
        1_234,
        "1.0",
        NOW,
        **envelope,
    )


def test_a_minimal_dead_letter_is_little_but_numbers() -> None:
    letter = minimal(key_size=40, headers_dropped=2, headers_size=90)
    assert_fits("dead-letter", letter)
    # In this order: the order of a full dead letter, the envelope's description last.
    assert list(letter.items()) == [
        ("payload", ""),
        ("payload_encoding", "utf-8"),
        ("payload_truncated", True),
        ("payload_size", 1_234),
        ("source", {"topic": "questions", "partition": 3, "offset": 77}),
        (
            "error",
            {
                "code": "context_too_large",
                "message": "too big (its full dead letter could not be built: KeyError)",
            },
        ),
        ("failed_at", "2024-05-01T12:00:01.250Z"),
        ("worker_version", "1.0"),
        ("key_truncated", {"size": 40, "kept": 0}),
        ("headers_dropped", {"count": 2, "size": 90, "headers": []}),
    ]
    assert "key_truncated" not in minimal() and "headers_dropped" not in minimal()


def test_a_minimal_dead_letter_has_the_shape_of_the_shortest_full_one() -> None:
    value = question_bytes(id="q7")
    full = dead_letter_event(
        value, "questions", 3, 77, ErrorCode.CONTEXT_TOO_LARGE, "too big", "1.0", NOW
    )
    shortest = shortest_dead_letter(full)
    shortest.pop("error")
    letter = minimal_dead_letter(
        "questions", 3, 77, ErrorCode.CONTEXT_TOO_LARGE, "r", KeyError(), len(value), "1.0", NOW
    )
    letter.pop("error")
    # The same fields, in the same order, with the same values: all but the id and the reason.
    assert list(letter.items()) == list(shortest.items())


# Whatever a Python string may hold, lone surrogates included, and sometimes a lot of it.
any_character = st.characters(codec=None) | st.characters(categories=["Cs"])
any_text = st.text(any_character, max_size=300)
any_text_or_huge = any_text | st.builds(
    lambda text, times: text * times,
    st.text(any_character, min_size=1, max_size=4),
    st.integers(10_000, 300_000),
)
any_integer = st.integers() | st.sampled_from(
    [-1, 0, 2**31, 2**63 - 1, 2**63, 10**5000, -(10**5000)]
)
# Topic, reason and type name at their longest, in the characters that take the most bytes as
# JSON, and every number at its largest (the last test) come to under this.
MINIMAL_DEAD_LETTER_BYTES = 5_000


class LongNamedError(Exception):
    pass


LongNamedError.__qualname__ = "\ud800\x00" * 1_000


@settings(max_examples=300, deadline=None)
@given(
    topic=any_text_or_huge,
    partition=any_integer,
    offset=any_integer,
    reason=any_text_or_huge,
    failure=st.sampled_from([ValueError("x"), RecursionError(), LongNamedError()]),
    key_size=any_integer,
    headers_dropped=any_integer,
    headers_size=any_integer,
)
def test_a_minimal_dead_letter_fits_its_schema_and_a_few_kb_whatever_it_is_given(
    topic: str,
    partition: int,
    offset: int,
    reason: str,
    failure: BaseException,
    key_size: int,
    headers_dropped: int,
    headers_size: int,
) -> None:
    letter = minimal(
        topic,
        partition,
        offset,
        reason,
        failure,
        key_size=key_size,
        headers_dropped=headers_dropped,
        headers_size=headers_size,
    )
    assert_fits("dead-letter", letter)
    data = to_bytes(letter)
    assert len(data) <= MINIMAL_DEAD_LETTER_BYTES
    assert json.loads(data) == letter
    name = encodable_text(type(failure).__qualname__[:200])
    assert letter["error"]["message"].endswith(
        f" (its full dead letter could not be built: {name})"
    )


def test_a_minimal_dead_letter_at_its_largest_fits_a_few_kb() -> None:
    letter = minimal(
        "\x00" * 1_000,
        2**63,
        2**63,
        "\ud800" * 1_000,
        LongNamedError(),
        key_size=2**63,
        headers_dropped=2**63,
        headers_size=2**63,
    )
    assert_fits("dead-letter", letter)
    assert len(to_bytes(letter)) <= MINIMAL_DEAD_LETTER_BYTES
