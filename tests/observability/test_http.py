"""The health server under abuse: connections at and over the bound, timeouts, sizes, probes.

Timeouts here are short (0.5 s) so that the tests are quick; each timing assertion allows the
loaded machine two seconds more than the limit on the late side, and none on the early side
beyond the event loop's clock resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable

import pytest

from worker.config import Settings
from worker.errors import ConfigError
from worker.observability.bounded_http import (
    DEFAULT_CONNECTION_CAP,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    BoundedHttpServer,
    HttpLimits,
    Response,
    connection_bound,
)
from worker.observability.http import HealthServer
from worker.observability.metrics import WorkerMetrics

LATE_MARGIN_S = 2.0
EARLY_MARGIN_S = 0.01
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: test\r\n"


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Waits for `condition` (something the server shows), failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


class Client:
    """One raw connection to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names) and body."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), LATE_MARGIN_S)
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        fields = [line.split(": ", 1) for line in lines]
        headers = {name.lower(): value for name, value in fields}
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), LATE_MARGIN_S)
        return int(status_line.split(" ")[1]), headers, body

    async def get(self, path: str, close: bool = False) -> int:
        connection = "Connection: close\r\n" if close else ""
        self.send(f"GET {path} HTTP/1.1\r\nHost: test\r\n{connection}\r\n".encode())
        return (await self.response())[0]

    async def wait_closed(self, timeout_s: float) -> float:
        """Reads (and drops) until the server closes; the monotonic time it did."""
        async with asyncio.timeout(timeout_s):
            with contextlib.suppress(ConnectionResetError):
                while await self.reader.read(65536):
                    pass
        return time.monotonic()

    def close(self) -> None:
        self.writer.transport.abort()


def limits(**overrides: float) -> HttpLimits:
    values: dict[str, float] = {
        "max_connections": 4,
        "idle_timeout_s": 30.0,
        "request_timeout_s": 30.0,
    }
    values.update(overrides)
    return HttpLimits(
        max_connections=int(values["max_connections"]),
        idle_timeout_s=values["idle_timeout_s"],
        request_timeout_s=values["request_timeout_s"],
    )


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def health_server(**overrides: float) -> HealthServer:
    """A server, not yet started, within `limits(**overrides)`, whose worker is never ready."""
    return HealthServer(
        WorkerMetrics(), lambda: (False, "not yet"), "127.0.0.1", 0, limits(**overrides)
    )


@pytest.fixture
async def server() -> AsyncIterator[HealthServer]:
    async with health_server() as started:
        yield started


async def open_client(server: HealthServer, clients: list[Client]) -> Client:
    """A connection to `server`, closed when the test ends."""
    client = await Client.connect(server.port)
    clients.append(client)
    return client


async def connect(server: HealthServer, clients: list[Client], data: bytes = PARTIAL) -> Client:
    """A connection that has sent `data`, once the server holds it."""
    expected = server.open_connections + 1
    evicted = server.stats.evicted
    client = await open_client(server, clients)
    client.send(data)
    await until(lambda: server.open_connections == expected or server.stats.evicted > evicted)
    return client


async def assert_answered_once_ended(begun: list[Client]) -> None:
    """Each connection, held with its request begun (PARTIAL), is answered once it ends it."""
    for client in begun:
        client.send(b"\r\n")
        assert (await client.response())[0] == 200


# ---------------------------------------------------------------------------------------------
# The connection bound.


async def test_connections_up_to_the_bound_are_all_kept(
    server: HealthServer, clients: list[Client]
) -> None:
    slow = [await connect(server, clients) for _ in range(server.connection_bound)]
    assert server.open_connections == server.connection_bound == 4
    assert server.stats.evicted == 0
    await assert_answered_once_ended(slow)


async def test_one_over_the_bound_closes_the_connection_waiting_longest(
    server: HealthServer, clients: list[Client]
) -> None:
    oldest, *others = [await connect(server, clients) for _ in range(4)]
    newest = await open_client(server, clients)
    assert await newest.get("/healthz") == 200
    await oldest.wait_closed(LATE_MARGIN_S)
    assert server.stats.evicted == 1
    assert server.open_connections == 4
    await assert_answered_once_ended(others)


