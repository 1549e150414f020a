"""The parity cases and the engine's answers to them, shared by the parity tests and
benchmarks/parity_report.py.

Cases are seeded question/context pairs with per-question options and window geometries; the
engine answers them as the reference pipeline's runner (parity/reference.py) does.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from parity import texts
from worker.batching.plan import BatchLimits
from worker.errors import EventError
from worker.qa import QAEngine, QAOptions, Question

PAIRS_PER_MODEL = 220

# Window geometries: the reference default, and small windows so that most contexts span several.
GEOMETRIES: tuple[dict[str, int], ...] = ({}, {"max_seq_len": 64, "doc_stride": 24})


def build_cases(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    cases = []
    for question, context in texts.pairs(seed, PAIRS_PER_MODEL):
        cases.append(
            {
                "question": question,
                "context": context,
                "top_k": rng.choice([1, 3, 3]),
                "handle_impossible_answer": rng.random() < 0.5,
                "max_answer_len": rng.choice([15, 15, 4, 30]),
                "align_to_words": rng.random() < 0.85,
                **rng.choice(GEOMETRIES),
            }
        )
    # Degenerate inputs the reference still answers.
    for context in ("   ", "x", "🍕", "東京"):
        for impossible in (False, True):
            cases.append(
                {
                    "question": "What?",
                    "context": context,
                    "top_k": 3,
                    "handle_impossible_answer": impossible,
                }
            )
    return cases


def engine_answers(model_dir: Path, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in cases]
    for geometry in GEOMETRIES:
        engine = QAEngine.load(model_dir, precision="fp32", **geometry)
        chosen = [
            i
            for i, case in enumerate(cases)
            if {k: case[k] for k in ("max_seq_len", "doc_stride") if k in case} == geometry
        ]
        questions = [
            Question(
                cases[i]["question"],
                cases[i]["context"],
                QAOptions(
                    **{
                        key: cases[i][key]
                        for key in (
                            "top_k",
                            "handle_impossible_answer",
                            "max_answer_len",
                            "align_to_words",
                        )
                        if key in cases[i]
                    }
                ),
            )
            for i in chosen
        ]
        for i, result in zip(
            chosen, engine.answer_many(questions, BatchLimits(batch_size=8)), strict=True
        ):
            if isinstance(result, EventError):
                results[i] = {"error": result.code}
            else:
                results[i] = {"answers": [span.to_dict() for span in result.answers]}
    return results


def first_difference(expected: list[dict], actual: list[dict]) -> int | None:
    for rank in range(max(len(expected), len(actual))):
        if rank >= len(expected) or rank >= len(actual):
            return rank
        keys = ("answer", "start", "end")
        if any(expected[rank][key] != actual[rank][key] for key in keys):
            return rank
    return None


def rank_gap(reference: list[dict], mine: list[dict], rank: int) -> float:
    """Score distance at the first differing rank; an answer only one side lists ties with 0."""
    if rank < len(reference) and rank < len(mine):
        return abs(reference[rank]["score"] - mine[rank]["score"])
    return (reference if rank < len(reference) else mine)[rank]["score"]
