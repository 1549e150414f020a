"""Answers equal those of transformers 4.57.6's question-answering pipeline, run for real.

The reference runs in its own virtual environment (parity/reference.py) on the checkpoint
folder; the engine runs on the ONNX export of that same folder. Logits differ in the last bits
between PyTorch and ONNX Runtime, so an answer may flip where two candidates tie within rounding:
the tests allow that only for near-ties, and only for under 1% of the pairs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from parity.cases import build_cases, engine_answers
from parity.reference import run_reference
from tests.support.parity import assert_answers_match
from worker.errors import EventError
from worker.model.manifest import Manifest
from worker.qa import QAEngine

pytestmark = pytest.mark.reference


@pytest.mark.parametrize("kind", ["bert", "mobilebert", "roberta"])
def test_answers_match_reference_pipeline(kind: str, exported_models: dict[str, Path]) -> None:
    model_dir = exported_models[kind]
    checkpoint = Path(Manifest.read(model_dir).source)
    cases = build_cases(seed=sum(map(ord, kind)))
    expected = run_reference(checkpoint, cases)
    actual = engine_answers(model_dir, cases)

    assert len(cases) >= 200
    assert sum(len(case["context"].split()) > 300 for case in cases) >= 20
    assert_answers_match(cases, expected, actual)


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
