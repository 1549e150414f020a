"""The reference: transformers' question-answering pipeline, run in its own virtual environment.

The worker's answers are checked against transformers 4.57.6 on torch 2.13.0. Those run in a
separate interpreter so the versions under test in the development environment cannot leak into
the reference. QA_REFERENCE_PYTHON names a ready interpreter; otherwise one is built once under
$QA_TEST_CACHE (default ~/.cache/kafka-qa-worker-tests) and reused while its pins stay the same.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# pip takes torch from the machine's local CPU wheel when exactly this version is asked for.
REFERENCE_PINS = ("torch==2.13.0", "transformers==4.57.6")
PIPELINE_SCRIPT = Path(__file__).with_name("reference_pipeline.py")
MARKER_NAME = "reference-pins.json"
INSTALL_TIMEOUT_S = 1800
RUN_TIMEOUT_S = 600


class ReferenceRunError(RuntimeError):
    """The reference environment could not be built or the reference script failed."""


def cache_folder() -> Path:
    return Path(os.environ.get("QA_TEST_CACHE", "~/.cache/kafka-qa-worker-tests")).expanduser()


def reference_python() -> Path:
    """The interpreter of a virtual environment with the reference pins installed."""
    given = os.environ.get("QA_REFERENCE_PYTHON")
    if given:
        python = Path(given)
        if not python.is_file():
            raise ReferenceRunError(
                f"QA_REFERENCE_PYTHON={given} is not a file; unset it or fix it"
            )
        return python
    cache = cache_folder()
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / "reference-venv"
    wanted = _marker_text()
    # Another pytest process may be checking or building the same venv: one at a time.
    with (cache / "reference-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = venv / MARKER_NAME
        if not (marker.is_file() and marker.read_text(encoding="utf-8") == wanted):
            _build_venv(venv)
            # Written last: a venv whose build was interrupted has no marker and is rebuilt.
            marker.write_text(wanted, encoding="utf-8")
    return venv / "bin" / "python"


def _marker_text() -> str:
    interpreter = f"{sys.version_info.major}.{sys.version_info.minor}"
    return json.dumps({"python": interpreter, "pins": list(REFERENCE_PINS)}, indent=2) + "\n"


def _build_venv(venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *REFERENCE_PINS],
    ]
    for command in steps:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            raise ReferenceRunError(
                f"building the reference venv failed at `{' '.join(command)}` "
                f"(exit {done.returncode}):\n{done.stderr[-4000:]}\n"
                "set QA_REFERENCE_PYTHON to an interpreter that has "
                f"{' and '.join(REFERENCE_PINS)} to use a ready one"
            )


def run_reference(model_dir: Path, cases: list[dict]) -> list[dict]:
    """Answers each case with the reference pipeline, one at a time, in order.

    A case is {"question": ..., "context": ..., **pipeline kwargs}. Each result is
    {"answers": [{"answer", "score", "start", "end"}, ...]} or {"error": "Type: message"}.
    """
    python = reference_python()
    with tempfile.TemporaryDirectory(prefix="qa-reference-") as work:
        cases_path = Path(work) / "cases.json"
        results_path = Path(work) / "results.json"
        cases_path.write_text(json.dumps(cases, ensure_ascii=False), encoding="utf-8")
        done = subprocess.run(
            [str(python), str(PIPELINE_SCRIPT), str(model_dir), str(cases_path), str(results_path)],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            env=_reference_environment(),
            check=False,
        )
        if done.returncode != 0:
            raise ReferenceRunError(
                f"the reference pipeline failed (exit {done.returncode}) on {model_dir}:\n"
                f"{done.stderr[-4000:]}"
            )
        results = json.loads(results_path.read_text(encoding="utf-8"))
    if len(results) != len(cases):
        raise ReferenceRunError(f"the reference answered {len(results)} of {len(cases)} cases")
    return results


def _reference_environment() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        # The reference interpreter must see only its own packages.
        if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    # Models come from local folders only; never wait on a hub that cannot be reached.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1")
    return env
