"""One error root, and one closed set of dead-letter codes shared by code, schema and docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker import errors
from worker.cli import main
from worker.errors import ErrorCode, EventError, SetupError, WorkerError
from worker.events import load_schema

ROOT = Path(__file__).resolve().parent.parent


def test_the_dead_letter_schema_lists_exactly_the_error_codes() -> None:
    code = load_schema("dead-letter")["properties"]["error"]["properties"]["code"]
    assert code["enum"] == [member.value for member in ErrorCode]


def test_the_schema_description_and_the_events_page_name_every_code() -> None:
    description = load_schema("dead-letter")["properties"]["error"]["properties"]["code"][
        "description"
    ]
    page = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    listed = page[page.index("Codes (the schema's `error.code` enum") :].split("\n\n")[0]
    for member in ErrorCode:
        assert re.search(rf"\b{member.value}\b", description), member
        assert f"`{member.value}`" in listed, member


def test_every_error_class_is_a_worker_error() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, Exception)
    ]
    assert len(classes) > 5
    assert all(issubclass(kind, WorkerError) for kind in classes)


def test_event_errors_carry_a_code_and_setup_errors_none() -> None:
    event = EventError(ErrorCode.EMPTY_CONTEXT, "context cannot be empty")
    assert (event.code, event.message, str(event)) == (
        "empty_context",
        "context cannot be empty",
        "context cannot be empty",
    )
    setup = errors.ConfigError("--top-k / QA_TOP_K must be at least 1, got 0")
    assert isinstance(setup, SetupError) and setup.code is None


def test_the_command_line_reports_any_worker_error_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A model folder with no manifest: a ModelFolderError, reported like every WorkerError.
    assert main(["answer", "--model", str(tmp_path), "--question", "q", "--context", "c"]) == 2
    assert capsys.readouterr().err.startswith("qa-worker answer: ")
    assert main(["answer", "--question", "q", "--context", "c"]) == 2
    assert "no model folder given: pass --model / QA_MODEL" in capsys.readouterr().err
