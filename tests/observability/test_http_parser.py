"""The health server's request parser: sizes at, under and over their limits, and bad requests.

Every case is checked twice: fed at once, and fed one byte at a time (as a slow client sends),
which must give the same outcome.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.observability.bounded_http import (
    MAX_BODY_BYTES,
    MAX_CHUNK_LINE_BYTES,
    MAX_HEADER_BYTES,
    MAX_HEADER_FIELDS,
    Refusal,
    Request,
    RequestParser,
    Response,
    encode_response,
)


def outcomes(data: bytes, by_byte: bool) -> list[Request | Refusal | None]:
    """What the parser makes of `data`: its requests in order, then a refusal or None."""
    parser = RequestParser(MAX_HEADER_BYTES, MAX_BODY_BYTES)
    found: list[Request | Refusal | None] = []
    pieces = [data[i : i + 1] for i in range(len(data))] if by_byte else [data]
    for piece in pieces:
        parser.feed(piece)
        while True:
            outcome = parser.next_request()
            if not isinstance(outcome, Request):
                break
            found.append(outcome)
        if isinstance(outcome, Refusal):
            return [*found, outcome]
    return [*found, None]


@pytest.fixture(params=[False, True], ids=["at-once", "byte-by-byte"])
def by_byte(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def head_of_size(size: int) -> bytes:
    """A GET request whose line and headers, blank line included, are `size` bytes."""
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
    padding = size - len(start) - len(b"\r\n\r\n")
    assert padding >= 0
    return start + b"a" * padding + b"\r\n\r\n"


def test_a_head_at_the_limit_is_read_and_one_byte_more_is_refused_431(by_byte: bool) -> None:
    [under, end] = outcomes(head_of_size(MAX_HEADER_BYTES - 1), by_byte)
    assert isinstance(under, Request) and end is None
    [at, end] = outcomes(head_of_size(MAX_HEADER_BYTES), by_byte)
    assert isinstance(at, Request) and at.target == "/healthz" and end is None
    [over] = outcomes(head_of_size(MAX_HEADER_BYTES + 1), by_byte)
    assert over == Refusal(431, f"request line and headers over {MAX_HEADER_BYTES} bytes")


def test_a_head_that_never_ends_is_refused_once_over_the_limit(by_byte: bool) -> None:
    start = b"GET / HTTP/1.1\r\nX: "
    endless = start + b"y" * (MAX_HEADER_BYTES - len(start))
    assert outcomes(endless, by_byte) == [None]
    [refusal] = outcomes(endless + b"y", by_byte)
    assert isinstance(refusal, Refusal) and refusal.status == 431


@given(empty_lines=st.integers(0, MAX_HEADER_BYTES // 2 + 2), head_size=st.integers(64, 200))
def test_empty_lines_before_the_request_line_count_toward_the_head_limit(
    empty_lines: int, head_size: int
) -> None:
    data = b"\r\n" * empty_lines + head_of_size(head_size)
    outcome = outcomes(data, by_byte=False)
    if 2 * empty_lines + head_size <= MAX_HEADER_BYTES:
        assert isinstance(outcome[0], Request) and outcome[1:] == [None]
    else:
        assert outcome == [Refusal(431, f"request line and headers over {MAX_HEADER_BYTES} bytes")]


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_empty_lines_at_under_and_over_the_limit(extra: int, by_byte: bool) -> None:
    head = head_of_size(64)
    data = b"\r\n" * ((MAX_HEADER_BYTES - len(head)) // 2 + extra) + head
    [outcome, *_] = outcomes(data, by_byte)
    assert isinstance(outcome, Request if extra <= 0 else Refusal)


def test_a_stream_of_empty_lines_is_refused_in_one_read() -> None:
    parser = RequestParser(MAX_HEADER_BYTES, MAX_BODY_BYTES)
    parser.feed(b"\r\n" * 8192)  # 16 KiB, what the server reads at once
    refusal = parser.next_request()
    assert isinstance(refusal, Refusal) and refusal.status == 431


def request_with_fields(count: int) -> bytes:
    return b"GET /healthz HTTP/1.1\r\n" + b"a:\r\n" * count + b"\r\n"


@pytest.mark.parametrize("count", [MAX_HEADER_FIELDS - 1, MAX_HEADER_FIELDS])
def test_header_lines_up_to_the_limit_are_read(count: int, by_byte: bool) -> None:
    [request, end] = outcomes(request_with_fields(count), by_byte)
    assert isinstance(request, Request) and len(request.headers) == count and end is None


@pytest.mark.parametrize("count", [MAX_HEADER_FIELDS + 1, MAX_HEADER_BYTES // 4 - 8])
def test_more_header_lines_than_the_limit_are_refused_431(count: int, by_byte: bool) -> None:
    [refusal] = outcomes(request_with_fields(count), by_byte)
    assert refusal == Refusal(431, f"more than {MAX_HEADER_FIELDS} header lines")


@pytest.mark.parametrize("count", [MAX_HEADER_FIELDS, MAX_HEADER_FIELDS + 1])
def test_trailer_lines_count_against_the_header_line_limit(count: int, by_byte: bool) -> None:
    [outcome, *_] = outcomes(chunked(trailers=b"t:\r\n" * count), by_byte)
    if count <= MAX_HEADER_FIELDS:
        assert isinstance(outcome, Request)
    else:
        assert outcome == Refusal(431, f"more than {MAX_HEADER_FIELDS} trailer lines")


def with_body(body: bytes, length: int | None = None) -> bytes:
    length = len(body) if length is None else length
    return b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length + body


@pytest.mark.parametrize("size", [0, 1, MAX_BODY_BYTES - 1, MAX_BODY_BYTES])
def test_a_body_up_to_the_limit_is_read_and_dropped(size: int, by_byte: bool) -> None:
    # A second request right behind the body: the body ended where its length said.
    data = with_body(b"b" * size) + b"GET /readyz HTTP/1.1\r\n\r\n"
    [first, second, end] = outcomes(data, by_byte)
    assert isinstance(first, Request) and first.target == "/healthz"
    assert isinstance(second, Request) and second.target == "/readyz"
    assert end is None


def test_a_body_over_the_limit_is_refused_413_before_it_arrives(by_byte: bool) -> None:
    [refusal] = outcomes(with_body(b"", length=MAX_BODY_BYTES + 1), by_byte)
    assert refusal == Refusal(413, f"a body over {MAX_BODY_BYTES} bytes")
    [huge] = outcomes(with_body(b"", length=10**40), by_byte)
    assert isinstance(huge, Refusal) and huge.status == 413


def test_a_body_not_all_arrived_is_waited_for(by_byte: bool) -> None:
    assert outcomes(with_body(b"b" * 9, length=10), by_byte) == [None]


def chunked(*chunks: bytes, trailers: bytes = b"") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + body
        + b"0\r\n"
        + trailers
        + b"\r\n"
    )


@pytest.mark.parametrize(
    "chunks",
    [(), (b"a",), (b"a" * (MAX_BODY_BYTES - 1),), (b"a" * 512, b"b" * (MAX_BODY_BYTES - 512))],
    ids=["empty", "one-byte", "under", "at-the-limit"],
)
def test_chunked_bodies_up_to_the_limit_are_read(chunks: tuple[bytes, ...], by_byte: bool) -> None:
    [request, end] = outcomes(chunked(*chunks, trailers=b"X-Sum: 1\r\n"), by_byte)
    assert isinstance(request, Request) and end is None


def test_a_chunked_body_over_the_limit_is_refused_413(by_byte: bool) -> None:
    [refusal] = outcomes(chunked(b"a" * 512, b"b" * (MAX_BODY_BYTES - 511)), by_byte)
    assert refusal == Refusal(413, f"a body over {MAX_BODY_BYTES} bytes")


def test_chunked_trailers_count_against_the_head_limit(by_byte: bool) -> None:
    trailer = b"X-T: " + b"t" * (MAX_HEADER_BYTES - 9) + b"\r\n"  # with the blank line: the limit
    [request, end] = outcomes(chunked(trailers=trailer), by_byte)
    assert isinstance(request, Request) and end is None
    [refusal] = outcomes(chunked(trailers=b"X" + trailer), by_byte)
    assert isinstance(refusal, Refusal) and refusal.status == 431


def test_a_chunk_size_line_at_and_over_its_limit(by_byte: bool) -> None:
    head = b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    extension = b";x=" + b"e" * (MAX_CHUNK_LINE_BYTES - 4)
    assert len(b"1" + extension) == MAX_CHUNK_LINE_BYTES
    [request, end] = outcomes(head + b"1" + extension + b"\r\na\r\n0\r\n\r\n", by_byte)
    assert isinstance(request, Request) and end is None
    [refusal] = outcomes(head + b"1" + extension + b"e\r\na\r\n0\r\n\r\n", by_byte)
    assert isinstance(refusal, Refusal) and refusal.status == 400


MALFORMED = [
    (b"GET /healthz\r\n\r\n", 400),
    (b"GET  /healthz HTTP/1.1\r\n\r\n", 400),
    (b"G(T /healthz HTTP/1.1\r\n\r\n", 400),
    (b"GET /\x00 HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTQ/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nNo colon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", 400),
]


@pytest.mark.parametrize(("data", "status"), MALFORMED)
def test_malformed_requests_are_refused(data: bytes, status: int, by_byte: bool) -> None:
    [refusal] = outcomes(data, by_byte)
    assert isinstance(refusal, Refusal) and refusal.status == status, refusal


def test_requests_are_read_in_order_behind_blank_lines(by_byte: bool) -> None:
    data = b"\r\n\r\nGET /a HTTP/1.1\r\n\r\nHEAD /b?c=d HTTP/1.0\r\nX: y\r\n\r\nGET /c HTTP/1.1\r\n"
    [a, b, end] = outcomes(data, by_byte)
    assert isinstance(a, Request) and (a.method, a.target, a.version) == ("GET", "/a", "HTTP/1.1")
    assert isinstance(b, Request) and (b.method, b.target) == ("HEAD", "/b?c=d")
    assert b.headers == (("x", "y"),)
    assert end is None


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("HTTP/1.1", None, True),
        ("HTTP/1.1", "close", False),
        ("HTTP/1.1", "Keep-Alive, Close", False),
        ("HTTP/1.0", None, False),
        ("HTTP/1.0", "keep-alive", True),
    ],
)
def test_keep_alive_follows_the_version_and_connection_header(
    version: str, connection: str | None, keep_alive: bool
) -> None:
    header = f"Connection: {connection}\r\n" if connection else ""
    [request, _] = outcomes(f"GET / {version}\r\n{header}\r\n".encode(), by_byte=False)
    assert isinstance(request, Request) and request.keep_alive is keep_alive


def test_responses_say_their_length_and_whether_the_connection_closes() -> None:
    response = Response(503, b'{"ready": false}', "application/json")
    head, _, body = encode_response(
        response, head_only=False, version="HTTP/1.1", close=True
    ).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert {"Content-Length: 16", "Content-Type: application/json", "Connection: close"} <= set(
        lines
    )
    assert body == b'{"ready": false}'
    kept = encode_response(response, head_only=True, version="HTTP/1.0", close=False)
    assert kept.endswith(b"Connection: keep-alive\r\n\r\n")
    assert b"Content-Length: 16" in kept
