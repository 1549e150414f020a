"""The layering of `worker/`: import-linter checks pyproject.toml's [tool.importlinter] contracts.

docs/architecture.md lists the layers; the contracts say them for import-linter: the layers, the
modules of `batching` and `qa` each placed, the transport reaching the QA engine only through
the batcher and `worker.qa`, no embedded broker on the production worker's path, and no import
circle inside a package. Every import counts, a lazy one inside a function or one under
TYPE_CHECKING too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_worker_keeps_the_contracts_of_its_layers(capsys: pytest.CaptureFixture[str]) -> None:
    # importlinter.api sets up import-linter's adapters on import. The check runs through the
    # use case rather than importlinter.cli.lint_imports, which reconfigures logging for the
    # whole process (disabling every logger already made, the worker's included).
    import importlinter.api  # noqa: F401
    from importlinter.application.use_cases import lint_imports

    kept = lint_imports(config_filename=str(ROOT / "pyproject.toml"), cache_dir=None, no_logo=True)
    assert kept, capsys.readouterr().out
