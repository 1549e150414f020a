"""The event contracts in code: question events in, answer and dead-letter events out.

The JSON Schemas in `worker.schemas` (the repository's schemas/ folder) are the contracts. Types,
required fields and ranges of a question are checked by the schema alone, so code and schema
cannot drift; the code adds only what a schema cannot say: a question and a context with a
visible character, the worker's character limits, a `created_at` that is a real instant, JSON
nested no deeper than `max_json_depth` and holding at most `max_json_values` values, and JSON
that every consumer reads alike (finite numbers, no unpaired surrogates).

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

import base64
import dataclasses
import json
import math
import re
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from typing import Any

import fastjsonschema
import orjson
from jsonschema import Draft202012Validator

from ..config import Settings
from ..config import describe as describe_setting
from ..errors import ErrorCode, EventError
from ..qa.types import QAOptions, QAResult

SCHEMA_PACKAGE = "worker.schemas"


def load_schema(name: str) -> dict[str, Any]:
    """A schema (`question`, `answer`, `dead-letter`, `document`, `tags`) as shipped."""
    path = resources.files(SCHEMA_PACKAGE).joinpath(f"{name}.schema.json")
    return json.loads(path.read_text(encoding="utf-8"))


# The keywords the compiled validator reads as JSON Schema 2020-12 does: fastjsonschema knows
# drafts up to 7, which agree with 2020-12 on these (formats stay annotations in both).
COMPILED_KEYWORDS = frozenset(
    {
        "$schema",
        "$id",
        "title",
        "description",
        "type",
        "required",
        "properties",
        "additionalProperties",
        "minLength",
        "minimum",
        "maximum",
        "format",
    }
)


class Contract:
    """One event schema, compiled once, with messages that say which field is wrong and how."""

    def __init__(self, name: str, title: str) -> None:
        self.schema = load_schema(name)
        self.title = title
        self.properties: dict[str, dict[str, Any]] = self.schema["properties"]
        unsupported = _keywords(self.schema) - COMPILED_KEYWORDS
        if unsupported:
            raise ValueError(f"{name}.schema.json uses {sorted(unsupported)}, not compiled alike")
        # Compiled to Python once: jsonschema interprets the schema on every call, which cost
        # more than decoding the event. jsonschema stays the oracle for the (rare) explanation.
        self._accepts = fastjsonschema.compile(
            self.schema, use_default=False, use_formats=False, detailed_exceptions=False
        )
        self._validator = Draft202012Validator(self.schema)
        self._requirements = {field: _describe(spec) for field, spec in self.properties.items()}
        self._order = {field: index for index, field in enumerate(self.properties)}
        self._required = ", ".join(f'"{field}"' for field in self.schema["required"])

    def accepts(self, document: Any) -> bool:
        try:
            self._accepts(document)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    def validate(self, document: Any) -> None:
        if not self.accepts(document):
            raise EventError(ErrorCode.INVALID_EVENT, self.explain(document))

    def explain(self, document: Any) -> str:
        """Every violation, one per field, in schema order: '"top_k" must be ..., got ...'."""
        problems: dict[str, str] = {}
        for error in self._validator.iter_errors(document):
            if error.validator == "required":
                for field in error.validator_value:
                    if field not in document:
                        problems.setdefault(field, f'"{field}" is required')
            elif error.path:
                field = str(error.path[0])
                problems.setdefault(
                    field,
                    f'"{field}" must be {self._requirements[field]}, got {_shown(document[field])}',
                )
            else:
                problems.setdefault(
                    "",
                    f"a {self.title} must be {_describe(self.schema)} with {self._required}, "
                    f"got {_shown(document)}",
                )
        ordered = sorted(problems.items(), key=lambda item: self._order.get(item[0], -1))
        return "; ".join(message for _, message in ordered)


# Answering options an event may set: the schema's properties that are QAOptions fields,
# converted by schema type (JSON Schema counts 3.0 as an integer).
_CONVERTERS = {"integer": int, "number": float, "boolean": bool}
QUESTION_SCHEMA = load_schema("question")
OPTION_TYPES: dict[str, type] = {
    spec.name: _CONVERTERS[QUESTION_SCHEMA["properties"][spec.name]["type"]]
    for spec in dataclasses.fields(QAOptions)
    if spec.name in QUESTION_SCHEMA["properties"]
}
"""The answering options a question may set (also each field of a question set), by type."""

_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
# RFC 3339 section 5.6: T and Z may be lower case, a time zone is required, seconds may be 60.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:[Zz]|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
_SHOWN_CHARS = 40
DEFAULT_MAX_JSON_DEPTH: int = Settings.max_json_depth
DEFAULT_MAX_JSON_VALUES: int = Settings.max_json_values


@dataclass(frozen=True)
class InputLimits:
    max_question_chars: int
    max_context_chars: int
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    max_json_values: int = DEFAULT_MAX_JSON_VALUES


@dataclass(frozen=True)
class QuestionEvent:
    """A question event that passed every check, with its options resolved: ready to answer."""

    id: str
    question: str
    context: str
    options: QAOptions
    metadata: dict[str, Any] | None
    # Epoch milliseconds: `created_at` when given, else the Kafka message timestamp.
    event_time_ms: int
    # Epoch milliseconds by which the answer is due; None: no deadline.
    deadline_ms: int | None
    # Topic the answer goes to instead of the answers topic, when the caller asked for one.
    reply_to: str | None = None


def parse_question(
    value: bytes | None,
    kafka_timestamp_ms: int,
    defaults: QAOptions,
    limits: InputLimits,
    default_deadline_ms: int | None = None,
) -> QuestionEvent:
    """Reads one message value into a QuestionEvent, or raises EventError saying what to fix.

    `kafka_timestamp_ms` is the event time when the event has no `created_at`;
    `default_deadline_ms` (relative to the event time) applies when it has no `deadline_ms`.
    """
    document = decode_json(value, limits.max_json_depth, limits.max_json_values)
    QUESTION.validate(document)
    question: str = document["question"]
    _check_visible("question", question, ErrorCode.EMPTY_QUESTION)
    _check_size(
        "question",
        question,
        limits.max_question_chars,
        "max_question_chars",
        ErrorCode.QUESTION_TOO_LARGE,
    )
    context: str = document["context"]
    _check_visible("context", context, ErrorCode.EMPTY_CONTEXT)
    _check_size(
        "context",
        context,
        limits.max_context_chars,
        "max_context_chars",
        ErrorCode.CONTEXT_TOO_LARGE,
    )
    overrides = {
        name: convert(document[name]) for name, convert in OPTION_TYPES.items() if name in document
    }
    created_at = document.get("created_at")
    event_time_ms = kafka_timestamp_ms if created_at is None else _epoch_ms(created_at)
    relative_deadline = document.get("deadline_ms", default_deadline_ms)
    return QuestionEvent(
        id=document["id"],
        question=question,
        context=context,
        options=dataclasses.replace(defaults, **overrides) if overrides else defaults,
        metadata=document.get("metadata"),
        event_time_ms=event_time_ms,
        deadline_ms=None if relative_deadline is None else event_time_ms + int(relative_deadline),
        reply_to=document.get("reply_to"),
    )


@dataclass(frozen=True)
class DocumentEvent:
    """A document to tag, checked: its question set is still to be resolved by the caller."""

    id: str
    text: str
    question_set: str | None
    metadata: dict[str, Any] | None
    event_time_ms: int


def parse_document(
    value: bytes | None, kafka_timestamp_ms: int, limits: InputLimits
) -> DocumentEvent:
    """Reads one documents-topic message, or raises EventError saying what to fix."""
    document = decode_json(value, limits.max_json_depth, limits.max_json_values)
    DOCUMENT.validate(document)
    _check_size(
        "text",
        document["text"],
        limits.max_context_chars,
        "max_context_chars",
        ErrorCode.TEXT_TOO_LARGE,
    )
    created_at = document.get("created_at")
    return DocumentEvent(
        id=document["id"],
        text=document["text"],
        question_set=document.get("question_set"),
        metadata=document.get("metadata"),
        event_time_ms=kafka_timestamp_ms if created_at is None else _epoch_ms(created_at),
    )


def tags_event(
    document: DocumentEvent,
    question_set: str,
    results: dict[str, QAResult],
    model_name: str,
    model_checksum: str,
    worker_version: str,
    now_ms: int,
) -> dict[str, Any]:
    """The tags event (tags.schema.json): one entry per field, `found` false on abstention."""
    tags = {
        name: {
            "answer": result.answer,
            "score": result.score,
            "start": result.start,
            "end": result.end,
            "found": not result.is_impossible,
        }
        for name, result in results.items()
    }
    event: dict[str, Any] = {"id": document.id, "question_set": question_set, "tags": tags}
    if document.metadata is not None:
        event["metadata"] = document.metadata
    event["model"] = {"name": model_name, "checksum": model_checksum}
    event["worker_version"] = worker_version
    event["tagged_at"] = timestamp(now_ms)
    return event


def answer_event(
    event: QuestionEvent,
    result: QAResult,
    model_name: str,
    model_checksum: str,
    queue_ms: float,
    inference_ms: float,
    total_ms: float,
    worker_version: str,
    now_ms: int,
    read_ms: float | None = None,
    stages_ms: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The answer event for `event` (answer.schema.json); `model_checksum` is the manifest's.

    `read_ms` (from the record's timestamp to the worker reading it) and `stages_ms` (each
    stage's offset from the read, in order) go into `timings` when given.
    """
    # Times from a producer's clock that runs ahead of ours would come out negative.
    timings: dict[str, Any] = {
        "queue_ms": round(max(queue_ms, 0.0), 3),
        "inference_ms": round(max(inference_ms, 0.0), 3),
        "total_ms": round(max(total_ms, 0.0), 3),
    }
    if read_ms is not None:
        timings["read_ms"] = round(max(read_ms, 0.0), 3)
    if stages_ms is not None:
        timings["stages_ms"] = {name: round(max(ms, 0.0), 3) for name, ms in stages_ms.items()}
    answer: dict[str, Any] = {
        "id": event.id,
        **result.to_dict(),
        "model": {"name": model_name, "checksum": model_checksum},
        "timings": timings,
    }
    if event.metadata is not None:
        answer["metadata"] = event.metadata
    answer["worker_version"] = worker_version
    answer["answered_at"] = timestamp(now_ms)
    return answer


