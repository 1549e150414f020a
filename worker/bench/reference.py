"""Timing transformers' pipeline in another interpreter (`--reference-python`)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..config import Settings
from ..errors import BenchError
from ..qa import QAOptions
from ..squad import QuestionRecord
from .report import Report

REFERENCE_TIMEOUT_S = 3600.0


REFERENCE_SCRIPT = Path(__file__).with_name("reference_pipeline.py")


def pipeline_options(report: Report, settings: Settings) -> Report:
    """The worker's settings as the reference pipeline's keyword arguments."""
    options = settings.subset(QAOptions)
    return {
        "max_seq_len": report["settings"]["max_seq_len"],
        "doc_stride": report["settings"]["doc_stride"],
        "top_k": options.top_k,
        "max_answer_len": options.max_answer_len,
        "handle_impossible_answer": options.handle_impossible_answer,
        "align_to_words": options.align_to_words,
    }


def run_reference(
    python: Path, model: str, records: Sequence[QuestionRecord], options: Report
) -> Report:
    """Times the pipeline in `python` (reference_pipeline.py), excluding its imports and loading."""
    with tempfile.TemporaryDirectory(prefix="qa-bench-reference-") as work:
        cases = Path(work) / "cases.json"
        results = Path(work) / "results.json"
        questions = [[record.question, record.context] for record in records]
        cases.write_text(
            json.dumps({"model": model, "options": options, "questions": questions}),
            encoding="utf-8",
        )
        # -I: neither this project nor the script's own folder may be importable there, only the
        # interpreter's own packages: the reference must not run any of this project's code.
        command = [str(python), "-I", str(REFERENCE_SCRIPT), str(cases), str(results)]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=REFERENCE_TIMEOUT_S,
                env=reference_environment(model),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise BenchError(f"the reference pipeline did not run: {error}") from None
        if done.returncode != 0:
            raise BenchError(
                f"the reference pipeline failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
            )
        timing = json.loads(results.read_text(encoding="utf-8"))
    return {
        "events_per_s": timing["events"] / timing["seconds"],
        "seconds": timing["seconds"],
        "events": timing["events"],
        "errors": timing["errors"],
        "model": model,
        "python": str(python),
        "versions": timing["versions"],
    }


def reference_environment(model: str) -> dict[str, str]:
    environ = dict(os.environ)
    if Path(model).is_dir():
        # A local checkpoint needs no hub; without these, an unreachable one costs retries.
        environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return environ
