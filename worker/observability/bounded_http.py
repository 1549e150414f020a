"""A small HTTP/1.1 server held to bounds of connections, time and size, for probes and scrapes.

    server = BoundedHttpServer(handler, HttpLimits(max_connections=512), "0.0.0.0", 8000, log)
    await server.start()  # then server.port; `handler(Request) -> Response` answers each request
    ...
    await server.stop()

Anyone who reaches the port can connect, so nothing a client does may hold the worker's
resources for long. Each connection always has a deadline running, for the stage it is in:

- idle (a new connection, or one kept alive after a response): no byte of a request for
  `idle_timeout_s`, and it is closed;
- reading: its request line, headers and body must all arrive within `request_timeout_s` of
  the request's first byte, however slowly they trickle in;
- writing: the client must take the response within `request_timeout_s`;
- closing after a refusal (400, 413, ...): what the client still sends is read and dropped for
  at most `LINGER_S` and `LINGER_BYTES`, so that unread bytes do not make the kernel reset the
  connection before the client has read the refusal.

Sizes: the request line and headers at most `max_header_bytes`, empty lines before the request
line included, and at most `max_header_fields` header lines (431 beyond either); a body at most
`max_body_bytes` (413 beyond). Bodies, chunked or not, are read and dropped (the routes take
none), so a connection never buffers more than about one head.

Work: the loop runs this server's callbacks between the worker's Kafka ones, so what one client
can make it do is bounded too. A connection's requests are answered at most one per
`ANSWER_INTERVAL_S`: one that comes sooner, pipelined or not, waits with the connection's reading
paused. Probes and scrapes make one request per connection or one every few seconds and never
wait; a client pipelining thousands of requests gets `1 / ANSWER_INTERVAL_S` answers a second
per connection rather than one per turn of the loop.

Connections: at most `max_connections` are open at once. Once they are all taken, each new
connection closes the one whose current stage began longest ago: the idle and the slow, since a
probe or a scrape is answered within milliseconds of connecting and then leaves. Before an idle
connection is closed its socket is read, so one whose request has reached the machine is
answered instead. What holds: a connection is closed at the bound only after `max_connections`
newer connections (or stages) have begun since its own stage began, so a probe is answered if
its request arrives before that many others connect. Under a flood of R connections a second
that is `max_connections / R` seconds, which a probe sending its request with its connection
meets, and one sending it a network round trip later may not when the bound is small. The
server's file descriptors stay within the bound (plus one, for the moment between accepting and
closing the oldest). The server runs its own accept loop rather than asyncio's: asyncio's, out
of file descriptors, logs an error for each attempt and schedules a retry for each (thousands a
second); this one stops accepting for `ACCEPT_RETRY_S` with one warning. Its warnings
(connections closed at the bound or for a timeout, refusals, accept failures) are one line per
kind per 10 s at most, with the count of those left out: a flood makes thousands a second.
`stats` counts them all.

Handlers are synchronous: the routes answer from memory, so a response is ready in the same
callback as the last byte of its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import math
import re
import socket
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from ..config import describe
from ..errors import ConfigError
from .log_rate import REPEAT_INTERVAL_S

__all__ = [
    "ACCEPT_RETRY_S",
    "ANSWER_INTERVAL_S",
    "DEFAULT_CONNECTION_CAP",
    "LINGER_BYTES",
    "LINGER_S",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_FIELDS",
    "BoundedHttpServer",
    "HttpLimits",
    "HttpServerStats",
    "Refusal",
    "Request",
    "RequestParser",
    "Response",
    "connection_bound",
]

# The request line and every header line with their line ends: nginx's and aiohttp's 8 KiB.
# The kubelet's probes and Prometheus's scrapes (with a bearer token) send well under 2 KiB.
MAX_HEADER_BYTES = 8192
# Header lines of a request (and trailer lines of a chunked body): the kubelet and Prometheus
# send under ten, and 100 is Apache's LimitRequestFields. Each line costs microseconds to parse,
# and 8 KiB holds two thousand empty ones.
MAX_HEADER_FIELDS = 100
# The routes read no body; a client that sends a small one anyway is still answered.
MAX_BODY_BYTES = 1024
# Connections when the open-file limit leaves room for more: up to some 25 KiB of memory each
# (a head being read, and a read's worth after it), while one Prometheus and one kubelet need two.
DEFAULT_CONNECTION_CAP = 1024
ACCEPT_RETRY_S = 1.0
# At most ten answers a second per connection: a scrape or a probe makes one per connection or
# one every few seconds, while a client pipelining requests would otherwise get one answer per
# turn of the loop, each turn delaying the worker's Kafka callbacks by an answer per connection.
ANSWER_INTERVAL_S = 0.1
WARNING_INTERVAL_S = REPEAT_INTERVAL_S
LINGER_S = 2.0
# A client that sends more than this after its refusal is not reading it: dropping all it sends
# for LINGER_S would let it keep the loop reading at the speed of the network.
LINGER_BYTES = 65536
# A listening socket's queue of connections not yet accepted (the kernel caps it at
# net.core.somaxconn). Once it is full the kernel drops new connections' packets, and a probe
# caught there is retried by its TCP a second later: with 128 (aiohttp's), 1,100 slow clients
# reconnecting as fast as they are closed delayed one probe in 148 by 1.06 s.
BACKLOG = 4096
# Accepts in one turn of the event loop, at most: a flood of connections waits in the backlog
# rather than holding the loop (and the worker's Kafka traffic) for long. At most a quarter of
# the bound too, so that a new connection outlives the turns until its request is read, however
# fast others arrive.
ACCEPTS_PER_TURN = 32
READ_SIZE = 16384
# A chunk-size line (hex digits and any chunk extensions).
MAX_CHUNK_LINE_BYTES = 256

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
_FIELD_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_EMPTY_LINES = re.compile(rb"(?:\r\n)*")
_DIGITS = re.compile(rb"[0-9]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_SUPPORTED_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE})
# Content-Length values longer than this are over any body limit (and past int()'s digit limit).
_MAX_LENGTH_DIGITS = 18


@dataclass(frozen=True)
class HttpLimits:
    """What one client may take of the server. `max_connections` 0: `connection_bound`'s."""

    max_connections: int = 0
    idle_timeout_s: float = 5.0
    request_timeout_s: float = 5.0
    max_header_bytes: int = MAX_HEADER_BYTES
    max_header_fields: int = MAX_HEADER_FIELDS
    max_body_bytes: int = MAX_BODY_BYTES


