"""The incoming events' contracts: the JSON Schemas, and question and document events read by them.

The JSON Schemas in `worker.schemas` (the repository's schemas/ folder) are the contracts. Types,
required fields and ranges of a question are checked by the schema alone, so code and schema
cannot drift; the code adds only what a schema cannot say: a question and a context with a
visible character, the worker's character limits, a `created_at` that is a real instant
(`timestamps`), and the limits and JSON rules `codec` decodes the value within.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from dataclasses import dataclass
from importlib import resources
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator

from ..config import describe as describe_setting
from ..errors import ErrorCode, EventError
from ..qa.types import QAOptions
from .codec import DEFAULT_MAX_JSON_DEPTH, DEFAULT_MAX_JSON_VALUES, decode_json, shown
from .timestamps import created_at_ms

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
                    f'"{field}" must be {self._requirements[field]}, got {shown(document[field])}',
                )
            else:
                problems.setdefault(
                    "",
                    f"a {self.title} must be {_describe(self.schema)} with {self._required}, "
                    f"got {shown(document)}",
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
    event_time_ms = kafka_timestamp_ms if created_at is None else created_at_ms(created_at)
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
        event_time_ms=kafka_timestamp_ms if created_at is None else created_at_ms(created_at),
    )


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


# Whitespace, control and format characters (zero-width space and joiners, word joiner, byte
# order mark): a text made only of these reads as empty, and the model would "answer" it.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def _check_visible(name: str, text: str, code: ErrorCode) -> None:
    if all(char.isspace() or unicodedata.category(char) in _INVISIBLE_CATEGORIES for char in text):
        raise EventError(
            code,
            f'"{name}" must contain a visible character, got {shown(text)}',
        )


def _check_size(name: str, text: str, limit: int, setting: str, code: ErrorCode) -> None:
    if len(text) > limit:
        raise EventError(
            code,
            f'"{name}" has {len(text):,} characters, over the limit of {limit:,} '
            f"({describe_setting(setting)}); shorten it, or raise the limit",
        )


QUESTION = Contract("question", "question event")
DOCUMENT = Contract("document", "document event")
