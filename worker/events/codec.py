"""The bounded JSON codec: message values decoded within limits, records encoded compactly.

A value is decoded only when it nests no deeper than `max_json_depth` and holds at most
`max_json_values` values, and only into JSON that every consumer reads alike (finite numbers, no
unpaired surrogates); anything else is an EventError saying what is wrong.

The number of values is checked on the bytes before any decoder runs (a count of commas and
brackets, and when that bound is over the limit an exact count that tells strings apart by the
parity of their quotes), in a few passes in C whatever the number of values: an event refused for
holding too many costs no Python object per value, and every walk over a decoded value is bounded
by the limit.

Nothing here recurses on an event's structure: the depth limit is checked before any recursive
decoder sees a value (a bracket scan that skips strings, or an iterative walk of what orjson,
whose own limit is 1,024 levels, decoded), and every walk over a decoded value is a loop, so a
deep value is an `invalid_event` dead letter and never a RecursionError.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

import orjson

from ..config import Settings
from ..config import describe as describe_setting
from ..errors import ErrorCode, EventError

DEFAULT_MAX_JSON_DEPTH: int = Settings.max_json_depth
DEFAULT_MAX_JSON_VALUES: int = Settings.max_json_values
SHOWN_CHARS = 40
"""The characters of a string that a refusal quotes; `shown` cuts the rest."""

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encodable_text(text: str) -> str:
    """`text` with any unpaired surrogate escaped (as \\udxxx), so it encodes as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def to_bytes(event: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; raises ValueError on a NaN or infinity, which JSON cannot carry."""
    return _ENCODER.encode(event).encode("utf-8")


def string_bytes(text: str) -> int:
    """How many bytes `text` takes in `to_bytes`'s output as a JSON string, quotes left out."""
    return len(_ENCODER.encode(text).encode("utf-8")) - 2


def _not_usable(problem: str) -> EventError:
    return EventError(ErrorCode.INVALID_JSON, f"the value is not usable JSON: {problem}")


# The decoder's hooks raise the refusal itself: the decoder lets it through unchanged, and it is
# no ValueError, so nothing that catches the decoder's own errors can take it for one of them.
def _reject_constant(name: str) -> Any:
    raise _not_usable(f"{name} is not a JSON number; send finite numbers only")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise _not_usable(f"the number {text[:SHOWN_CHARS]} is too large for a 64-bit float")
    return number


# Non-finite numbers would pass range checks (NaN compares false) and make answers invalid JSON.
_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_reject_constant)


# orjson refuses all the standard library refuses here (and NaN, infinities, unpaired surrogates,
# invalid UTF-8 and a byte order mark), and reads the rest alike, except that it reads integers
# past 64 bits as floats. A value orjson refuses, and one where a float may have been such an
# integer, is read again by the standard library, whose errors say what is wrong.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def decode_json(
    value: bytes | None,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
    max_values: int = DEFAULT_MAX_JSON_VALUES,
) -> Any:
    """The JSON document in a message value, or EventError saying why it is none.

    A document nesting arrays and objects more than `max_depth` levels deep (`{}` is one level,
    `{"a": []}` two), or holding more than `max_values` values (`count_json_values`), is refused
    with INVALID_EVENT; the number of values before anything is decoded.
    """
    if value:
        _check_value_count(value, max_values)
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError:
            pass
        else:
            depth, has_float = _depth_and_floats(document, max_depth, max_values)
            if depth > max_depth:
                raise _too_deep(max_depth)
            # Searching the value costs more than the decoding: only when a float came out.
            if not has_float or _LONG_DIGITS.search(value) is None:
                return document
    return _decode_with_standard_library(value, max_depth)


def _too_deep(max_depth: int) -> EventError:
    return EventError(
        ErrorCode.INVALID_EVENT,
        f"the value nests arrays or objects more than {max_depth} levels deep, over the limit "
        f"of {max_depth} ({describe_setting('max_json_depth')}); flatten it, or raise the limit",
    )


def _too_many_values(max_values: int, count: int | None = None) -> EventError:
    held = f"more than {max_values}" if count is None else str(count)
    return EventError(
        ErrorCode.INVALID_EVENT,
        f"the value holds {held} JSON values, over the limit of {max_values} "
        f"({describe_setting('max_json_values')}); send fewer (a smaller metadata, say), or "
        "raise the limit",
    )


def _depth_and_floats(document: Any, max_depth: int, max_values: int) -> tuple[int, bool]:
    """How deep `document` nests (stopping once past `max_depth`) and whether it holds a float;
    a loop with its own stack, so no depth can exhaust Python's."""
    deepest = 0
    has_float = False
    values = 1
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        node, depth = pending.pop()
        kind = type(node)
        if kind is float:
            has_float = True
        elif kind is dict or kind is list:
            deepest = max(deepest, depth)
            if depth > max_depth:
                return deepest, has_float
            # The bytes were counted before decoding, exactly for all orjson reads, so this never
            # trips; it bounds the walk by the limit all the same, counting before visiting.
            values += len(node)
            if values > max_values:
                raise _too_many_values(max_values)
            items = node.values() if kind is dict else node
            pending.extend((item, depth + 1) for item in items)
    return deepest, has_float


def _bit_table(members: bytes) -> bytes:
    """A `bytes.translate` table writing b"1" for each byte in `members`, b"0" for the rest."""
    return bytes(0x31 if byte in members else 0x30 for byte in range(256))


_QUOTE_BITS = _bit_table(b'"')
_COMMA_OR_OPENING_BITS = _bit_table(b",[{")
_JSON_WHITESPACE = b" \t\n\r"


def _bits(text: bytes, table: bytes) -> int:
    """An integer with one bit per byte of `text`, set where `table` writes b"1"; the first
    byte is the highest bit."""
    return int(text.translate(table), 2) if text else 0


