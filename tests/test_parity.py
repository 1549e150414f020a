"""Answers equal those of transformers 4.57.6's question-answering pipeline, run for real.

The reference runs in its own virtual environment (tests/support/reference.py) on the checkpoint
folder; the engine runs on the ONNX export of that same folder. Logits differ in the last bits
between PyTorch and ONNX Runtime, so an answer may flip where two candidates tie within rounding:
the tests allow that only for near-ties, and only for under 1% of the pairs.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.support import texts
from tests.support.reference import run_reference
from worker.errors import EventError
from worker.manifest import Manifest
from worker.qa import QAEngine, QAOptions, Question

pytestmark = pytest.mark.reference

SCORE_TOLERANCE = 1e-4
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
        for i, result in zip(chosen, engine.answer_many(questions, batch_size=8), strict=True):
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


@pytest.mark.parametrize("kind", ["bert", "mobilebert", "roberta"])
def test_answers_match_reference_pipeline(kind: str, exported_models: dict[str, Path]) -> None:
    model_dir = exported_models[kind]
    checkpoint = Path(Manifest.read(model_dir).source)
    cases = build_cases(seed=sum(map(ord, kind)))
    expected = run_reference(checkpoint, cases)
    actual = engine_answers(model_dir, cases)

    assert len(cases) >= 200
    assert sum(len(case["context"].split()) > 300 for case in cases) >= 20
    mismatches = []
    for case, reference, mine in zip(cases, expected, actual, strict=True):
        if "error" in reference:
            # Questions too long for small windows: the reference fails, so must the engine.
            assert mine == {"error": "question_too_long"}, (case, reference)
            continue
        assert "answers" in mine, f"engine failed on {case}: {mine}"
        rank = first_difference(reference["answers"], mine["answers"])
        compared = reference["answers"] if rank is None else reference["answers"][:rank]
        for ref_span, my_span in zip(compared, mine["answers"], strict=False):
            assert my_span["score"] == pytest.approx(ref_span["score"], abs=SCORE_TOLERANCE)
        if rank is not None:
            mismatches.append((case, reference["answers"], mine["answers"], rank))

    for case, reference, mine, rank in mismatches:
        # A flip is only acceptable between candidates the reference itself scores as tied.
        assert rank_gap(reference, mine, rank) < SCORE_TOLERANCE, (
            f"answer differs beyond a near-tie at rank {rank}:\n"
            f"case {case}\nreference {reference}\nengine {mine}"
        )
    assert len(mismatches) <= len(cases) // 100, [m[:3] for m in mismatches]


@pytest.mark.parametrize(
    ("question", "context", "code"),
    [("", "Some context.", "empty_question"), ("Who?", "", "empty_context")],
)
def test_inputs_the_reference_rejects_are_rejected_with_a_reason(
    question: str, context: str, code: str, exported_models: dict[str, Path]
) -> None:
    model_dir = exported_models["bert"]
    [reference] = run_reference(
        Path(Manifest.read(model_dir).source), [{"question": question, "context": context}]
    )
    assert "error" in reference
    with pytest.raises(EventError) as caught:
        QAEngine.load(model_dir).answer(question, context)
    assert caught.value.code == code


def test_question_too_long_for_the_window_fails_like_the_reference(
    exported_models: dict[str, Path],
) -> None:
    model_dir = exported_models["bert"]
    question = " ".join(["what is the name of the river"] * 20)
    case = {
        "question": question,
        "context": "The river is the Nile.",
        "max_seq_len": 64,
        "doc_stride": 24,
    }
    [reference] = run_reference(Path(Manifest.read(model_dir).source), [case])
    assert "error" in reference
    with pytest.raises(EventError) as caught:
        QAEngine.load(model_dir, max_seq_len=64, doc_stride=24).answer(question, case["context"])
    assert caught.value.code == "question_too_long"
    assert "shorten the question" in str(caught.value)
