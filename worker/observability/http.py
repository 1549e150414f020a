"""The worker's HTTP endpoint for Prometheus and Kubernetes probes.

    async with HealthServer(metrics, readiness, port=8000) as server:
        ...  # serves until the block ends; server.port is the bound port
    HealthServer.from_settings(metrics, readiness, settings)  # host, port and limits from them

Routes (GET, or HEAD for the headers alone):

- `GET /metrics`: `WorkerMetrics.render()` in the Prometheus text format, rendered at most once
  per `metrics_max_age_s` (`METRICS_MAX_AGE_S` from the settings): a render takes milliseconds
  of the event loop, and anyone who reaches the port could ask for thousands a second.
- `GET /healthz`: 200 `{"status": "alive"}`. It is answered by the worker's own event loop, so
  a loop that is blocked or gone fails the liveness probe.
- `GET /readyz`: `{"ready": bool, "reason": str}` from the `readiness` callable, 200 when ready
  and 503 when not.

The server is `bounded_http.BoundedHttpServer`: slow, idle and oversized clients are dropped
within seconds, and its connections are bounded by the open-file limit (`connection_bound`), so
that whoever reaches the port can neither take the worker's file descriptors nor keep the
probes from being answered. Its counts (connections accepted, and closed by the server, by
reason) are exported as metrics. An address that cannot be listened on (the port in use) is a
`ConfigError` naming the settings.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import resource
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..config import Settings, describe
from ..errors import ConfigError
from ..lifecycle import AsyncLifecycle
from .bounded_http import (
    BoundedHttpServer,
    HttpLimits,
    HttpServerStats,
    Request,
    Response,
    connection_bound,
)
from .metrics import WorkerMetrics

__all__ = ["HealthServer", "HttpLimits", "Readiness"]

Readiness = Callable[[], tuple[bool, str]]
"""Says whether the worker is ready, and why (not)."""

log = logging.getLogger(__name__)

_JSON = "application/json; charset=utf-8"
_METHODS = ("GET", "HEAD")
# A scrape sees values at most this old. Prometheus scrapes every 15 s or more and rates over
# minutes, so a second is nothing to it, while it bounds what renders cost the loop to one a
# second however many requests come.
METRICS_MAX_AGE_S = 1.0
# Listening on the address failed for a reason the settings can fix.
_ADDRESS_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def open_file_limit() -> int | None:
    """RLIMIT_NOFILE's soft limit, the one that makes accept() and connect() fail; None: none."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


class HealthServer(AsyncLifecycle):
    """Serves `/metrics`, `/healthz` and `/readyz` on the running event loop."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        readiness: Readiness,
        host: str = "0.0.0.0",
        port: int = 8000,
        limits: HttpLimits | None = None,
        metrics_max_age_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`port` 0 binds a free port; read it from `port` after `start()`. `limits` default to
        the settings' defaults; their `max_connections` is resolved at `start()`, against the
        open-file limit then. `/metrics` serves a render until it is `metrics_max_age_s` old by
        `clock` (monotonic seconds); 0 renders at every request."""
        self.metrics = metrics
        self.readiness = readiness
        self.host = host
        self.limits = limits or HttpLimits()
        self.metrics_max_age_s = metrics_max_age_s
        self._clock = clock
        self._rendered: bytes | None = None
        self._rendered_at = 0.0
        self._requested_port = port
        self._server: BoundedHttpServer | None = None
        self._routes: dict[str, Callable[[], Response]] = {
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }

    @classmethod
    def from_settings(
        cls,
        metrics: WorkerMetrics,
        readiness: Readiness,
        settings: Settings,
        host: str | None = None,
        port: int | None = None,
    ) -> HealthServer:
        """The server `settings` describe (`host` and `port`, when given, instead of theirs)."""
        limits = HttpLimits(
            max_connections=settings.http_max_connections,
            idle_timeout_s=settings.http_idle_timeout_s,
            request_timeout_s=settings.http_request_timeout_s,
        )
        return cls(
            metrics,
            readiness,
            settings.http_host if host is None else host,
            settings.http_port if port is None else port,
            limits,
            METRICS_MAX_AGE_S,
        )

    @property
    def port(self) -> int:
        """The bound port (of every address `host` resolves to)."""
        return self._started().port

    @property
    def connection_bound(self) -> int:
        """The most connections held open at once, as resolved at `start()`."""
        return self._started().limits.max_connections

    @property
    def open_connections(self) -> int:
        return self._started().open_connections

    @property
    def stats(self) -> HttpServerStats:
        """Connections accepted, and closed by the server (evicted, timed out, refused)."""
        return self._started().stats

    def _started(self) -> BoundedHttpServer:
        if self._server is None:
            raise RuntimeError("HealthServer is not started")
        return self._server

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("HealthServer is already started")
        bound = connection_bound(self.limits.max_connections, open_file_limit())
        limits = dataclasses.replace(self.limits, max_connections=bound)
        server = BoundedHttpServer(self._respond, limits, self.host, self._requested_port, log)
        try:
            await server.start()
        except OSError as error:
            if not isinstance(error, socket.gaierror) and error.errno not in _ADDRESS_ERRORS:
                raise
            raise ConfigError(
                f"cannot listen for HTTP on {self.host}:{self._requested_port} "
                f"({error.strerror or error}): choose another {describe('http_port')} or "
                f"{describe('http_host')}"
            ) from None
        self._server = server
        self.metrics.watch_http(lambda: server.stats)

    async def stop(self) -> None:
        """Closes the listening sockets and open connections; does nothing when not started."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    def _respond(self, request: Request) -> Response:
        # Prometheus and the kubelet call every few seconds; an access line per call would
        # bury the worker's own log, so there is none.
        try:
            path = urlsplit(request.target).path
        except ValueError:  # an unbalanced bracket where a host would be: http://[/healthz
            return Response(400, b"the target is not a URL\n")
        route = self._routes.get(path)
        if route is None:
            return Response(404, b"not found\n")
        if request.method not in _METHODS:
            return Response(405, b"method not allowed\n", headers=(("Allow", ", ".join(_METHODS)),))
        return route()

    def _metrics(self) -> Response:
        now = self._clock()
        if self._rendered is None or now - self._rendered_at >= self.metrics_max_age_s:
            self._rendered, self._rendered_at = self.metrics.render(), now
        return Response(200, self._rendered, self.metrics.content_type)

    def _healthz(self) -> Response:
        return _json(200, {"status": "alive"})

    def _readyz(self) -> Response:
        ready, reason = self.readiness()
        return _json(200 if ready else 503, {"ready": ready, "reason": reason})


def _json(status: int, value: Any) -> Response:
    return Response(status, json.dumps(value).encode(), _JSON)
