"""Content tagging: fixed question sets asked of every document.

A question set names fields, each a question with optional answering options:

    fields:
      company: {question: "Which company is acquired?"}
      amount:  {question: "How much was paid?", null_threshold: 0.1}

A file holds one set (top-level `fields`, named `default`) or several under their names
(`{acquisitions: {fields: ...}, people: {fields: ...}}`), as YAML or JSON.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .batching.plan import BatchLimits
from .errors import ErrorCode, EventError, QuestionSetError
from .events import OPTION_TYPES, DocumentEvent
from .qa import QAEngine, QAOptions, QAResult, Question

DEFAULT_SET = "default"


@dataclass(frozen=True)
class TagField:
    name: str
    question: str
    options: QAOptions


@dataclass(frozen=True)
class QuestionSet:
    name: str
    fields: tuple[TagField, ...]


def load_question_sets(path: Path, defaults: QAOptions) -> dict[str, QuestionSet]:
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise QuestionSetError(f"cannot read question sets from {path}: {error}") from None
    if not isinstance(raw, dict) or not raw:
        raise QuestionSetError(f"{path}: expected a mapping with `fields`, or named sets")
    named = {DEFAULT_SET: raw} if "fields" in raw else raw
    return {
        name: _question_set(f"{path}: {name}", name, spec, defaults) for name, spec in named.items()
    }


def _question_set(where: str, name: str, spec: Any, defaults: QAOptions) -> QuestionSet:
    fields = spec.get("fields") if isinstance(spec, dict) else None
    if not isinstance(fields, dict) or not fields:
        raise QuestionSetError(f"{where}: needs `fields`, a mapping of field name to question")
    return QuestionSet(
        str(name),
        tuple(_field(f"{where}.{key}", str(key), value, defaults) for key, value in fields.items()),
    )


def _field(where: str, name: str, spec: Any, defaults: QAOptions) -> TagField:
    if not isinstance(spec, dict) or not isinstance(spec.get("question"), str):
        raise QuestionSetError(f"{where}: needs `question`, a string")
    if not spec["question"].strip():
        raise QuestionSetError(f"{where}: the question is empty")
    unknown = set(spec) - {"question", *OPTION_TYPES}
    if unknown:
        allowed = ", ".join(sorted(OPTION_TYPES))
        raise QuestionSetError(f"{where}: unknown options {sorted(unknown)}; allowed: {allowed}")
    overrides = {}
    for option, kind in OPTION_TYPES.items():
        if option in spec:
            value = spec[option]
            if isinstance(value, bool) != (kind is bool) or not isinstance(value, int | float):
                raise QuestionSetError(f"{where}.{option}: expected {kind.__name__}, got {value!r}")
            overrides[option] = kind(value)
    try:
        options = dataclasses.replace(defaults, **overrides)
    except ValueError as error:
        raise QuestionSetError(f"{where}: {error}") from None
    return TagField(name, spec["question"], options)


def parse_topic_sets(mapping: str | None) -> dict[str, str | None]:
    """`--documents-topics`: `topic=set,other` maps topics to default sets (None: per event)."""
    topics: dict[str, str | None] = {}
    for item in (mapping or "").split(","):
        if item.strip():
            topic, _, set_name = item.partition("=")
            topics[topic.strip()] = set_name.strip() or None
    return topics


def tag_results(fields: Sequence[TagField], results: Sequence[QAResult]) -> dict[str, QAResult]:
    return {field.name: result for field, result in zip(fields, results, strict=True)}


def tag_offline(
    engine: QAEngine,
    question_set: QuestionSet,
    texts: Sequence[str],
    limits: BatchLimits,
) -> list[Mapping[str, QAResult] | EventError]:
    """Every field of the set for every text, batched together; per text, results or an error."""
    questions = [
        Question(field.question, text, field.options)
        for text in texts
        for field in question_set.fields
    ]
    answers = engine.answer_many(questions, limits)
    width = len(question_set.fields)
    tagged: list[Mapping[str, QAResult] | EventError] = []
    for start in range(0, len(answers), width):
        chunk = answers[start : start + width]
        failure = next((result for result in chunk if isinstance(result, EventError)), None)
        results = [result for result in chunk if isinstance(result, QAResult)]
        tagged.append(failure if failure is not None else tag_results(question_set.fields, results))
    return tagged


@dataclass(frozen=True)
class TaggedDocument:
    document: DocumentEvent
    question_set: str
    results: Mapping[str, QAResult]


def tag_documents(
    engine: QAEngine,
    question_sets: Mapping[str, QuestionSet],
    documents: Sequence[DocumentEvent],
    default_set: str,
    limits: BatchLimits,
) -> list[TaggedDocument | EventError]:
    """Tags documents offline, in order; each with its own set or `default_set`."""
    tagged: list[TaggedDocument | EventError | None] = [None] * len(documents)
    by_set: dict[str, list[int]] = {}
    for index, document in enumerate(documents):
        name = document.question_set or default_set
        if name in question_sets:
            by_set.setdefault(name, []).append(index)
        else:
            known = ", ".join(question_sets)
            message = f"no question set named {name!r} (known: {known})"
            tagged[index] = EventError(ErrorCode.UNKNOWN_QUESTION_SET, message)
    for name, indexes in by_set.items():
        texts = [documents[index].text for index in indexes]
        answers = tag_offline(engine, question_sets[name], texts, limits)
        for index, results in zip(indexes, answers, strict=True):
            tagged[index] = (
                results
                if isinstance(results, EventError)
                else TaggedDocument(documents[index], name, results)
            )
    return [item for item in tagged if item is not None]