def dead_letter_event(
    value: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    code: ErrorCode,
    message: str,
    worker_version: str,
    now_ms: int,
    max_json_values: int = DEFAULT_MAX_JSON_VALUES,
) -> dict[str, Any]:
    """The dead-letter event (dead-letter.schema.json) for the message `value` that failed.

    Its `id` is read from `value` only when that holds at most `max_json_values` values: one
    refused for holding more is not decoded to build its dead letter either.
    """
    raw = value or b""
    text: str | None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    dead_letter: dict[str, Any] = {
        "payload": base64.b64encode(raw).decode("ascii") if text is None else text,
        "payload_encoding": "base64" if text is None else "utf-8",
        "source": {"topic": encodable_text(topic), "partition": partition, "offset": offset},
        # A message quoting input (an exception's, say) may hold an unpaired surrogate.
        "error": {"code": code, "message": encodable_text(message)},
    }
    if text is not None and json_values_over(raw, max_json_values) is None:
        event_id = _readable_id(text)
        if event_id is not None:
            dead_letter["id"] = event_id
    dead_letter["failed_at"] = timestamp(now_ms)
    dead_letter["worker_version"] = worker_version
    return dead_letter


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

# When even an empty payload does not fit, the reason is cut to this and the id left out.
_SHORT_REASON_CHARS = 200


