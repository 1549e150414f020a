"""Engine behaviour that needs no reference: batching invariance, thresholds, input errors."""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from parity import texts
from worker.backends import InferenceBackend
from worker.backends.onnx import cgroup_cpu_limit
from worker.batching.plan import BatchLimits
from worker.errors import ErrorCode, EventError, ModelFolderError
from worker.model.manifest import TOKENIZER_NAME, Manifest
from worker.qa import QAEngine, QAOptions, Question
from worker.qa.windows import WindowTokenizer


@pytest.fixture(scope="module", params=["bert", "roberta"])
def engine(request: pytest.FixtureRequest, exported_models: dict[str, Path]) -> QAEngine:
    return QAEngine.load(exported_models[request.param], precision="fp32")


def spans(result: object) -> list[tuple[str, int, int]]:
    return [(span.answer, span.start, span.end) for span in result.answers]  # type: ignore[attr-defined]


def test_batched_answers_equal_one_at_a_time(engine: QAEngine) -> None:
    options = QAOptions(top_k=3, handle_impossible_answer=True)
    questions = [Question(q, c, options) for q, c in texts.pairs(seed=7, count=40)]
    # Padding uncapped, so that windows of unlike lengths share batches here.
    limits = BatchLimits(batch_size=16, max_batch_tokens=4096, max_padding=math.inf)
    batched = engine.answer_many(questions, limits)
    assert engine.stats.batches < len(questions)
    for question, together in zip(questions, batched, strict=True):
        alone = engine.answer_many([question], BatchLimits(batch_size=1))[0]
        assert spans(together) == spans(alone)
        for a, b in zip(together.answers, alone.answers, strict=True):  # type: ignore[union-attr]
            assert a.score == pytest.approx(b.score, abs=1e-5)


@pytest.mark.parametrize("max_padding", [0.0, 0.1])
def test_answer_many_keeps_to_the_padding_cap(engine: QAEngine, max_padding: float) -> None:
    # One window each, of very unlike lengths: uncapped, they share one heavily padded batch.
    rng = random.Random(5)
    questions = [Question(texts.question(rng), texts.context(rng, words)) for words in (3, 12, 40)]
    engine.stats = replace(engine.stats, padded_tokens=0, real_tokens=0)
    engine.answer_many(questions, BatchLimits(batch_size=16, max_padding=max_padding))
    capped = engine.stats.padded_tokens / engine.stats.real_tokens
    # A batch's padding is within the cap, so the whole run's is too.
    assert capped <= 1 + max_padding
    engine.stats = replace(engine.stats, padded_tokens=0, real_tokens=0)
    engine.answer_many(questions, BatchLimits(batch_size=16, max_padding=math.inf))
    assert engine.stats.padded_tokens / engine.stats.real_tokens > 1 + max_padding


@pytest.mark.parametrize("command", ["answer", "eval"])
def test_offline_commands_honour_max_padding(
    command: str,
    exported_models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from worker.cli import main

    pairs = texts.pairs(seed=5, count=40)
    squad = {
        "version": "v2.0",
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": context,
                        "qas": [
                            {
                                "id": f"q{i}",
                                "question": question,
                                "answers": [],
                                "is_impossible": True,
                            }
                        ],
                    }
                    for i, (question, context) in enumerate(pairs)
                ],
            }
        ],
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad), encoding="utf-8")
    source = ["--input", str(path)] if command == "answer" else ["--squad", str(path)]
    ratios = {}
    for cap in ("0", "10"):
        model = str(exported_models["bert"])
        # Batches of several windows: the cap decides which windows share one.
        args = ["--model", model, "--max-padding", cap, "--batch-size", "16", *source]
        assert main([command, *args]) == 0
        report = capsys.readouterr().err
        ratios[cap] = float(report.rsplit("padding ratio ", 1)[1].split()[0])
    assert ratios["0"] == 1.0 < ratios["10"]


def test_long_context_is_answered_across_many_windows(engine: QAEngine) -> None:
    question, _ = texts.pairs(seed=3, count=1)[0]
    context = texts.context(random.Random(3), 3000)
    encoded = engine.encode(question, context)
    assert len(encoded.windows) > 5
    assert all(len(window) <= engine.tokenizer.max_seq_len for window in encoded.windows)
    result = engine.answer(question, context, QAOptions(top_k=3))
    for span in result.answers:
        assert context[span.start : span.end] == span.answer


