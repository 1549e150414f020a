"""The bounded JSON codec (`worker.events.codec`): decoding within the depth and value limits,
exactly as the standard library reads, without recursion and without building what it refuses."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.events import NOW, small_json
from worker.errors import ErrorCode, EventError
from worker.events import InputLimits, codec, dead_letter_event, decode_json, parse_question
from worker.qa import QAOptions

# --- the fast path reads and refuses exactly as the standard library


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
    small_json(st.integers(-(10**30), 10**30) | st.integers(-(2**64), 2**64), max_leaves=8),
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


# --- nesting depth


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


# --- the number of values


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
