"""Collectors on loopback for tests of the OTLP exporter path: one that receives, one that never
answers, one that refuses; and an OTEL_ environment of the test's own."""

from __future__ import annotations

import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint on loopback that keeps every request it decodes."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        self.content_types: list[str] = []
        self.received = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.paths.append(self.path)
                receiver.content_types.append(self.headers["Content-Type"])
                receiver.requests.append(ExportTraceServiceRequest.FromString(body))
                # Before answering: the exporter returns once it has the answer, and the test
                # then looks at what was received.
                receiver.received.set()
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def endpoint(self) -> str:
        """The base URL, as OTEL_EXPORTER_OTLP_ENDPOINT takes it."""
        return self.url.removesuffix("/v1/traces")

    def resources(self) -> list[tuple[dict[str, str], list[Span]]]:
        """(resource attributes, spans) of every resource in the requests received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                spans = [span for scope in resource_spans.scope_spans for span in scope.spans]
                found.append((attributes, spans))
        return found


class _HeldPort:
    """A loopback port held by a bound socket, given to the exporter as its collector."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._socket.close()


class SilentCollector(_HeldPort):
    """A collector that accepts TCP connections and never answers: a socket that listens and is
    never read, so the kernel completes every handshake and the exporter waits for a reply."""

    def __init__(self) -> None:
        super().__init__()
        self._socket.listen(64)


class RefusingCollector(_HeldPort):
    """A collector address where nothing listens: every connection is refused.

    Bound and not listening: the port stays ours, and a connect is refused."""


def clear_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Removes every OTEL_ variable for the test: only what the test sets configures the SDK,
    nothing from the machine that runs it."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
