"""pytest plugin: a test that needs the `export` extra, where it is not installed, is skipped.

On Python 3.12 and 3.13 CI installs the runtime and the `dev` extra only: the export extra pins
torch to the release whose CPU wheel is on this disk for 3.11 alone, and PyPI's torch for Linux is
a CUDA build of several GB. The tests that build their models with torch or compare with
transformers then fail on importing them; such a failure is reported as a skip naming the
package, unless the import came from the shipped package (worker/), which must never need them.

    PYTHONPATH=.ci pytest -p pytest_no_export ...
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

# The export extra's own packages (pyproject.toml); none is in a runtime install.
EXPORT_ONLY = {"torch", "transformers", "onnxscript", "safetensors"}
SHIPPED = Path(__file__).resolve().parent.parent / "worker"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    error = call.excinfo.value if call.excinfo is not None else None
    if not (report.failed and isinstance(error, ModuleNotFoundError)):
        return report
    package = (error.name or "").partition(".")[0]
    if package not in EXPORT_ONLY:
        return report
    # The frame whose import failed (importlib's own frames are left out of tracebacks).
    importer = call.excinfo.traceback[-1] if call.excinfo is not None else None
    if importer is None or Path(importer.path).resolve().is_relative_to(SHIPPED):
        return report
    report.outcome = "skipped"
    reason = f"needs the export extra: {package}"
    report.longrepr = (str(importer.path), importer.lineno + 1, reason)
    return report
