"""`qa-worker` as a child process of a test: run to its end, or started and never left behind."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.streaming import start_worker_process
from worker.config import Settings


def run_qa_worker(
    *args: str, timeout: float | None = None, prefix: Sequence[str] = (), **options: Any
) -> subprocess.CompletedProcess[str]:
    """`python -m worker ARGS` run to its end with its output captured as text, behind the
    command `prefix` (such as without_permissions_bypass()); `options` go to subprocess.run as
    they are (cwd, env, preexec_fn)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **options,
    )


@contextmanager
def worker_process(
    settings: Settings, log: Path, extra_environment: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`qa-worker run` with `settings`, its output in `log`; killed on the way out if it is
    still running, so a failing test leaves no worker behind."""
    process = start_worker_process(settings, log, extra_environment)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def readiness(port: int) -> tuple[int, str]:
    """/readyz's status and body on `port`; (0, "") while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()
    except OSError:
        return 0, ""
