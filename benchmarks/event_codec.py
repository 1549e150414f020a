"""Per-event cost of the event contracts: decoding and validating questions, encoding answers.

    python -m benchmarks.event_codec --squad ../shared/data/squad-v2-dev-half.json [--events N]

Each step runs over the same SQuAD questions (as the worker would receive them), against the
way it was done before: jsonschema interpreting the question schema (the oracle, still used to
explain rejections) and the standard library's JSON decoder (plain `json.loads`: the worker's
own use of it added a float hook and a surrogate check, so the decoding ratio understates).
Variants alternate in rounds, so a busy machine slows both alike; printed are microseconds per
event (best round) and each variant's ratio to its baseline; then parse_question and answer
encoding as they are now.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from worker.events import (
    QUESTION,
    InputLimits,
    QuestionEvent,
    answer_event,
    decode_json,
    load_schema,
    parse_question,
    to_bytes,
)
from worker.qa.types import QAOptions, QAResult, Span
from worker.squad import read_questions

ROUNDS = 7
DEFAULTS = QAOptions()
LIMITS = InputLimits(max_question_chars=2_000, max_context_chars=100_000)


def best_us_per_event(step: Callable[[Any], object], items: list[Any]) -> float:
    began = time.perf_counter()
    for item in items:
        step(item)
    return (time.perf_counter() - began) / len(items) * 1e6


def compare(pairs: dict[str, tuple[Callable[[Any], object], Callable[[Any], object], list[Any]]]):
    best: dict[str, list[float]] = {name: [float("inf"), float("inf")] for name in pairs}
    for _ in range(ROUNDS):
        for name, (baseline, variant, items) in pairs.items():
            for index, step in enumerate((baseline, variant)):
                best[name][index] = min(best[name][index], best_us_per_event(step, items))
    for name, (before, after) in best.items():
        print(
            f"{name:<34} before {before:8.1f} us  after {after:8.1f} us  ratio {after / before:.3f}"
        )


def answer_of(event: QuestionEvent) -> tuple[QuestionEvent, QAResult]:
    span = Span(event.context[:20], 0.75, 0, 20)
    return event, QAResult(span.answer, span.score, 0, 20, False, 0.01, [span, span], span)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--squad", type=Path, required=True)
    parser.add_argument("--events", type=int, default=2_000)
    args = parser.parse_args()
    records = read_questions(args.squad)[: args.events]
    values = [
        json.dumps(
            {"id": f"e{index}", "question": record.question, "context": record.context}
        ).encode()
        for index, record in enumerate(records)
    ]
    documents = [json.loads(value) for value in values]
    interpreted = Draft202012Validator(load_schema("question"))
    events = [parse_question(value, 0, DEFAULTS, LIMITS) for value in values]
    answers = [
        answer_event(event, result, "m", "c", 1.0, 2.0, 3.0, "v", 0)
        for event, result in map(answer_of, events)
    ]
    print(f"{len(values)} events, {sum(map(len, values)) / len(values):.0f} bytes on average")
    compare(
        {
            "validate (jsonschema -> compiled)": (
                interpreted.is_valid,
                QUESTION.accepts,
                documents,
            ),
            "decode (json -> decode_json)": (
                lambda value: json.loads(value.decode("utf-8")),
                decode_json,
                values,
            ),
            "decode + validate (before -> now)": (
                lambda value: interpreted.is_valid(json.loads(value.decode("utf-8"))),
                lambda value: QUESTION.accepts(decode_json(value)),
                values,
            ),
        }
    )
    parse_us = min(
        best_us_per_event(lambda value: parse_question(value, 0, DEFAULTS, LIMITS), values)
        for _ in range(ROUNDS)
    )
    print(f"parse_question now (every check): {parse_us:.1f} us")
    encode_us = min(best_us_per_event(to_bytes, answers) for _ in range(ROUNDS))
    print(f"to_bytes of an answer (the standard library's encoder, unchanged): {encode_us:.1f} us")


if __name__ == "__main__":
    main()