def encodable_text(text: str) -> str:
    """`text` with any unpaired surrogate escaped (as \\udxxx), so it encodes as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def shortest_dead_letter(dead_letter: dict[str, Any]) -> dict[str, Any]:
    """`dead_letter` cut as far as `dead_letter_bytes` ever cuts it: payload empty (and marked
    truncated), no id, the reason shortened. Its size is the least room a dead letter needs."""
    fitted = _without_payload(dead_letter)
    fitted.pop("id", None)
    message = fitted["error"]["message"]
    fitted["error"] = {**fitted["error"], "message": message[:_SHORT_REASON_CHARS]}
    return fitted


def _without_payload(dead_letter: dict[str, Any]) -> dict[str, Any]:
    payload: str = dead_letter["payload"]
    is_text = dead_letter["payload_encoding"] == "utf-8"
    original_size = len(payload.encode("utf-8")) if is_text else len(base64.b64decode(payload))
    fitted: dict[str, Any] = {}
    for key, item in dead_letter.items():
        fitted[key] = "" if key == "payload" else item
        if key == "payload_encoding":
            fitted["payload_truncated"] = True
            fitted["payload_size"] = original_size
    return fitted


def dead_letter_bytes(dead_letter: dict[str, Any], max_bytes: int) -> bytes:
    """`dead_letter` as a record value of at most `max_bytes`, its payload cut to fit.

    A cut payload is a prefix of the original (whole characters, or whole base64 quads), marked
    with `payload_truncated` and the original value's size in `payload_size`; source topic,
    partition and offset always stay, so the original can be read again from the topic. Raises
    ValueError when even `shortest_dead_letter` is over `max_bytes`: the caller makes room (a
    shorter key, fewer headers) before it asks.
    """
    encoded = to_bytes(dead_letter)
    if len(encoded) <= max_bytes:
        return encoded
    payload: str = dead_letter["payload"]
    is_text = dead_letter["payload_encoding"] == "utf-8"
    fitted = _without_payload(dead_letter)
    room = max_bytes - len(to_bytes(fitted))
    if room < 0:
        fitted = shortest_dead_letter(dead_letter)
        room = max_bytes - len(to_bytes(fitted))
        if room < 0:
            raise ValueError(f"a dead letter cannot fit in {max_bytes} bytes")
    if is_text:
        # Escaping makes the encoded size grow with the prefix, but not in step with it.
        low, high = 0, len(payload)
        while low < high:
            middle = (low + high + 1) // 2
            if len(_ENCODER.encode(payload[:middle]).encode("utf-8")) - 2 <= room:
                low = middle
            else:
                high = middle - 1
        fitted["payload"] = payload[:low]
    else:
        fitted["payload"] = payload[: room // 4 * 4]
    return to_bytes(fitted)


def to_bytes(event: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON; raises ValueError on a NaN or infinity, which JSON cannot carry."""
    return _ENCODER.encode(event).encode("utf-8")