async def test_a_client_that_makes_progress_is_not_the_one_closed(
    server: HealthServer, clients: list[Client]
) -> None:
    first = await connect(server, clients, b"")
    stuck = await connect(server, clients)
    await connect(server, clients)
    await connect(server, clients)
    # The first connection answers a request: its wait for the next one began after the others'.
    assert await first.get("/healthz") == 200
    await connect(server, clients)
    await stuck.wait_closed(LATE_MARGIN_S)
    assert await first.get("/readyz") == 503
    assert server.stats.evicted == 1


async def test_an_idle_connection_whose_request_has_come_is_answered_not_closed(
    server: HealthServer, clients: list[Client]
) -> None:
    oldest = await connect(server, clients, b"")
    for _ in range(3):
        await connect(server, clients)
    # Both reach the server before its loop polls again, the new connection first: accepting it
    # (over the bound) finds the oldest connection's request unread.
    newcomer = socket.create_connection(("127.0.0.1", server.port))
    try:
        oldest.send(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert (await oldest.response())[0] == 200
        await until(lambda: server.stats.evicted == 1)
        assert server.open_connections == 4
    finally:
        newcomer.close()


async def test_a_flood_of_evictions_is_one_warning_then_a_count(
    clients: list[Client], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with health_server(max_connections=1) as server:
        for _ in range(6):
            await connect(server, clients)
        assert server.stats.evicted == 5
        lines = [r.getMessage() for r in caplog.records if "at the bound" in r.getMessage()]
        assert len(lines) == 1 and "more like this" not in lines[0]
        # Once the interval has passed, the next line counts those left out.
        monkeypatch.setattr("worker.observability.bounded_http.WARNING_INTERVAL_S", 0.0)
        await connect(server, clients)
        lines = [r.getMessage() for r in caplog.records if "at the bound" in r.getMessage()]
        assert len(lines) == 2 and "(4 more like this in 0 s)" in lines[1]


# Slow clients in a process of their own, as they would be: connect, send the start of a
# request and one more header line every 0.1 s, never the end; connect again once dropped. One
# line on stdout once each has connected; they stop when stdin closes.
SLOW_CLIENTS = """
import asyncio, sys

async def main(port, count):
    stop = asyncio.Event()
    connected = 0
    async def slow():
        nonlocal connected
        first = True
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            if first:
                first = False
                connected += 1
                if connected == count:
                    print("connected", flush=True)
            try:
                writer.write(b"GET /healthz HTTP/1.1\\r\\nHost: slow\\r\\n")
                while not stop.is_set():
                    try:
                        if not await asyncio.wait_for(reader.read(1024), 0.1):
                            break
                    except asyncio.TimeoutError:
                        writer.write(b"X-Slow: 1\\r\\n")
            except OSError:
                pass
            finally:
                writer.transport.abort()
    tasks = [asyncio.create_task(slow()) for _ in range(count)]
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


async def test_probes_answer_within_a_second_with_the_bound_full_of_slow_clients() -> None:
    server = health_server(max_connections=50)
    await server.start()
    flood = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SLOW_CLIENTS,
        str(server.port),
        "150",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert flood.stdin is not None and flood.stdout is not None
    latencies = []
    most_open = 0
    loop = asyncio.get_running_loop()
    try:
        assert await asyncio.wait_for(flood.stdout.readline(), 30) == b"connected\n"
        # Three times the bound: it stays full, and slow clients are being closed for new ones.
        await until(lambda: server.stats.evicted >= 100, timeout_s=30)
        evicted_before = server.stats.evicted
        for path, status in [("/healthz", 200), ("/readyz", 503)] * 10:
            # On a thread, as the kubelet would from outside: its request goes out as soon as
            # it is connected, not after turns of the event loop the server is running on.
            answered, took = await loop.run_in_executor(None, blocking_probe, server.port, path)
            assert answered == status
            latencies.append(took)
            most_open = max(most_open, server.open_connections)
        evicted_while_probing = server.stats.evicted - evicted_before
    finally:
        flood.stdin.close()
        await flood.wait()
        stats = server.stats
        await server.stop()
    assert max(latencies) < 1.0, latencies
    assert most_open <= 50
    assert evicted_while_probing > 0
    assert stats.timed_out == 0  # the slow clients were closed for new ones, not by timeouts


def blocking_probe(port: int, path: str) -> tuple[int, float]:
    """A kubelet-like probe: its status, and the seconds from connecting to the last byte."""
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return int(reply.split(b" ")[1]), time.monotonic() - began


# ---------------------------------------------------------------------------------------------
# Timeouts.


@pytest.mark.parametrize(
    ("start", "trickled"),
    [
        (b"GET /healthz HTTP/1.1\r\n", b"X-Slow: 1\r\n"),
        (PARTIAL + b"Content-Length: 100\r\n\r\n", b"b"),
    ],
    ids=["headers", "body"],
)
async def test_a_request_slower_than_the_request_timeout_is_dropped(
    clients: list[Client], start: bytes, trickled: bytes
) -> None:
    """A client that sends the start of a request, then a little more every 0.1 s: closed at
    the request timeout, however much it keeps sending."""
    async with health_server(request_timeout_s=0.5) as server:
        client = await open_client(server, clients)
        began = time.monotonic()
        client.send(start)

        async def trickle() -> None:
            with contextlib.suppress(OSError):
                for _ in range(100):
                    await asyncio.sleep(0.1)
                    client.send(trickled)

        trickling = asyncio.create_task(trickle())
        closed = await client.wait_closed(0.5 + LATE_MARGIN_S)
        trickling.cancel()
        assert closed - began >= 0.5 - EARLY_MARGIN_S
        assert server.stats.timed_out == 1
        assert server.open_connections == 0


async def test_headers_trickled_in_within_the_request_timeout_are_answered(
    clients: list[Client],
) -> None:
    async with health_server(request_timeout_s=2.0) as server:
        client = await open_client(server, clients)
        for line in (b"GET /healthz HTTP/1.1\r\n", b"Host: test\r\n", b"X: 1\r\n", b"\r\n"):
            client.send(line)
            await asyncio.sleep(0.05)
        assert (await client.response())[0] == 200
        assert server.stats.timed_out == 0


async def test_an_idle_keep_alive_connection_is_closed(clients: list[Client]) -> None:
    async with health_server(idle_timeout_s=0.5) as server:
        client = await open_client(server, clients)
        assert await client.get("/healthz") == 200
        answered = time.monotonic()
        closed = await client.wait_closed(0.5 + LATE_MARGIN_S)
        assert closed - answered >= 0.5 - EARLY_MARGIN_S
        assert server.open_connections == 0


async def test_a_connection_reused_within_the_idle_timeout_is_served(
    clients: list[Client],
) -> None:
    async with health_server(idle_timeout_s=2.0) as server:
        client = await open_client(server, clients)
        assert await client.get("/healthz") == 200
        await asyncio.sleep(0.1)
        assert await client.get("/readyz") == 503
        assert server.stats.accepted == 1


async def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(
    clients: list[Client],
) -> None:
    async with health_server(idle_timeout_s=0.5) as server:
        began = time.monotonic()
        client = await open_client(server, clients)
        closed = await client.wait_closed(0.5 + LATE_MARGIN_S)
        assert closed - began >= 0.5 - EARLY_MARGIN_S
        assert server.open_connections == 0


async def test_a_response_the_client_does_not_take_is_dropped() -> None:
    # 16 MB: more than the kernel buffers of both ends hold, so the server must wait to send.
    body = b"m" * (16 * 1024 * 1024)
    server = BoundedHttpServer(
        lambda request: Response(200, body),
        limits(request_timeout_s=0.5),
        "127.0.0.1",
        0,
        logging.getLogger("test"),
    )
    await server.start()
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        sock.send(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n")
        began = time.monotonic()
        await until(lambda: server.open_connections == 0, timeout_s=0.5 + LATE_MARGIN_S)
        assert time.monotonic() - began >= 0.5 - EARLY_MARGIN_S
        assert server.stats.timed_out == 1
        sock.close()
    finally:
        await server.stop()


# ---------------------------------------------------------------------------------------------
# Sizes.


async def test_a_body_at_the_limit_is_answered_and_one_byte_more_is_refused_413(
    server: HealthServer, clients: list[Client]
) -> None:
    at = await open_client(server, clients)
    at.send(PARTIAL + b"Content-Length: %d\r\n\r\n" % MAX_BODY_BYTES + b"b" * MAX_BODY_BYTES)
    assert (await at.response())[0] == 200

    over = await open_client(server, clients)
    size = MAX_BODY_BYTES + 1
    over.send(PARTIAL + b"Content-Length: %d\r\n\r\n" % size + b"b" * size)
    status, headers, _ = await over.response()
    assert (status, headers["connection"]) == (413, "close")
    await over.wait_closed(LATE_MARGIN_S)
    assert server.stats.too_large == 1


async def test_headers_at_the_limit_are_answered_and_one_byte_more_is_refused_431(
    server: HealthServer, clients: list[Client]
) -> None:
    def head(size: int) -> bytes:
        padding = size - len(PARTIAL) - len(b"X-Pad: \r\n\r\n")
        return PARTIAL + b"X-Pad: " + b"p" * padding + b"\r\n\r\n"

    at = await open_client(server, clients)
    at.send(head(MAX_HEADER_BYTES))
    assert (await at.response())[0] == 200

    over = await open_client(server, clients)
    over.send(head(MAX_HEADER_BYTES + 1))
    assert (await over.response())[0] == 431
    await over.wait_closed(LATE_MARGIN_S)
    assert server.stats.too_large == 1


# ---------------------------------------------------------------------------------------------
# Requests.


async def test_pipelined_requests_are_answered_in_order(
    server: HealthServer, clients: list[Client]
) -> None:
    client = await open_client(server, clients)
    client.send(
        b"GET /healthz HTTP/1.1\r\n\r\nHEAD /readyz HTTP/1.1\r\n\r\n"
        b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /nowhere HTTP/1.1\r\n\r\n"
    )
    status, _, body = await client.response()
    assert (status, body) == (200, b'{"status": "alive"}')
    # HEAD: the length the body would have, and no body.
    head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), LATE_MARGIN_S)
    readyz = b'{"ready": false, "reason": "not yet"}'
    assert head.startswith(b"HTTP/1.1 503 ") and b"Content-Length: %d" % len(readyz) in head
    status, headers, _ = await client.response()
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    assert (await client.response())[0] == 404


async def test_a_failing_route_is_answered_500_and_the_server_goes_on(
    clients: list[Client], caplog: pytest.LogCaptureFixture
) -> None:
    def readiness() -> tuple[bool, str]:
        raise RuntimeError("broken readiness")

    server = HealthServer(WorkerMetrics(), readiness, "127.0.0.1", 0, limits())
    async with server:
        client = await open_client(server, clients)
        assert await client.get("/readyz") == 500
        assert await client.get("/healthz") == 200
    assert "broken readiness" in caplog.text


# ---------------------------------------------------------------------------------------------
# The bound from the open-file limit, and the settings.


@pytest.mark.parametrize(
    ("open_file_limit", "bound"),
    [
        (1024, 512),
        (1025, 512),
        (2, 1),
        (2 * DEFAULT_CONNECTION_CAP - 2, DEFAULT_CONNECTION_CAP - 1),
        (2 * DEFAULT_CONNECTION_CAP, DEFAULT_CONNECTION_CAP),
        (2 * DEFAULT_CONNECTION_CAP + 2, DEFAULT_CONNECTION_CAP),
        (1_048_576, DEFAULT_CONNECTION_CAP),
        (None, DEFAULT_CONNECTION_CAP),
    ],
)
def test_the_default_bound_is_half_the_open_file_limit_at_most_the_cap(
    open_file_limit: int | None, bound: int
) -> None:
    assert connection_bound(0, open_file_limit) == bound


def test_no_room_for_connections_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"open-file limit \(1, RLIMIT_NOFILE\)"):
        connection_bound(0, 1)


@pytest.mark.parametrize(("requested", "allowed"), [(511, True), (512, True), (513, False)])
def test_a_bound_asked_for_may_be_up_to_half_the_open_file_limit(
    requested: int, allowed: bool
) -> None:
    if allowed:
        assert connection_bound(requested, 1024) == requested
    else:
        with pytest.raises(ConfigError, match="--http-max-connections / QA_HTTP_MAX_CONNECTIONS"):
            connection_bound(requested, 1024)
    # Above the default cap too, when the limit allows it.
    assert connection_bound(5000, 10_000) == 5000
    assert connection_bound(5000, None) == 5000


async def test_the_server_checks_its_bound_against_the_limit_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("worker.observability.http.open_file_limit", lambda: 64)
    server = HealthServer(WorkerMetrics(), lambda: (True, "ok"), "127.0.0.1", 0, limits())
    async with server:
        assert server.connection_bound == 4
    too_many = HealthServer(
        WorkerMetrics(), lambda: (True, "ok"), "127.0.0.1", 0, limits(max_connections=33)
    )
    with pytest.raises(ConfigError, match="more than half the open-file limit"):
        await too_many.start()
    derived = HealthServer(
        WorkerMetrics(), lambda: (True, "ok"), "127.0.0.1", 0, limits(max_connections=0)
    )
    async with derived:
        assert derived.connection_bound == 32


def test_the_settings_reach_the_server() -> None:
    settings = Settings.from_sources(
        None,
        {
            "QA_HTTP_MAX_CONNECTIONS": "7",
            "QA_HTTP_IDLE_TIMEOUT_S": "1.5",
            "QA_HTTP_REQUEST_TIMEOUT_S": "2.5",
            "QA_HTTP_HOST": "127.0.0.1",
            "QA_HTTP_PORT": "9001",
        },
    )
    server = HealthServer.from_settings(WorkerMetrics(), lambda: (True, "ok"), settings)
    assert (server.host, server.limits) == ("127.0.0.1", HttpLimits(7, 1.5, 2.5))
    defaults = HealthServer.from_settings(WorkerMetrics(), lambda: (True, "ok"), Settings())
    assert defaults.host == "0.0.0.0"
    assert defaults.limits == HttpLimits(0, 5.0, 5.0)


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"QA_HTTP_MAX_CONNECTIONS": "-1"}, "QA_HTTP_MAX_CONNECTIONS must be 0 or more, got -1"),
        ({"QA_HTTP_IDLE_TIMEOUT_S": "0"}, "QA_HTTP_IDLE_TIMEOUT_S must be above 0, got 0.0"),
        ({"QA_HTTP_REQUEST_TIMEOUT_S": "-1"}, "QA_HTTP_REQUEST_TIMEOUT_S must be above 0"),
    ],
)
def test_bad_http_settings_name_the_setting(environ: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_sources(None, environ)
    assert fragment in str(caught.value)


def test_the_smallest_http_settings_are_accepted() -> None:
    settings = Settings.from_sources(
        None,
        {
            "QA_HTTP_MAX_CONNECTIONS": "0",
            "QA_HTTP_IDLE_TIMEOUT_S": "0.001",
            "QA_HTTP_REQUEST_TIMEOUT_S": "0.001",
        },
    )
    assert settings.http_max_connections == 0


async def test_a_host_with_several_addresses_is_served_on_one_port() -> None:
    addresses = {info[4][0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    server = HealthServer(WorkerMetrics(), lambda: (True, "ok"), "localhost", 0, limits())
    async with server:
        for address in addresses:
            reader, writer = await asyncio.open_connection(address, server.port)
            client = Client(reader, writer)
            assert await client.get("/healthz", close=True) == 200
            client.close()


def test_the_server_itself_needs_a_resolved_bound() -> None:
    with pytest.raises(ValueError, match="max_connections must be at least 1"):
        BoundedHttpServer(
            lambda request: Response(204),
            limits(max_connections=0),
            "127.0.0.1",
            0,
            logging.getLogger("test"),
        )
