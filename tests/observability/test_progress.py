"""Progress bars: on stderr when it is a terminal or when asked, and nowhere else."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.worker_process import run_qa_worker
from worker.model.export import export_model
from worker.observability.progress import progress_bar, progress_wanted


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_shown_on_a_terminal_or_when_asked() -> None:
    assert progress_wanted(None, Terminal()) is True
    assert progress_wanted(None, io.StringIO()) is False
    assert progress_wanted(False, Terminal()) is False
    assert progress_wanted(True, io.StringIO()) is True


def test_a_bar_counts_up_and_ends_its_line() -> None:
    stream = io.StringIO()
    with progress_bar("answering", 3, True, unit="questions", stream=stream) as bar:
        bar.update(2)
        bar.set_description("answering the rest")
        bar.update(1)
    text = stream.getvalue()
    assert text.startswith("\ranswering")
    assert "0/3" in text
    # The last redraw shows the bar full under the step's name, then the line ends.
    last = text.rstrip("\n").rsplit("\r", 1)[-1]
    assert last.startswith("answering the rest: 100%")
    assert "3/3" in last and "questions/s" in last
    assert text.endswith("\n")


def test_a_disabled_bar_writes_nothing() -> None:
    stream = io.StringIO()
    with progress_bar("answering", 3, False, stream=stream) as bar:
        bar.update(3)
        bar.set_description("done")
    assert stream.getvalue() == ""


def test_bars_go_to_stderr_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar("answering", 2, True) as bar:
        bar.update(2)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "2/2" in captured.err


def run_answer(folder: Path, questions: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return run_qa_worker(
        "answer", "--model", str(folder), "--input", str(questions), *flags, timeout=300
    )


def test_answer_over_a_file_shows_progress_only_when_asked(
    export_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    questions = tmp_path / "questions.jsonl"
    lines = [
        {"id": f"q{i}", "question": "Who won?", "context": "Marie Curie won two Nobel Prizes."}
        for i in range(7)
    ]
    questions.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    folder = export_factory("distilbert")

    quiet = run_answer(folder, questions)
    shown = run_answer(folder, questions, "--progress")
    for done in (quiet, shown):
        assert done.returncode == 0, done.stderr
        # The answers on stdout are the same either way: the bar never touches them.
        assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == [
            f"q{i}" for i in range(7)
        ]
    assert quiet.stdout == shown.stdout
    # (Read in text mode, the bar's carriage returns arrive as newlines.)
    assert "answering" not in quiet.stderr
    assert "answering: 100%" in shown.stderr
    assert "7/7" in shown.stderr


def test_export_reports_its_steps_when_asked(
    checkpoint_factory: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    export_model(str(checkpoint_factory("distilbert")), tmp_path / "out", progress=True)
    shown = capsys.readouterr().err
    for step in ("export: loading the checkpoint", "export: torch.onnx.export", "checking logits"):
        assert step in shown
    assert "3/3" in shown

    export_model(str(checkpoint_factory("distilbert")), tmp_path / "quiet")
    assert "\r" not in capsys.readouterr().err
