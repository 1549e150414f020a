"""SIGTERM and SIGINT in every phase of start-up: one line naming the phase, no traceback, and
exit 128 + the signal's number, from both entry points.

Each phase is found by what the process shows from outside: the kernel's record of which signals
it blocks or catches (/proc/PID/status), then the lines it logs as it enters a phase. Between
them, a sweep sends the signal at delays spread over the whole start-up, from the entry point's
first line (the interpreter's own start-up before it is out of any package's reach, see
worker.interrupts) to the wait for a broker that never answers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.streaming import worker_settings
from worker.config import settings_environment
from worker.embedded.broker import free_port
from worker.observability.logs import TRACEBACK_PREFIX

PHASE_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 30.0
SCRIPT = Path(sys.executable).with_name("qa-worker")
# What a text log line starts with, and the line the entry point writes before logging is set up.
RECORD_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ |qa-worker: ")


def signal_mask(pid: int, field: str) -> int:
    """A signal mask of process `pid` from /proc (SigBlk: blocked, SigCgt: caught); 0 once gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith(field))


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum`."""
    return bool(signal_mask(pid, "SigCgt:") >> (signum - 1) & 1)


def holds_or_catches(pid: int, signum: int) -> bool:
    """Whether the entry point's first line has run: `signum` is blocked, or caught since."""
    return bool((signal_mask(pid, "SigBlk:") | signal_mask(pid, "SigCgt:")) >> (signum - 1) & 1)


def wait_for(
    condition: Callable[[], bool],
    process: subprocess.Popen[bytes],
    what: str,
    pause_s: float = 0.002,
) -> None:
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while not condition():
        assert process.poll() is None, f"exited with {process.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} within {PHASE_TIMEOUT_S:.0f} s"
        time.sleep(pause_s)


def start(entry: list[str], model: Path, log: Path, log_format: str) -> subprocess.Popen[bytes]:
    # A broker nobody listens on: the worker would wait for it, so no phase is over too soon.
    settings = worker_settings(f"127.0.0.1:{free_port()}", model, log_format=log_format)
    with log.open("wb") as output:
        return subprocess.Popen(
            [*entry, "run"], env=settings_environment(settings), stdout=output, stderr=output
        )


def logged(log: Path, marker: str) -> Callable[[], bool]:
    return lambda: marker in log.read_text(errors="replace")


def stop_and_wait(process: subprocess.Popen[bytes], signum: int) -> int:
    try:
        process.send_signal(signum)
        return process.wait(EXIT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def assert_stopped_in_one_line(text: str, code: int, signum: int) -> None:
    """Exit 128 + signum; every line a record of its own, one of them the stop's; no traceback."""
    assert code == 128 + signum, text
    stops = [line for line in text.splitlines() if "stopped while" in line]
    assert len(stops) == 1, text
    assert f"({signal.Signals(signum).name}); nothing was consumed" in stops[0]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    for line in text.splitlines():
        assert not line.startswith(TRACEBACK_PREFIX) and RECORD_LINE.match(line), text


ENTRIES = {"python -m worker": [sys.executable, "-m", "worker"], "qa-worker": [str(SCRIPT)]}
PHASES = {
    # The earliest moment: the entry point's handlers are in, nothing else is imported yet.
    "signals caught": None,
    "importing the runtime": "importing the runtime",
    "loading the model": "loading the model",
    # Logged once the event loop handles the signals, as the worker goes on to wait for the broker.
    "connecting": "warmed up the model",
}


def test_the_entry_points_import_nothing_before_their_first_line() -> None:
    # `python -m worker` runs the package's __init__ then __main__'s body, the script imports
    # both; only then can `run()` hold the stop signals, so neither may import anything.
    probe = (
        "import sys; before = set(sys.modules); import worker.__main__; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    # -S: without `site`, whose imports (of an editable install's finder, say) could hide one
    # of theirs; the package is then found in the source tree, the working directory.
    loaded = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.split() == ["worker", "worker.__main__"]


# Run in a process of its own: every module imported once `run()` has begun, and whether the
# stop signals were held (blocked) or caught at that moment.
IMPORT_PROBE = """
import signal, sys
import worker.__main__ as entry

imports = []

def caught(signum):
    return signal.getsignal(signum) not in (signal.SIG_DFL, signal.default_int_handler)

def record(event, args):
    if event == "import" and recording:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        stops = (signal.SIGTERM, signal.SIGINT)
        guarded = all(signum in held or caught(signum) for signum in stops)
        imports.append((args[0], guarded))

recording = True
sys.addaudithook(record)
sys.argv = ["qa-worker", "run"]
try:
    sys.exit(entry.run())
finally:
    recording = False
    print(" ".join(f"{name}={guarded}" for name, guarded in imports))
"""


def test_every_import_of_a_run_happens_with_the_stop_signals_held_or_caught(
    tmp_path: Path,
) -> None:
    # A model that does not exist ends the run after the settings are checked, the command line's
    # imports (argparse, the settings, TLS, the model's manifest) all done.
    environ = {key: value for key, value in os.environ.items() if not key.startswith("QA_")}
    environ["QA_MODEL"] = str(tmp_path / "absent" / "model")
    probe = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE], env=environ, capture_output=True, text=True
    )
    assert probe.returncode == 2 and "QA_MODEL" in probe.stderr, probe.stderr
    imports = dict(item.split("=") for item in probe.stdout.split())
    assert {"worker.interrupts", "worker.cli", "worker.preflight"} <= set(imports)
    assert [name for name, guarded in imports.items() if guarded != "True"] == []


@pytest.fixture(scope="module")
def model(export_factory: Callable[[str], Path]) -> Path:
    return export_factory("bert")


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
        ("qa-worker", "connecting", signal.SIGINT, "json"),
    ],
)
def test_a_stop_signal_in_start_up_ends_with_one_line_and_no_traceback(
    model: Path, tmp_path: Path, entry: str, phase: str, signum: int, log_format: str
) -> None:
    log = tmp_path / "worker.log"
    process = start(ENTRIES[entry], model, log, log_format)
    marker = PHASES[phase]
    try:
        if marker is None:
            wait_for(lambda: catches(process.pid, signal.SIGTERM), process, "SIGTERM handler")
        else:
            wait_for(logged(log, marker), process, f"the line {marker!r}")
    finally:
        code = stop_and_wait(process, signum)
    text = log.read_text(errors="replace")
    if log_format == "json":
        # Every line is a JSON object, the stop's an error of the worker's.
        assert code == 128 + signum, text
        lines = [json.loads(line) for line in text.splitlines()]
        [stop] = [line for line in lines if "stopped while" in line["message"]]
        assert f"({signal.Signals(signum).name}); nothing was consumed" in stop["message"]
        assert stop["level"] == "ERROR" and stop["logger"].startswith("worker.")
        assert "Traceback" not in text, text
    else:
        assert_stopped_in_one_line(text, code, signum)


# When to send the signal: so long after the entry point's first line (None) or a line it logs.
# Dense where the imports follow each other fast (where a signal once met `import logging` before
# its handler), spread over importing the runtime (the longest phase), out to the wait for a
# broker, where the event loop handles the signals.
SWEEP: tuple[tuple[str | None, float], ...] = (
    *((None, delay_s) for delay_s in (0, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032)),
    *((None, delay_s) for delay_s in (0.064, 0.128, 0.256)),
    *(("importing the runtime", delay_s) for delay_s in (0, 0.005, 0.02, 0.05, 0.1, 0.2)),
    *(("importing the runtime", delay_s) for delay_s in (0.4, 0.7, 1.0)),
    *(("loading the model", delay_s) for delay_s in (0, 0.01, 0.03)),
    *(("warmed up the model", delay_s) for delay_s in (0.5, 2.0)),
)
# Starts at once: enough to keep the sweep short, few enough that each start-up keeps its pace.
SWEEP_PARALLEL = 3


def stop_after(
    entry: str, signum: int, after: str | None, delay_s: float, model: Path, log: Path
) -> str:
    """Starts `entry`, sends `signum` `delay_s` after the line `after`; the failure, or ''."""
    process = start(ENTRIES[entry], model, log, "text")
    try:
        if after is None:
            wait_for(
                lambda: holds_or_catches(process.pid, signal.SIGTERM),
                process,
                "the first line",
                pause_s=0.0002,
            )
        else:
            wait_for(logged(log, after), process, f"the line {after!r}", 0.001)
        time.sleep(delay_s)
    finally:
        code = stop_and_wait(process, signum)
    text = log.read_text(errors="replace")
    try:
        assert_stopped_in_one_line(text, code, signum)
    except AssertionError as failure:
        name = signal.Signals(signum).name
        return f"{entry}, {name} {delay_s * 1000:g} ms after {after or 'the first line'}: {failure}"
    return ""


def test_a_stop_signal_at_any_moment_of_start_up_ends_with_one_line(
    model: Path, tmp_path: Path
) -> None:
    entries = list(ENTRIES)
    signals = (signal.SIGINT, signal.SIGTERM)
    runs = [
        (
            entries[index % 2],
            signals[index // 2 % 2],
            after,
            delay_s,
            model,
            tmp_path / f"{index}.log",
        )
        for index, (after, delay_s) in enumerate(SWEEP)
    ]
    with ThreadPoolExecutor(SWEEP_PARALLEL) as pool:
        found = [failure for failure in pool.map(lambda run: stop_after(*run), runs) if failure]
    assert not found, "\n\n".join(found)