class _NotFinite(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotFinite(f"{name} is not a JSON number; send finite numbers only")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise _NotFinite(f"the number {text[:_SHOWN_CHARS]} is too large for a 64-bit float")
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
    except _NotFinite as error:
        raise EventError(ErrorCode.INVALID_JSON, f"the value is not usable JSON: {error}") from None
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
    if ("\\ud" in text or "\\uD" in text) and not _encodable(document):
        raise EventError(
            ErrorCode.INVALID_JSON,
            "the value has an unpaired UTF-16 surrogate escape (such as \\ud800); "
            "escape characters outside the Basic Multilingual Plane as surrogate pairs",
        )
    return document


def _encodable(document: Any) -> bool:
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


def _keywords(schema: dict[str, Any]) -> set[str]:
    """Every keyword `schema` uses, in its property schemas too."""
    used = set(schema)
    for spec in schema.get("properties", {}).values():
        used |= _keywords(spec)
    return used


def _describe(schema: dict[str, Any]) -> str:
    """What a property schema requires, in words; tests keep its keywords in step with schemas."""
    kinds = {
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
        "object": "a JSON object",
        "array": "an array",
    }
    text = kinds[schema["type"]]
    if schema.get("format") == "date-time":
        text = "an RFC 3339 date-time string"
    if "minLength" in schema:
        length = schema["minLength"]
        text = "a non-empty string" if length == 1 else f"a string of at least {length} characters"
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        text += f" from {low} to {high}"
    elif low is not None:
        text += f" >= {low}"
    elif high is not None:
        text += f" <= {high}"
    return text


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str) and len(value) > _SHOWN_CHARS:
        return json.dumps(value[:_SHOWN_CHARS], ensure_ascii=False)[:-1] + '..."'
    return json.dumps(value, ensure_ascii=False)


