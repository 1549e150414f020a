"""`qa-worker run` as a child process: start to ready, metrics, peak RSS, stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ..config import Settings, settings_environment
from ..embedded.process import file_tail
from ..errors import BenchError
from ..lifecycle import AsyncLifecycle
from ..observability.http import METRICS_MAX_AGE_S
from .report import note

STARTUP_TIMEOUT_S = 120.0
READY_POLL_S = 0.05


STOP_MARGIN_S = 30.0


LOG_TAIL_LINES = 30


class WorkerProcess(AsyncLifecycle):
    """`qa-worker run` as a child process; `startup_s` runs from spawning it to /readyz 200."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        """`environ`, default this process's, is the child's besides its QA_ settings."""
        self.settings = settings
        self._environ = environ
        self.startup_s = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._log = tempfile.TemporaryFile(prefix="qa-bench-worker-")  # noqa: SIM115 (stop())
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        began = time.perf_counter()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=settings_environment(self.settings, self._environ),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            await self._wait_ready(began + STARTUP_TIMEOUT_S)
        except BaseException:
            # `async with` calls stop() only after a start() that returned.
            await self.stop()
            raise
        self.startup_s = time.perf_counter() - began

    async def _wait_ready(self, deadline: float) -> None:
        assert self._session is not None
        while True:
            self.check_alive()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._session.get(self._url("/readyz")) as response:
                    if response.status == 200:
                        return
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"the worker was not ready within {STARTUP_TIMEOUT_S:.0f} s; its log ends "
                    f"with:\n{self.log_tail()}"
                )
            await asyncio.sleep(READY_POLL_S)

    def _url(self, path: str) -> str:
        return f"http://{self.settings.http_host}:{self.settings.http_port}{path}"

    def check_alive(self) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            raise BenchError(
                f"the worker exited with code {self._process.returncode}; its log ends with:\n"
                f"{self.log_tail()}"
            )

    def log_tail(self) -> str:
        if self._log is None:
            return "(no log)"
        return file_tail(self._log, LOG_TAIL_LINES) or "(empty log)"

    async def counters(self, *, current: bool = True) -> dict[str, float]:
        """The worker's metric samples, as `metric_totals` reads them.

        The worker serves one render for up to `METRICS_MAX_AGE_S`; `current` waits that long
        first, so that what is read was rendered after this call (a phase's counts before and
        after it). A gauge sampled now and then can take a render a second old.
        """
        assert self._session is not None
        if current:
            await asyncio.sleep(METRICS_MAX_AGE_S)
        async with self._session.get(self._url("/metrics")) as response:
            return metric_totals(await response.text())

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def peak_rss_mb(self) -> float | None:
        """The kernel's high-water mark of the worker's RSS (Linux); None elsewhere.

        The kernel tracks every page, so no peak between two samples is missed.
        """
        assert self._process is not None
        try:
            status = Path(f"/proc/{self._process.pid}/status").read_text(encoding="utf-8")
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL once the worker's drain timeout and a margin have passed."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(
                    process.wait, self.settings.drain_timeout_s + STOP_MARGIN_S
                )
            except subprocess.TimeoutExpired:
                process.kill()
                code = await asyncio.to_thread(process.wait)
            if code != 0:
                note(f"the worker exited with code {code}; its log ends with:\n{self.log_tail()}")
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._log is not None:
            self._log.close()
            self._log = None


def metric_totals(exposition: str) -> dict[str, float]:
    """Prometheus text's samples by name, summed over labels, and each labelled sample also
    under `name{label=value,...}` (labels sorted), which keeps a histogram's buckets apart."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
            if sample.labels:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                totals[f"{sample.name}{{{labels}}}"] = sample.value
    return totals