def test_null_threshold_decides_between_span_and_abstention(engine: QAEngine) -> None:
    pairs = texts.pairs(seed=11, count=30)
    base = engine.answer_many(
        [Question(q, c, QAOptions(handle_impossible_answer=True)) for q, c in pairs]
    )
    margins = [r.best_span.score - r.null_score for r in base]  # type: ignore[union-attr]
    threshold = sorted(margins)[len(margins) // 2]
    tuned = engine.answer_many(
        [Question(q, c, QAOptions(null_threshold=threshold)) for q, c in pairs]
    )
    answered = 0
    for margin, before, after in zip(margins, base, tuned, strict=True):
        if margin > threshold:
            answered += 1
            assert after.answer == before.best_span.answer  # type: ignore[union-attr]
            assert not after.is_impossible
        else:
            assert (after.answer, after.start, after.end) == ("", 0, 0)
            assert after.is_impossible
            assert after.score == after.null_score
    assert 0 < answered < len(pairs)


def test_bad_inputs_fail_alone_with_a_code(engine: QAEngine) -> None:
    good = Question("Which company?", "Acme Corp. acquired Widget Inc.")
    results = engine.answer_many([good, Question("", "context"), good, Question("q", ""), good])
    assert [getattr(r, "code", None) for r in results] == [
        None,
        "empty_question",
        None,
        "empty_context",
        None,
    ]
    assert spans(results[0]) == spans(results[2]) == spans(results[4])


def test_non_string_input_is_rejected(engine: QAEngine) -> None:
    with pytest.raises(EventError) as caught:
        engine.encode("q", 42)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_context"


def test_folder_without_manifest_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="qa-worker export"):
        QAEngine.load(tmp_path)


def test_missing_precision_names_the_fix(exported_models: dict[str, Path]) -> None:
    manifest = Manifest.read(exported_models["bert"])
    fp32_only = replace(manifest, onnx_files={"fp32": manifest.onnx_files["fp32"]})
    with pytest.raises(ModelFolderError, match="--quantize int8"):
        fp32_only.onnx_path(exported_models["bert"], "int8")
    assert manifest.onnx_path(exported_models["bert"]).name == manifest.onnx_files["int8"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), ("garbage", None)],
)
def test_cgroup_cpu_limit_caps_threads(tmp_path: Path, content: str, expected: int | None) -> None:
    limit_file = tmp_path / "cpu.max"
    limit_file.write_text(content)
    assert cgroup_cpu_limit(limit_file) == expected
    assert cgroup_cpu_limit(tmp_path / "missing") is None


class StreamRecorder:
    """Wraps a backend; the first batch of each stream waits for the other stream's first."""

    def __init__(self, backend: InferenceBackend) -> None:
        self.backend = backend
        self.input_names = backend.input_names
        self.streams = backend.streams
        self.sessions = backend.sessions
        self.used: list[int] = []
        self._lock = threading.Lock()
        self._together = threading.Barrier(backend.streams, timeout=60)

    def run(self, inputs: Mapping[str, np.ndarray], stream: int = 0) -> tuple[Any, Any]:
        with self._lock:
            first = stream not in self.used
            self.used.append(stream)
        if first:
            # Both streams hold a batch at once, or this times out and the test fails.
            self._together.wait()
        return self.backend.run(inputs, stream)


def test_answer_many_runs_batches_on_every_stream_with_the_same_answers(
    exported_models: dict[str, Path],
) -> None:
    questions = [Question(q, c) for q, c in texts.pairs(seed=11, count=24)]
    limits = BatchLimits(batch_size=2)
    one = QAEngine.load(exported_models["bert"], precision="fp32", streams=1)
    two = QAEngine.load(exported_models["bert"], precision="fp32", streams=2, threads=1)
    recorder = StreamRecorder(two.backend)
    two.backend = recorder
    together = two.answer_many(questions, limits)
    assert set(recorder.used) == {0, 1}
    assert two.stats.batches == len(recorder.used) > 2
    for alone, both in zip(one.answer_many(questions, limits), together, strict=True):
        assert spans(alone) == spans(both)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("question_first", [True, False])
def test_a_question_leaving_no_room_beyond_the_stride_is_an_event_error_never_a_panic(
    exported_models: dict[str, Path], kind: str, question_first: bool
) -> None:
    """Every question length against a context of many windows, with either text first: the
    tokenizer's panic over a stride it cannot keep becomes `question_too_long`."""
    folder = exported_models[kind]
    info = Manifest.read(folder).tokenizer
    info = replace(info, padding_side="right" if question_first else "left")
    tokenizer = WindowTokenizer(folder / TOKENIZER_NAME, info, max_seq_len=64, doc_stride=32)
    codes = set()
    for words in range(1, 64):
        try:
            encoded = tokenizer.encode("word " * words, "context text " * 200)
        except EventError as error:
            codes.add(error.code)
        else:
            assert len(encoded.windows) > 1
    assert codes == {ErrorCode.QUESTION_TOO_LONG}


def test_answer_gives_an_empty_question_its_error_line_and_answers_the_rest(
    exported_models: dict[str, Path], tmp_path: Path
) -> None:
    from worker.cli import main

    lines = [
        {"id": "a", "question": "Which company?", "context": "Acme Corp. acquired Widget Inc."},
        {"id": "blank", "question": "", "context": "Acme Corp. acquired Widget Inc."},
        {"id": "empty", "question": "Which company?", "context": ""},
        {"id": "b", "question": "Who was acquired?", "context": "Acme Corp. acquired Widget Inc."},
    ]
    source, output = tmp_path / "questions.jsonl", tmp_path / "answers.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    model = str(exported_models["bert"])
    assert main(["answer", "--model", model, "--input", str(source), "--output", str(output)]) == 0
    answers = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [a["id"] for a in answers] == ["a", "blank", "empty", "b"]
    assert [a.get("error", {}).get("code") for a in answers] == [
        None,
        "empty_question",
        "empty_context",
        None,
    ]
    assert all("answer" in answers[i] for i in (0, 3))
