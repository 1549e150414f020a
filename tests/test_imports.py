"""What imports what: each `qa-worker` command loads its own body (the bench's tools only for
`bench`), and neither the runtime nor the tools import a test module.

The command cases run in a fresh interpreter, so that nothing another test imported counts.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs `main(argv)` and prints the exit code and the worker modules loaded by then.
PROBE = """
import json, sys
from worker.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as stop:
    code = stop.code
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("worker", "onnxruntime"))
print(json.dumps({"code": code, "loaded": loaded}))
"""


def run_cli(*argv: str) -> tuple[int, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    outcome = json.loads(done.stdout.splitlines()[-1])
    return outcome["code"], set(outcome["loaded"])


def bench_modules(loaded: set[str]) -> set[str]:
    return {name for name in loaded if name == "worker.bench" or name.startswith("worker.bench.")}


def test_help_loads_no_command_and_no_runtime() -> None:
    code, loaded = run_cli("--help")
    assert code == 0
    assert not bench_modules(loaded)
    assert not {name for name in loaded if name.startswith("worker.commands.")}
    # The configuration does not pull in the QA layer, nor ONNX Runtime with it.
    assert "worker.qa" not in loaded
    assert "onnxruntime" not in loaded


def test_bench_help_loads_no_bench_module() -> None:
    code, loaded = run_cli("bench", "--help")
    assert code == 0
    assert not bench_modules(loaded)


def test_answer_loads_its_own_body_and_not_the_bench(
    export_factory: Callable[[str], Path],
) -> None:
    model = export_factory("bert")
    code, loaded = run_cli(
        "answer", "--model", str(model), "--question", "Who?", "--context", "Ada wrote it."
    )
    assert code == 0
    assert "worker.commands.answer" in loaded
    assert not bench_modules(loaded)
    assert "worker.commands.run" not in loaded


@pytest.mark.parametrize("argv", [("--version",), ("consume", "--help")])
def test_other_entries_load_no_bench(argv: tuple[str, ...]) -> None:
    _, loaded = run_cli(*argv)
    assert not bench_modules(loaded)


def test_bench_loads_the_bench_when_it_runs(tmp_path: Path) -> None:
    """The probe sees a lazy import: running `bench` does load its package."""
    # A Hub id passes the settings' check (worker.preflight), which a folder with no model in it
    # would not, so that the command's body runs.
    model = ("--model", "org/name", "--model-cache", str(tmp_path / "cache"))
    code, loaded = run_cli("bench", *model, "--squad", str(tmp_path / "none"))
    # No such file: the bench refuses it as a configuration error before measuring anything.
    assert code == 2
    assert "worker.bench.command" in loaded


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("folder", ["worker", "parity", "benchmarks"])
def test_no_test_module_is_imported_outside_the_tests(folder: str) -> None:
    sources = sorted((ROOT / folder).rglob("*.py"))
    assert sources
    importing_tests = {
        str(path.relative_to(ROOT)): sorted(
            name for name in imported_modules(path) if name.split(".")[0] == "tests"
        )
        for path in sources
    }
    assert not {path: names for path, names in importing_tests.items() if names}
