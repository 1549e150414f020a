"""The worker's HTTP endpoint for Prometheus and Kubernetes probes.

    async with HealthServer(metrics, readiness, port=8000) as server:
        ...  # serves until the block ends; server.port is the bound port

Routes:

- `GET /metrics`: `WorkerMetrics.render()` in the Prometheus text format.
- `GET /healthz`: 200 `{"status": "alive"}`. It is answered by the worker's own event loop, so
  a loop that is blocked or gone fails the liveness probe.
- `GET /readyz`: `{"ready": bool, "reason": str}` from the `readiness` callable, 200 when ready
  and 503 when not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..lifecycle import AsyncLifecycle
from .metrics import WorkerMetrics

__all__ = ["HealthServer", "Readiness"]

Readiness = Callable[[], tuple[bool, str]]
"""Says whether the worker is ready, and why (not)."""


class _RequestErrorLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log, with a malformed request as one warning line, not a traceback.

    aiohttp answers such a request 400 by itself; anything that reaches a port can send one, so
    a traceback at ERROR would read as a fault of the worker.
    """

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            reason = exc_info.message.strip().splitlines()[0] if exc_info.message else ""
            self.warning(f"{msg}: malformed HTTP, answered {exc_info.code}: %s", *args, reason)
        else:
            super().exception(msg, *args, exc_info=exc_info, **kwargs)


class HealthServer(AsyncLifecycle):
    """Serves `/metrics`, `/healthz` and `/readyz` on the running event loop."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        readiness: Readiness,
        host: str = "0.0.0.0",
        port: int = 8000,
    ) -> None:
        """`port` 0 binds a free port; read it from `port` after `start()`."""
        self.metrics = metrics
        self.readiness = readiness
        self.host = host
        self._requested_port = port
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound port (of the first socket, should `host` resolve to several addresses)."""
        if self._port is None:
            raise RuntimeError("HealthServer is not started")
        return self._port

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("HealthServer is already started")
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        # Prometheus and the kubelet call every few seconds; an access line per call would
        # bury the worker's own log.
        runner = web.AppRunner(
            app, access_log=None, logger=_RequestErrorLog(logging.getLogger("aiohttp.server"))
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._requested_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Closes the listening socket and open connections; does nothing when not started."""
        runner, self._runner, self._port = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        # Passed as a header: aiohttp's content_type argument refuses a charset parameter.
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": self.metrics.content_type}
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, reason = self.readiness()
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)
