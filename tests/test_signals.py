"""SIGTERM and SIGINT in every phase of start-up: one line naming the phase, no traceback, and
exit 128 + the signal's number, from both entry points.

Each phase is found by what the process shows from outside: the kernel's record of which signals
it catches (/proc/PID/status), then the lines it logs as it enters a phase.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.streaming import worker_settings
from worker.config import settings_environment
from worker.embedded.broker import free_port

PHASE_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 30.0
SCRIPT = Path(sys.executable).with_name("qa-worker")


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (the SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signum - 1) & 1)


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while not condition():
        assert process.poll() is None, f"exited with {process.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} within {PHASE_TIMEOUT_S:.0f} s"
        time.sleep(0.002)


def start(entry: list[str], model: Path, log: Path, log_format: str) -> subprocess.Popen[bytes]:
    # A broker nobody listens on: the worker would wait for it, so no phase is over too soon.
    settings = worker_settings(f"127.0.0.1:{free_port()}", model, log_format=log_format)
    with log.open("wb") as output:
        return subprocess.Popen(
            [*entry, "run"], env=settings_environment(settings), stdout=output, stderr=output
        )


def logged(log: Path, marker: str) -> Callable[[], bool]:
    return lambda: marker in log.read_text(errors="replace")


ENTRIES = {"python -m worker": [sys.executable, "-m", "worker"], "qa-worker": [str(SCRIPT)]}
PHASES = {
    # The earliest moment: the entry point's handlers are in, nothing else is imported yet.
    "signals caught": None,
    "importing the runtime": "importing the runtime",
    "loading the model": "loading the model",
}


@pytest.mark.parametrize(
    ("entry", "phase", "signum", "log_format"),
    [
        *(
            ("python -m worker", phase, signum, "text")
            for phase in PHASES
            for signum in (signal.SIGTERM, signal.SIGINT)
        ),
        ("qa-worker", "signals caught", signal.SIGINT, "text"),
        ("qa-worker", "importing the runtime", signal.SIGTERM, "text"),
        ("qa-worker", "loading the model", signal.SIGTERM, "json"),
    ],
)
def test_a_stop_signal_in_start_up_ends_with_one_line_and_no_traceback(
    exported_models: dict[str, Path],
    tmp_path: Path,
    entry: str,
    phase: str,
    signum: int,
    log_format: str,
) -> None:
    log = tmp_path / "worker.log"
    process = start(ENTRIES[entry], exported_models["bert"], log, log_format)
    try:
        marker = PHASES[phase]
        if marker is None:
            wait_for(lambda: catches(process.pid, signal.SIGTERM), process, "SIGTERM handler")
        else:
            wait_for(logged(log, marker), process, f"the line {marker!r}")
        process.send_signal(signum)
        code = process.wait(EXIT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text(errors="replace")
    assert code == 128 + signum, text
    stops = [line for line in text.splitlines() if "stopped while" in line]
    assert len(stops) == 1, text
    assert f"({signal.Signals(signum).name}); nothing was consumed" in stops[0]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    if log_format == "json":
        # Every line is a JSON object, the stop's an error of the worker's.
        lines = [json.loads(line) for line in text.splitlines()]
        [stop] = [line for line in lines if "stopped while" in line["message"]]
        assert stop["level"] == "ERROR" and stop["logger"] == "worker.interrupts"