# Whitespace, control and format characters (zero-width space and joiners, word joiner, byte
# order mark): a text made only of these reads as empty, and the model would "answer" it.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def _check_visible(name: str, text: str, code: ErrorCode) -> None:
    if all(char.isspace() or unicodedata.category(char) in _INVISIBLE_CATEGORIES for char in text):
        raise EventError(
            code,
            f'"{name}" must contain a visible character, got {_shown(text)}',
        )


def _check_size(name: str, text: str, limit: int, setting: str, code: ErrorCode) -> None:
    if len(text) > limit:
        raise EventError(
            code,
            f'"{name}" has {len(text):,} characters, over the limit of {limit:,} '
            f"({describe_setting(setting)}); shorten it, or raise the limit",
        )


def _epoch_ms(created_at: str) -> int:
    problem = 'must be an RFC 3339 date-time with a time zone, such as "2024-05-01T12:00:00Z"'
    match = _RFC3339.fullmatch(created_at)
    if match is None:
        raise EventError(
            ErrorCode.INVALID_CREATED_AT, f'"created_at" {problem}, got {_shown(created_at)}'
        )
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    fraction, sign, offset_hours, offset_minutes = match.group(7, 8, 9, 10)
    offset = timedelta(0)
    if sign is not None:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            raise EventError(
                ErrorCode.INVALID_CREATED_AT,
                f'"created_at" has a time zone offset out of range, got {_shown(created_at)}',
            )
        offset = timedelta(hours=int(offset_hours), minutes=int(offset_minutes))
        offset = -offset if sign == "-" else offset
    # A leap second (23:59:60) is the instant after 23:59:59, as in epoch time.
    leap = second == 60
    try:
        instant = datetime(
            year, month, day, hour, minute, 59 if leap else second, tzinfo=timezone(offset)
        )
    except ValueError as error:
        raise EventError(
            ErrorCode.INVALID_CREATED_AT,
            f'"created_at" is not a real date-time ({error}), got {_shown(created_at)}',
        ) from None
    milliseconds = int((fraction or "0")[:3].ljust(3, "0"))
    return (instant - _EPOCH_UTC) // _MILLISECOND + milliseconds + (1000 if leap else 0)


def timestamp(epoch_ms: int) -> str:
    """RFC 3339 in UTC with milliseconds."""
    return (_EPOCH + epoch_ms * _MILLISECOND).isoformat(timespec="milliseconds") + "Z"


def _readable_id(text: str) -> str | None:
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        # What orjson refuses and the standard library may read (NaN, say), unless it is too
        # deep for that recursive decoder.
        if nesting_exceeds(text.encode("utf-8"), DEFAULT_MAX_JSON_DEPTH):
            return None
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):
            return None
    if not isinstance(document, dict):
        return None
    event_id = document.get("id")
    if isinstance(event_id, str) and event_id and _encodable(event_id):
        return event_id
    return None


QUESTION = Contract("question", "question event")
DOCUMENT = Contract("document", "document event")
