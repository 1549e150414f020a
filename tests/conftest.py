"""Shared fixtures: small random-weight QA checkpoints and their exports, built once per session.

Every test has one kind, which `-m` selects: `reference`, `image` and `broker` are marked where the
tests are; every other test is `unit` (marked here). `quick` marks the short run the README gives.

Every run draws its generated cases (hypothesis) from one seed, chosen afresh unless
`--hypothesis-seed` gives it, and printed at the start and again after a failure, so a failing
draw can be run again exactly.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import core

from parity.models import build_checkpoint

# The architectures the answer-parity tests run on; DistilBERT is covered by the export tests.
PARITY_KINDS = ("bert", "mobilebert", "roberta")

# The kinds marked where the tests are; a test with none of them is a unit test.
MARKED_KINDS = ("reference", "image", "broker")
# The quick run (`-m quick`): an install builds three small models, answers with them, and
# checks the settings, the command line, the event contracts and the docs' links.
QUICK = ("test_config.py", "cli/test_cli.py", "events/", "qa/test_engine.py", "test_docs.py")
TESTS = Path(__file__).parent
# How long before pytest-timeout ends a hung async test its tasks' stacks are printed.
TASKS_SHOWN_BEFORE_TIMEOUT_S = 20.0
# The kinds that may first build a virtual environment (parity/reference.py's install timeout
# is 30 minutes, its run's 10) and so get longer than pyproject.toml's timeout.
VENV_BUILDING_KINDS = ("reference", "image")
VENV_BUILDING_TIMEOUT_S = 2400


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--hypothesis-seed") is None:
        core.global_force_seed = random.SystemRandom().randrange(2**32)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kinds = [kind for kind in MARKED_KINDS if item.get_closest_marker(kind) is not None]
        if len(kinds) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(kinds)}: one kind")
        if not kinds:
            item.add_marker(pytest.mark.unit)
        if set(kinds) & set(VENV_BUILDING_KINDS):
            item.add_marker(pytest.mark.timeout(VENV_BUILDING_TIMEOUT_S))
        if item.path.relative_to(TESTS).as_posix().startswith(QUICK):
            item.add_marker(pytest.mark.quick)


def _seed_line() -> str:
    seed = core.global_force_seed
    return f"hypothesis seed: {seed} (run these draws again with --hypothesis-seed={seed})"


def pytest_report_header(config: pytest.Config) -> str:
    return _seed_line()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
    if terminalreporter.stats.get("failed"):
        terminalreporter.write_line(_seed_line())


@pytest.fixture(autouse=True)
def _tasks_shown_before_timeout(request: pytest.FixtureRequest) -> None:
    """Prints where each task of a hung async test waits, shortly before pytest-timeout ends it:
    the timeout's own traceback shows only the event loop's poll, not the await that hangs."""
    if inspect.iscoroutinefunction(request.function):
        request.getfixturevalue("_tasks_shown_on_the_test_loop")


@pytest.fixture
async def _tasks_shown_on_the_test_loop(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    marker = request.node.get_closest_marker("timeout")
    timeout = float(marker.args[0] if marker and marker.args else request.config.getini("timeout"))
    if timeout <= 0:
        yield
        return
    shown = asyncio.get_running_loop().call_later(
        max(timeout - TASKS_SHOWN_BEFORE_TIMEOUT_S, timeout / 2), _print_tasks
    )
    yield
    shown.cancel()


def _print_tasks() -> None:
    tasks = asyncio.all_tasks()
    print(f"=== still running near the test's timeout: {len(tasks)} tasks", file=sys.stderr)
    for task in tasks:
        print(f"--- {task!r}", file=sys.stderr)
        task.print_stack(file=sys.stderr)


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """kind -> a Hugging Face checkpoint folder of that kind (see parity/models.py)."""
    root = tmp_path_factory.mktemp("checkpoints")
    built: dict[str, Path] = {}

    def checkpoint(kind: str) -> Path:
        if kind not in built:
            built[kind] = build_checkpoint(kind, root / kind)
        return built[kind]

    return checkpoint


@pytest.fixture(scope="session")
def export_factory(
    checkpoint_factory: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """kind -> a prepared model folder (fp32 and int8) exported from `checkpoint_factory(kind)`."""
    from worker.model.export import export_model

    root = tmp_path_factory.mktemp("exported")
    exported: dict[str, Path] = {}

    def export(kind: str) -> Path:
        if kind not in exported:
            folder = root / kind
            export_model(str(checkpoint_factory(kind)), folder, quantize="int8")
            exported[kind] = folder
        return exported[kind]

    return export


@pytest.fixture(scope="session")
def exported_models(export_factory: Callable[[str], Path]) -> dict[str, Path]:
    """kind -> exported folder (fp32 + int8), for each of PARITY_KINDS."""
    return {kind: export_factory(kind) for kind in PARITY_KINDS}