def connection_bound(requested: int, open_file_limit: int | None) -> int:
    """The most HTTP connections, given the process's open-file limit (RLIMIT_NOFILE's soft one).

    HTTP may take at most half the limit, so that the other half is always there for the
    worker's own sockets (Kafka: a few per broker) and files: 0 asks for that half, at most
    DEFAULT_CONNECTION_CAP; a number asked for is refused when it is more than half. None: no
    limit.
    """
    if open_file_limit is None:
        return requested or DEFAULT_CONNECTION_CAP
    share = open_file_limit // 2
    setting = describe("http_max_connections")
    if requested == 0:
        if share < 1:
            raise ConfigError(
                f"the open-file limit ({open_file_limit}, RLIMIT_NOFILE) leaves no file "
                f"descriptor for HTTP connections ({setting}); raise it (ulimit -n)"
            )
        return min(share, DEFAULT_CONNECTION_CAP)
    if requested > share:
        raise ConfigError(
            f"{setting} is {requested}, more than half the open-file limit ({open_file_limit}, "
            "RLIMIT_NOFILE): the other half is kept for the worker's Kafka sockets and files; "
            "raise the limit (ulimit -n) or lower the setting"
        )
    return requested


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    """Names in lower case, values as sent (latin-1), in the order sent."""
    keep_alive: bool


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Refusal:
    """A request the server answers itself, with `status`, and then closes the connection."""

    status: int
    reason: str


@dataclass
class HttpServerStats:
    accepted: int = 0
    # Closed to make room for a new connection: at the bound, or out of file descriptors.
    evicted: int = 0
    # Closed for a request not read, or a response not taken, within request_timeout_s.
    timed_out: int = 0
    # Refused (413, 431) and closed.
    too_large: int = 0
    # Refused (400, 501, 505) and closed.
    malformed: int = 0

    def closed(self) -> dict[str, int]:
        """Connections the server closed, by reason (every reason, 0 or not)."""
        return {
            "evicted": self.evicted,
            "timed_out": self.timed_out,
            "too_large": self.too_large,
            "malformed": self.malformed,
        }


class _Body(enum.Enum):
    NONE = enum.auto()
    LENGTH = enum.auto()
    CHUNK_SIZE = enum.auto()
    CHUNK_DATA = enum.auto()
    CHUNK_END = enum.auto()
    TRAILERS = enum.auto()


