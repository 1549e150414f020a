"""One error root holding every error class the worker raises, what becomes of each (stops the
worker, retriable), and one closed set of dead-letter codes shared by code, schema and docs."""

from __future__ import annotations

import importlib
import pkgutil
import re
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
from aiokafka.errors import BrokerResponseError

import worker
from worker import errors
from worker.cli import main
from worker.errors import ErrorCode, EventError, SetupError, WorkerError
from worker.events import load_schema

ROOT = Path(__file__).resolve().parent.parent

# The exception classes a worker module may define outside worker.errors, by name: the base each
# must keep, and why it cannot be a WorkerError.
FOREIGN_BASES: dict[str, tuple[type[Exception], str]] = {
    "InvalidRecordError": (
        BrokerResponseError,
        "Kafka's error 87 in aiokafka's table of broker error codes: aiokafka raises it, as one "
        "of its own errors, when the broker refuses a record as invalid; the worker never does",
    ),
}
# A line of the docstring's tree: the branches before the name give its depth.
TREE_LINE = re.compile(r"    (?P<indent>(?:[│ ]   )*)(?P<branch>[├└]── )?(?P<name>\w+)(?P<rest>.*)")
MARK = re.compile(r"\[(\w+)\]")


@cache
def worker_modules() -> list[ModuleType]:
    """The worker package and every module under it, imported; one that fails to import fails
    the test instead of being passed over."""

    def fail(name: str) -> None:
        raise ImportError(f"walking the worker package could not import {name}")

    walked = pkgutil.walk_packages(worker.__path__, "worker.", onerror=fail)
    return [worker, *(importlib.import_module(info.name) for info in walked)]


@cache
def exception_classes() -> list[type[BaseException]]:
    """Every exception class defined in a worker module, nested in a class or not."""
    seen: set[type] = set()
    for module in worker_modules():
        pending = [value for value in vars(module).values() if isinstance(value, type)]
        while pending:
            kind = pending.pop()
            if kind.__module__ == module.__name__ and kind not in seen:
                seen.add(kind)
                pending += [value for value in vars(kind).values() if isinstance(value, type)]
    exceptions = [kind for kind in seen if issubclass(kind, BaseException)]
    return sorted(exceptions, key=lambda kind: (kind.__module__, kind.__qualname__))


def documented_tree() -> dict[str, tuple[str | None, set[str]]]:
    """worker.errors' docstring tree: each class's parent, and its marks ([stops], ...)."""
    assert errors.__doc__ is not None
    block = errors.__doc__[errors.__doc__.index("    WorkerError(") :].split("\n\n")[0]
    tree: dict[str, tuple[str | None, set[str]]] = {}
    path: list[str] = []
    for line in block.splitlines():
        match = TREE_LINE.fullmatch(line)
        assert match is not None, line
        depth = len(match["indent"]) // 4 + (1 if match["branch"] else 0)
        del path[depth:]
        assert len(path) == depth, line
        tree[match["name"]] = (path[-1] if path else None, set(MARK.findall(match["rest"])))
        path.append(match["name"])
    return tree


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


def test_the_walk_reaches_every_module_of_the_worker_package() -> None:
    package = Path(worker.__file__).parent
    on_disk = {
        ".".join(("worker", *path.relative_to(package).with_suffix("").parts)).removesuffix(
            ".__init__"
        )
        for path in package.rglob("*.py")
    }
    assert {module.__name__ for module in worker_modules()} == on_disk


def test_every_error_class_is_in_worker_errors_under_the_root() -> None:
    """Every exception class a worker module defines lives in worker.errors and derives from
    WorkerError, but for the few whose base is fixed by a library (FOREIGN_BASES)."""
    classes = exception_classes()
    assert len([kind for kind in classes if kind.__module__ == "worker.errors"]) > 5
    for kind in classes:
        if kind.__qualname__ in FOREIGN_BASES:
            base, _why = FOREIGN_BASES[kind.__qualname__]
            assert issubclass(kind, base) and not issubclass(kind, WorkerError), kind
    misplaced = [
        f"{kind.__module__}.{kind.__qualname__}"
        for kind in classes
        if kind.__qualname__ not in FOREIGN_BASES
        and (kind.__module__ != "worker.errors" or not issubclass(kind, WorkerError))
    ]
    assert misplaced == []


def test_the_docstring_tree_is_the_class_tree_with_its_marks() -> None:
    documented = documented_tree()
    defined = {
        kind.__name__: (kind.__base__.__name__ if kind is not WorkerError else None)
        for kind in exception_classes()
        if kind.__module__ == "worker.errors"
    }
    assert {name: parent for name, (parent, _marks) in documented.items()} == defined
    for name, (_parent, marks) in documented.items():
        kind = getattr(errors, name)
        assert (kind.stops_worker, kind.retriable) == ("stops" in marks, "retriable" in marks), name


def test_only_the_documented_errors_stop_the_worker_or_are_retriable() -> None:
    worker_errors = [kind for kind in exception_classes() if issubclass(kind, WorkerError)]
    assert {kind.__name__ for kind in worker_errors if kind.stops_worker} == {
        "DeliveryError",
        "OffsetOrderError",
        "InputLostError",
    }
    assert {kind.__name__ for kind in worker_errors if kind.retriable} == {"HubUnreachable"}
    assert all(
        isinstance(kind.stops_worker, bool) and isinstance(kind.retriable, bool)
        for kind in worker_errors
    )


def test_every_event_error_has_a_code_and_no_other_error_one() -> None:
    """WorkerError and EventError take the code as an argument; every other class takes the
    message alone and sets its code itself: an ErrorCode for an EventError, else None."""
    for kind in exception_classes():
        if not issubclass(kind, WorkerError) or kind in (WorkerError, EventError):
            continue
        error = kind("what went wrong")
        if issubclass(kind, EventError):
            assert isinstance(error.code, ErrorCode), kind
        else:
            assert error.code is None, kind
        assert (error.message, str(error)) == ("what went wrong", "what went wrong")
    late = errors.DeadlineExceeded("the deadline passed before inference started")
    assert late.code is ErrorCode.DEADLINE_EXCEEDED


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