def count_json_values(value: bytes) -> int:
    """How many values the JSON text `value` holds: each object, array, string, number, true,
    false and null counts one, object keys do not. Exact for valid JSON, and some number for
    anything else.

    Read from the bytes alone, in passes that run in C: a fixed number of them over the bytes,
    and one per doubling of their length over an integer of a bit per byte. Neither the time nor
    the memory (about twice the bytes) grows with the number of values, so counting an event
    that would decode to millions of objects builds none of them.
    """
    # Every value but the outermost is an array's element or an object member's value, and each
    # past a container's first follows a comma: the values are 1, plus the commas, plus the arrays
    # and objects that are not empty, counting only bytes outside strings.
    #
    # A backslash in a string escapes the byte after it: dropping escaped backslashes, then
    # escaped quotes, leaves only the quotes that open and close strings. Outside strings, an
    # empty array or object is two adjacent bytes once whitespace is gone, and writing it as a
    # number drops it from the containers counted. (Inside strings all this changes only bytes
    # that are not quotes, and no byte inside a string is counted.)
    text = value.replace(b"\\\\", b"").replace(b'\\"', b"")
    text = text.translate(None, _JSON_WHITESPACE).replace(b"[]", b"0").replace(b"{}", b"0")
    # The parity of the quotes up to each byte, a doubling shift at a time: 1 from a string's
    # opening quote to the byte before its closing one, 0 outside strings.
    inside = _bits(text, _QUOTE_BITS)
    shift = 1
    while shift < len(text):
        inside ^= inside >> shift
        shift *= 2
    return 1 + (_bits(text, _COMMA_OR_OPENING_BITS) & ~inside).bit_count()


def json_values_over(value: bytes, max_values: int) -> int | None:
    """How many values the JSON text `value` holds (`count_json_values`) when that is more than
    `max_values`; None when it is not."""
    # 1 plus every comma and opening bracket, in strings or not, bounds the count from above;
    # counting three bytes settles nearly every event without the exact count.
    if value.count(b",") + value.count(b"[") + value.count(b"{") < max_values:
        return None
    count = count_json_values(value)
    return count if count > max_values else None


def _check_value_count(value: bytes, max_values: int) -> None:
    count = json_values_over(value, max_values)
    if count is not None:
        raise _too_many_values(max_values, count)


# A JSON string (escapes skipped whole) or one bracket: what the nesting scan looks at.
_STRING_OR_BRACKET = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


def nesting_exceeds(value: bytes, max_depth: int) -> bool:
    """Whether the brackets outside strings in `value` open more than `max_depth` levels at some
    point; looks only at bytes, so it is safe before a recursive decoder reads `value`."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(value):
        token = match[0]
        if token in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def _decode_exactly(
    value: bytes | None,
    max_depth: int = DEFAULT_MAX_JSON_DEPTH,
    max_values: int = DEFAULT_MAX_JSON_VALUES,
) -> Any:
    """`decode_json` by the standard library alone: the same document, or the same refusal."""
    if value:
        _check_value_count(value, max_values)
    return _decode_with_standard_library(value, max_depth)


def _decode_with_standard_library(value: bytes | None, max_depth: int) -> Any:
    """`_decode_exactly` once the value's values are counted and within the limit."""
    if not value:
        raise EventError(
            ErrorCode.INVALID_JSON,
            "the message has no value; send a question event as a JSON object",
        )
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise EventError(
            ErrorCode.INVALID_UTF8,
            f"the value is not UTF-8 ({error.reason}: byte 0x{value[error.start]:02x} at offset "
            f"{error.start}); encode question events as UTF-8 JSON",
        ) from None
    if text.startswith("\ufeff"):
        raise EventError(
            ErrorCode.INVALID_JSON, "the value starts with a byte order mark; send JSON without one"
        )
    # The standard library's decoder recurses: the depth is known before it runs.
    if nesting_exceeds(value, max_depth):
        raise _too_deep(max_depth)
    try:
        document = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise EventError(
            ErrorCode.INVALID_JSON,
            f"the value is not JSON ({error.msg} at line {error.lineno} column {error.colno}); "
            "send a question event as a JSON object",
        ) from None
    except ValueError:  # the only other: an integer past Python's digit limit
        raise EventError(
            ErrorCode.INVALID_JSON,
            f"the value has an integer of more than {sys.get_int_max_str_digits()} digits; "
            "send numbers that fit a 64-bit float",
        ) from None
    except RecursionError:
        raise EventError(
            ErrorCode.INVALID_JSON, "the value nests arrays or objects too deeply to read"
        ) from None
    # An escaped lone surrogate ("\ud800") decodes to a string that cannot be encoded as UTF-8,
    # for the tokenizer or in the answer; only escapes can produce one, so look for them first.
    if ("\\ud" in text or "\\uD" in text) and not is_encodable(document):
        raise EventError(
            ErrorCode.INVALID_JSON,
            "the value has an unpaired UTF-16 surrogate escape (such as \\ud800); "
            "escape characters outside the Basic Multilingual Plane as surrogate pairs",
        )
    return document


def is_encodable(document: Any) -> bool:
    """Whether every string in `document` (keys too) encodes as UTF-8; a loop, not recursion."""
    pending = [document]
    while pending:
        node = pending.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(node, dict):
            pending.extend(node.keys())
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return True


def shown(value: Any) -> str:
    """`value` as a refusal quotes it: JSON, a long string cut short, a container by its kind."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str) and len(value) > SHOWN_CHARS:
        return json.dumps(value[:SHOWN_CHARS], ensure_ascii=False)[:-1] + '..."'
    return json.dumps(value, ensure_ascii=False)