class RequestParser:
    """Reads one connection's requests, one at a time, within the size limits.

    Work is linear in the bytes fed however they are split: the end of a head is looked for
    only in bytes not yet searched, and body bytes are dropped as they come.
    """

    def __init__(
        self, max_header_bytes: int, max_body_bytes: int, max_header_fields: int = MAX_HEADER_FIELDS
    ) -> None:
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._max_header_fields = max_header_fields
        self._buffer = bytearray()
        self._searched = 0
        # Empty lines dropped before the request line being read; they count toward its limit.
        self._skipped = 0
        self._head: Request | None = None
        self._body = _Body.NONE
        self._left = 0
        self._body_bytes = 0
        self._trailer_bytes = 0
        self._trailer_fields = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_request(self) -> Request | Refusal | None:
        """The next complete request (its bytes dropped), a refusal, or None until more come."""
        if self._head is None:
            head = self._read_head()
            if not isinstance(head, Request):
                return head
            self._head = head
        done = self._read_body()
        if isinstance(done, Refusal):
            return done
        if not done:
            return None
        request, self._head = self._head, None
        return request

    def _read_head(self) -> Request | Refusal | None:
        # Empty lines before a request line are ignored (RFC 9112, section 2.2), all at once: a
        # client may send nothing else.
        empty = _EMPTY_LINES.match(self._buffer).end()  # type: ignore[union-attr]
        if empty:
            del self._buffer[:empty]
            self._skipped += empty
            self._searched = max(0, self._searched - empty)
        too_large = Refusal(431, f"request line and headers over {self._max_header_bytes} bytes")
        end = self._buffer.find(b"\r\n\r\n", max(0, self._searched - 3))
        if end < 0:
            if self._skipped + len(self._buffer) > self._max_header_bytes:
                return too_large
            self._searched = len(self._buffer)
            return None
        if self._skipped + end + 4 > self._max_header_bytes:
            return too_large
        head = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        self._searched = 0
        self._skipped = 0
        return self._parse_head(head)

    def _parse_head(self, head: bytes) -> Request | Refusal:
        # Counted before the lines are parsed, each at a few microseconds.
        if head.count(b"\r\n") > self._max_header_fields:
            return Refusal(431, f"more than {self._max_header_fields} header lines")
        request_line, *lines = head.split(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3:
            return Refusal(400, "the request line is not METHOD TARGET VERSION")
        method, target, version = parts
        if not _TOKEN.fullmatch(method):
            return Refusal(400, "the method is not a token")
        if not _TARGET.fullmatch(target):
            return Refusal(400, "the target holds characters other than visible ASCII")
        if version not in _SUPPORTED_VERSIONS:
            if _VERSION.fullmatch(version):
                return Refusal(505, "only HTTP/1.0 and HTTP/1.1 are served")
            return Refusal(400, "the request line does not end with an HTTP version")
        headers: list[tuple[str, str]] = []
        length: int | None = None
        codings: list[str] = []
        connection: set[str] = set()
        for line in lines:
            raw_name, colon, raw_value = line.partition(b":")
            # Also refuses obsolete line folding (a line starting with white space).
            if not colon or not _TOKEN.fullmatch(raw_name):
                return Refusal(400, "a header line is not NAME: VALUE")
            raw_value = raw_value.strip(b" \t")
            if _FIELD_CONTROL.search(raw_value):
                return Refusal(400, "a header value holds a control character")
            name, value = raw_name.decode("ascii").lower(), raw_value.decode("latin-1")
            headers.append((name, value))
            if name == "content-length":
                if not _DIGITS.fullmatch(raw_value):
                    return Refusal(400, "Content-Length is not a number")
                this = (
                    int(raw_value)
                    if len(raw_value) <= _MAX_LENGTH_DIGITS
                    else self._max_body_bytes + 1
                )
                if length is not None and this != length:
                    return Refusal(400, "two different Content-Length values")
                length = this
            elif name == "transfer-encoding":
                codings += [c.strip().lower() for c in value.split(",") if c.strip()]
            elif name == "connection":
                connection |= {token.strip().lower() for token in value.split(",")}
        self._body, self._left, self._body_bytes = _Body.NONE, 0, 0
        self._trailer_bytes = self._trailer_fields = 0
        if codings:
            # Both would let a proxy and this server disagree on where the request ends.
            if length is not None:
                return Refusal(400, "both Content-Length and Transfer-Encoding")
            if version == b"HTTP/1.0":
                return Refusal(400, "Transfer-Encoding in an HTTP/1.0 request")
            if codings != ["chunked"]:
                return Refusal(501, "the only transfer coding served is chunked")
            self._body = _Body.CHUNK_SIZE
        elif length:
            if length > self._max_body_bytes:
                return Refusal(413, f"a body over {self._max_body_bytes} bytes")
            self._body, self._left = _Body.LENGTH, length
        keep_alive = (
            "close" not in connection if version == b"HTTP/1.1" else "keep-alive" in connection
        )
        return Request(
            method.decode("ascii"),
            target.decode("ascii"),
            version.decode("ascii"),
            tuple(headers),
            keep_alive,
        )

    def _read_body(self) -> bool | Refusal:
        """True once the body (if any) is read and dropped, False until more bytes come."""
        buffer = self._buffer
        while True:
            if self._body is _Body.NONE:
                return True
            if self._body in (_Body.LENGTH, _Body.CHUNK_DATA):
                taken = min(self._left, len(buffer))
                del buffer[:taken]
                self._left -= taken
                if self._left:
                    return False
                self._body = _Body.NONE if self._body is _Body.LENGTH else _Body.CHUNK_END
            elif self._body is _Body.CHUNK_END:
                if len(buffer) < 2:
                    return False
                if buffer[:2] != b"\r\n":
                    return Refusal(400, "chunk data not followed by CRLF")
                del buffer[:2]
                self._body = _Body.CHUNK_SIZE
            elif self._body is _Body.CHUNK_SIZE:
                end = buffer.find(b"\r\n")
                if end < 0:
                    # One byte more than the line: the CR of its line end, the LF to come.
                    if len(buffer) > MAX_CHUNK_LINE_BYTES + 1:
                        return Refusal(400, f"a chunk-size line over {MAX_CHUNK_LINE_BYTES} bytes")
                    return False
                if end > MAX_CHUNK_LINE_BYTES:
                    return Refusal(400, f"a chunk-size line over {MAX_CHUNK_LINE_BYTES} bytes")
                size = bytes(buffer[:end]).split(b";", 1)[0].strip(b" \t")
                del buffer[: end + 2]
                if not _HEX.fullmatch(size) or len(size) > 16:
                    return Refusal(400, "a chunk size is not a hexadecimal number")
                self._left = int(size, 16)
                if self._left == 0:
                    self._body = _Body.TRAILERS
                    continue
                self._body_bytes += self._left
                if self._body_bytes > self._max_body_bytes:
                    return Refusal(413, f"a body over {self._max_body_bytes} bytes")
                self._body = _Body.CHUNK_DATA
            else:  # trailers, until an empty line; they count against the head's limits
                end = buffer.find(b"\r\n")
                seen = len(buffer) if end < 0 else end + 2
                if self._trailer_bytes + seen > self._max_header_bytes:
                    return Refusal(431, f"trailers over {self._max_header_bytes} bytes")
                if end < 0:
                    return False
                del buffer[: end + 2]
                self._trailer_bytes += end + 2
                if end == 0:
                    self._body = _Body.NONE
                    continue
                self._trailer_fields += 1
                if self._trailer_fields > self._max_header_fields:
                    return Refusal(431, f"more than {self._max_header_fields} trailer lines")


class _Stage(enum.Enum):
    IDLE = "waiting for a request"
    READING = "request"
    WRITING = "response"
    CLOSING = "close"


class _Connection:
    __slots__ = (
        "address",
        "answered_at",
        "close_after",
        "closed",
        "dropped",
        "linger",
        "parser",
        "reading",
        "sock",
        "stage",
        "stage_began",
        "timer",
        "unsent",
    )

    def __init__(self, sock: socket.socket, address: object, parser: RequestParser) -> None:
        self.sock = sock
        self.address = address
        self.parser = parser
        self.stage = _Stage.IDLE
        self.stage_began = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.unsent = bytearray()
        self.reading = False
        self.close_after = False
        self.linger = False
        self.closed = False
        self.answered_at = -math.inf
        self.dropped = 0


Handler = Callable[[Request], Response]


class BoundedHttpServer:
    """Serves `handler` on `host`:`port` within `limits`; port 0 binds a free one."""

    def __init__(
        self, handler: Handler, limits: HttpLimits, host: str, port: int, log: logging.Logger
    ) -> None:
        """`limits.max_connections` is the bound itself here (see `connection_bound`), not 0."""
        if limits.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1: {limits.max_connections}")
        self.handler = handler
        self.limits = limits
        self.host = host
        self.requested_port = port
        self.log = log
        self.stats = HttpServerStats()
        self._listeners: list[socket.socket] = []
        self._connections: OrderedDict[_Connection, None] = OrderedDict()
        self._retry: asyncio.TimerHandle | None = None
        self._warned_at: dict[str, float] = {}
        self._unwarned: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        """The bound port (every address `host` resolves to is bound to the same one)."""
        if not self._listeners:
            raise RuntimeError("the server is not started")
        return int(self._listeners[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        found = await loop.getaddrinfo(
            self.host, self.requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in found))
        listeners: list[socket.socket] = []
        try:
            for family, address in addresses:
                if listeners and self.requested_port == 0:
                    # Port 0 binds one free port for all the host's addresses, not one each.
                    address = (address[0], listeners[0].getsockname()[1], *address[2:])
                try:
                    listener = socket.create_server(address, family=family, backlog=BACKLOG)
                except OSError as error:
                    # An address of a family this machine lacks (::1 with IPv6 off): skipped,
                    # as asyncio's create_server skips it.
                    if error.errno == errno.EAFNOSUPPORT:
                        continue
                    raise
                listeners.append(listener)
                listener.setblocking(False)
            if not listeners:
                raise OSError(errno.EAFNOSUPPORT, f"no address of {self.host!r} can be listened on")
        except BaseException:
            for listener in listeners:
                listener.close()
            raise
        self._loop = loop
        self._listeners = listeners
        self._accept_on()

    async def stop(self) -> None:
        if self._loop is None:
            return
        self._accept_off()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        for connection in list(self._connections):
            self._close(connection, abort=True)
        self._loop = None

    # Accepting.

    def _accept_on(self) -> None:
        assert self._loop is not None
        self._retry = None
        for listener in self._listeners:
            self._loop.add_reader(listener.fileno(), self._accept, listener)

    def _accept_off(self) -> None:
        assert self._loop is not None
        for listener in self._listeners:
            self._loop.remove_reader(listener.fileno())

    def _accept(self, listener: socket.socket) -> None:
        assert self._loop is not None
        made_room = False
        for _ in range(max(1, min(ACCEPTS_PER_TURN, self.limits.max_connections // 4))):
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno not in _OUT_OF_RESOURCES:
                    # The connection failed before it was accepted (reset, a network error):
                    # the next one may be fine (accept(2)).
                    continue
                if self._connections and error.errno in _OUT_OF_FILES and not made_room:
                    # Out of descriptors with connections of our own open (the worker's other
                    # files took more than their half): the oldest gives its descriptor to the
                    # connection waiting, so idle clients cannot keep a probe out.
                    self._close_oldest(
                        "out of files",
                        "cannot accept an HTTP connection (%s): closed the one whose %s began "
                        "longest ago (%.1f s) for it",
                        error.strerror or error,
                    )
                    made_room = True
                    continue
                # Out of file descriptors (or memory) because of something else in the process:
                # the bound keeps HTTP itself within half the open-file limit.
                self._warn(
                    "accept",
                    "cannot accept HTTP connections (%s); trying again in %.0f s",
                    error.strerror or error,
                    ACCEPT_RETRY_S,
                )
                self._accept_off()
                self._retry = self._loop.call_later(ACCEPT_RETRY_S, self._accept_on)
                return
            self._adopt(sock, address)
            if made_room:
                # It took the descriptor given up. Linux takes a descriptor before it looks for
                # a connection, so another accept now would fail whether one waits or not, and
                # give this one up; the listener is still readable if one waits.
                return

    def _adopt(self, sock: socket.socket, address: object) -> None:
        # No TCP_NODELAY: a response is one send, and a client's next request carries the
        # acknowledgement of the last response, so Nagle's algorithm holds nothing back (only
        # pipelined responses, which neither probes nor scrapes use, may wait for a delayed ACK).
        assert self._loop is not None
        sock.setblocking(False)
        limits = self.limits
        parser = RequestParser(
            limits.max_header_bytes, limits.max_body_bytes, limits.max_header_fields
        )
        connection = _Connection(sock, address, parser)
        self._connections[connection] = None
        connection.stage_began = self._loop.time()
        self.stats.accepted += 1
        if len(self._connections) > self.limits.max_connections:
            self._evict_oldest()
        # A probe has usually sent its request by the time it is accepted: answered at once, it
        # leaves before any later connection could make it the oldest.
        self._readable(connection)
        if not connection.closed and connection.timer is None:
            # Nothing came yet (whatever did has armed its stage's deadline).
            self._enter(connection, _Stage.IDLE, self.limits.idle_timeout_s)
            self._reading(connection, True)

    def _warn(self, kind: str, template: str, *args: object) -> None:
        """Logs a warning of `kind` at most once per WARNING_INTERVAL_S, counting the rest.

        A flood makes thousands a second; left to the log's repeat filter, each would still
        cost a log record, on the event loop the worker's Kafka clients share.
        """
        assert self._loop is not None
        now = self._loop.time()
        warned_at = self._warned_at.get(kind)
        if warned_at is not None and now - warned_at < WARNING_INTERVAL_S:
            self._unwarned[kind] = self._unwarned.get(kind, 0) + 1
            return
        unwarned = self._unwarned.pop(kind, 0)
        if unwarned:
            template += " (%d more like this in %.0f s)"
            args = (*args, unwarned, now - (warned_at or now))
        self._warned_at[kind] = now
        self.log.warning(template, *args)

    def _evict_oldest(self) -> None:
        for _ in range(len(self._connections)):
            oldest = next(iter(self._connections))
            if oldest.stage is not _Stage.IDLE:
                break
            # Its request may have come since the loop last polled: answered, or read in part,
            # it leaves or moves to the end of the order.
            self._readable(oldest)
            if len(self._connections) <= self.limits.max_connections:
                return
            if next(iter(self._connections)) is oldest:
                break
        self._close_oldest(
            "evicted",
            "HTTP connections at the bound of %d: closed the one whose %s began longest ago "
            "(%.1f s) for a new one",
            self.limits.max_connections,
        )

    def _close_oldest(self, kind: str, template: str, *args: object) -> None:
        """Closes the connection whose stage began longest ago, counted as evicted, and warns
        of `kind` (see `_warn`): `template` takes `args`, then that stage and how long ago it
        began."""
        assert self._loop is not None
        oldest = next(iter(self._connections))
        self.stats.evicted += 1
        self._warn(
            kind, template, *args, oldest.stage.value, self._loop.time() - oldest.stage_began
        )
        self._close(oldest, abort=True)

    # One connection: its stage and deadline, reading, answering, writing, closing.

    def _enter(self, connection: _Connection, stage: _Stage, timeout_s: float) -> None:
        assert self._loop is not None
        connection.stage = stage
        connection.stage_began = self._loop.time()
        if connection.timer is not None:
            connection.timer.cancel()
        connection.timer = self._loop.call_later(timeout_s, self._deadline, connection)
        # The order of eviction: the stage that began longest ago first.
        self._connections.move_to_end(connection)

    def _reading(self, connection: _Connection, on: bool) -> None:
        assert self._loop is not None
        if on and not connection.reading:
            self._loop.add_reader(connection.sock.fileno(), self._readable, connection)
        elif connection.reading and not on:
            self._loop.remove_reader(connection.sock.fileno())
        connection.reading = on

    def _deadline(self, connection: _Connection) -> None:
        connection.timer = None
        if connection.stage in (_Stage.READING, _Stage.WRITING):
            self.stats.timed_out += 1
            self._warn(
                "timed out",
                "HTTP connection from %s closed: its %s took longer than %.1f s",
                _peer(connection.address),
                connection.stage.value,
                self.limits.request_timeout_s,
            )
        self._close(connection, abort=connection.stage is not _Stage.IDLE)

    def _readable(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection, abort=True)
            return
        if not data:
            # The client sends no more: a request it left unfinished gets no answer.
            self._close(connection)
            return
        if connection.stage is _Stage.CLOSING:
            connection.dropped += len(data)
            if connection.dropped > LINGER_BYTES:
                self._close(connection, abort=True)
            return
        if connection.stage is _Stage.IDLE:
            self._enter(connection, _Stage.READING, self.limits.request_timeout_s)
        connection.parser.feed(data)
        self._answer(connection)

    def _answer(self, connection: _Connection) -> None:
        """Answers the next request complete on `connection`, if there is one and it is due."""
        assert self._loop is not None
        if connection.closed or connection.stage not in (_Stage.IDLE, _Stage.READING):
            return
        due = connection.answered_at + ANSWER_INTERVAL_S
        if self._loop.time() < due:
            self._reading(connection, False)
            self._loop.call_at(due, self._answer, connection)
            return
        request = connection.parser.next_request()
        if request is None:
            # The rest of a request to come (the parser refuses one beyond the size limits).
            self._reading(connection, True)
            return
        connection.answered_at = self._loop.time()
        if isinstance(request, Refusal):
            too_large = request.status in (413, 431)
            if too_large:
                self.stats.too_large += 1
            else:
                self.stats.malformed += 1
            template = (
                "HTTP request from %s: over a size limit, answered %d: %s"
                if too_large
                else "HTTP request from %s: malformed HTTP, answered %d: %s"
            )
            self._warn(
                "refused", template, _peer(connection.address), request.status, request.reason
            )
            response = Response(request.status, f"{request.reason}\n".encode())
            # Its unread bytes are dropped before closing: closing on them would make the kernel
            # reset the connection, and the refusal with it.
            self._send(
                connection, response, head_only=False, version="HTTP/1.1", close=True, linger=True
            )
            return
        try:
            response = self.handler(request)
        except Exception:
            self.log.exception("HTTP %s %s failed", request.method, request.target)
            response = Response(500, b"internal error\n")
        self._send(
            connection,
            response,
            head_only=request.method == "HEAD",
            version=request.version,
            close=not request.keep_alive,
        )

    def _send(
        self,
        connection: _Connection,
        response: Response,
        *,
        head_only: bool,
        version: str,
        close: bool,
        linger: bool = False,
    ) -> None:
        assert self._loop is not None
        payload = encode_response(response, head_only=head_only, version=version, close=close)
        connection.close_after = close
        connection.linger = linger
        try:
            sent = connection.sock.send(payload)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(connection, abort=True)
            return
        if sent == len(payload):
            self._answered(connection)
            return
        connection.unsent = bytearray(payload[sent:])
        self._reading(connection, False)
        self._enter(connection, _Stage.WRITING, self.limits.request_timeout_s)
        self._loop.add_writer(connection.sock.fileno(), self._writable, connection)

    def _writable(self, connection: _Connection) -> None:
        assert self._loop is not None
        try:
            sent = connection.sock.send(connection.unsent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection, abort=True)
            return
        del connection.unsent[:sent]
        if not connection.unsent:
            self._loop.remove_writer(connection.sock.fileno())
            self._answered(connection)

    def _answered(self, connection: _Connection) -> None:
        """The response is all with the kernel: close, or wait for the next request."""
        assert self._loop is not None
        if connection.close_after:
            if not connection.linger:
                self._close(connection)
                return
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_WR)
            # What came after the refused request counts toward LINGER_BYTES too.
            connection.dropped = connection.parser.buffered
            self._enter(connection, _Stage.CLOSING, LINGER_S)
            self._reading(connection, True)
            return
        if connection.parser.buffered:
            self._enter(connection, _Stage.READING, self.limits.request_timeout_s)
            # Read on once the requests already here are answered (`_answer` turns it back on).
            self._reading(connection, False)
            self._loop.call_at(connection.answered_at + ANSWER_INTERVAL_S, self._answer, connection)
        else:
            self._enter(connection, _Stage.IDLE, self.limits.idle_timeout_s)
            self._reading(connection, True)

    def _close(self, connection: _Connection, abort: bool = False) -> None:
        assert self._loop is not None
        if connection.closed:
            return
        connection.closed = True
        if connection.timer is not None:
            connection.timer.cancel()
            connection.timer = None
        fd = connection.sock.fileno()
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        self._connections.pop(connection, None)
        if abort:
            # A reset: the kernel keeps nothing for a client that is too slow or too many.
            with contextlib.suppress(OSError):
                connection.sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
        connection.sock.close()


def _peer(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def encode_response(response: Response, *, head_only: bool, version: str, close: bool) -> bytes:
    """Status line, headers and (unless `head_only`) body, as sent."""
    lines = [
        f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}",
        f"Date: {formatdate(usegmt=True)}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        *(f"{name}: {value}" for name, value in response.headers),
    ]
    if close:
        lines.append("Connection: close")
    elif version == "HTTP/1.0":
        lines.append("Connection: keep-alive")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body
