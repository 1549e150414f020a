"""What one client can make the health server do: metrics renders, pipelined answers, odd
targets, the counts it exports, and an address it cannot listen on."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clock import FakeClock
from tests.support.streaming import worker_settings
from tests.support.worker_process import worker_process
from worker.config import Settings
from worker.errors import ConfigError
from worker.observability.bounded_http import (
    ANSWER_INTERVAL_S,
    LINGER_BYTES,
    LINGER_S,
    HttpLimits,
)
from worker.observability.http import METRICS_MAX_AGE_S, HealthServer
from worker.observability.metrics import WorkerMetrics

# The event loop's clock is only as fine as its selector's timeout.
EARLY_MARGIN_S = 0.01


class CountingMetrics(WorkerMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.renders = 0

    def render(self) -> bytes:
        self.renders += 1
        return super().render()


async def exchange(port: int, request: bytes) -> bytes:
    """Sends `request` on a new connection and reads until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode()


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@contextlib.asynccontextmanager
async def serving(
    metrics: WorkerMetrics | None = None, **options: object
) -> AsyncIterator[HealthServer]:
    server = HealthServer(
        metrics or WorkerMetrics(),
        lambda: (True, "ok"),
        "127.0.0.1",
        0,
        HttpLimits(idle_timeout_s=0.5, request_timeout_s=0.5),
        **options,  # type: ignore[arg-type]
    )
    async with server:
        yield server


@pytest.mark.parametrize("age_s", [0.0, METRICS_MAX_AGE_S - 0.001])
async def test_scrapes_within_the_max_age_render_once(age_s: float) -> None:
    metrics, clock = CountingMetrics(), FakeClock(100.0)
    async with serving(metrics, metrics_max_age_s=METRICS_MAX_AGE_S, clock=clock) as server:
        first = await exchange(server.port, get("/metrics"))
        metrics.set_ready(True)  # not seen until the render is max-age old
        clock.now += age_s
        second = await exchange(server.port, get("/metrics"))
    assert metrics.renders == 1
    assert status(first) == status(second) == 200
    assert first.split(b"\r\n\r\n", 1)[1] == second.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("age_s", [METRICS_MAX_AGE_S, METRICS_MAX_AGE_S + 0.001])
async def test_a_scrape_at_the_max_age_renders_again(age_s: float) -> None:
    metrics, clock = CountingMetrics(), FakeClock(100.0)
    async with serving(metrics, metrics_max_age_s=METRICS_MAX_AGE_S, clock=clock) as server:
        await exchange(server.port, get("/metrics"))
        metrics.set_ready(True)
        clock.now += age_s
        fresh = await exchange(server.port, get("/metrics"))
    assert metrics.renders == 2
    assert b"qa_worker_ready 1.0" in fresh


def test_the_settings_cap_the_age_of_a_scrape() -> None:
    server = HealthServer.from_settings(WorkerMetrics(), lambda: (True, "ok"), Settings())
    assert server.metrics_max_age_s == METRICS_MAX_AGE_S


async def read_answers(reader: asyncio.StreamReader, count: int) -> list[float]:
    """The loop time at which each of `count` answers (bodiless, HEAD) arrived."""
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        times.append(loop.time())
    return times


@pytest.mark.parametrize("pipelined", [2, 5])
async def test_pipelined_requests_are_answered_at_most_one_per_interval(pipelined: int) -> None:
    async with serving() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"HEAD /healthz HTTP/1.1\r\n\r\n" * pipelined)
            times = await read_answers(reader, pipelined)
        finally:
            writer.close()
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= ANSWER_INTERVAL_S - EARLY_MARGIN_S


async def test_a_probe_is_answered_at_once_beside_a_pipelining_connection() -> None:
    loop = asyncio.get_running_loop()
    async with serving() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"HEAD /metrics HTTP/1.1\r\n\r\n" * 1000)
            await read_answers(reader, 1)
            started = loop.time()
            probe = await exchange(server.port, get("/healthz"))
            probed_in = loop.time() - started
            # The pipelining connection has had one more answer at most meanwhile.
            assert server.open_connections == 1
        finally:
            writer.close()
    assert status(probe) == 200
    assert probed_in < ANSWER_INTERVAL_S


async def test_a_keep_alive_client_asking_again_at_once_waits_for_the_interval() -> None:
    async with serving() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"HEAD /healthz HTTP/1.1\r\n\r\n")
            (first,) = await read_answers(reader, 1)
            writer.write(b"HEAD /healthz HTTP/1.1\r\n\r\n")
            (second,) = await read_answers(reader, 1)
        finally:
            writer.close()
    assert second - first >= ANSWER_INTERVAL_S - EARLY_MARGIN_S


REFUSED = b"GET / HTTP/1.1\r\n" + b"a:\r\n" * 200 + b"\r\n"  # over the header-line limit


@pytest.mark.parametrize("after", [LINGER_BYTES - 1, LINGER_BYTES])
async def test_a_refusal_is_read_by_a_client_still_sending_up_to_the_linger_bytes(
    after: int,
) -> None:
    async with serving() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(REFUSED + b"x" * after)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        finally:
            writer.close()
    assert head.startswith(b"HTTP/1.1 431 ")


async def test_a_client_sending_past_the_linger_bytes_is_closed_at_once() -> None:
    loop = asyncio.get_running_loop()
    async with serving() as server:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            started = loop.time()
            writer.write(REFUSED + b"x" * (LINGER_BYTES + 1))
            await writer.drain()
            while server.open_connections and loop.time() - started < LINGER_S:
                await asyncio.sleep(0.005)
            closed_in = loop.time() - started
        finally:
            writer.close()
    assert closed_in < LINGER_S


async def answer_to(target: bytes) -> int:
    async with serving() as server:
        request = b"GET " + target + b" HTTP/1.1\r\nConnection: close\r\n\r\n"
        return status(await exchange(server.port, request))


@pytest.mark.parametrize("target", [b"http://[/healthz", b"//[x]/healthz", b"http://[::1/metrics"])
async def test_a_target_that_is_not_a_url_is_answered_400(target: bytes) -> None:
    assert await answer_to(target) == 400


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(["/", "//", "[", "]", ":", "@", "?", "#", "%", "http:", "healthz", "x"]),
        min_size=1,
        max_size=8,
    ).map("".join)
    | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
)
def test_no_target_is_answered_500(target: str) -> None:
    assert asyncio.run(answer_to(target.encode())) in {200, 400, 404}


def scraped(metrics: WorkerMetrics) -> dict[tuple[str, str], float]:
    families = text_string_to_metric_families(metrics.render().decode())
    return {
        (sample.name, sample.labels.get("reason", "")): sample.value
        for family in families
        if family.name.startswith("qa_worker_http_")
        for sample in family.samples
        if sample.name.endswith("_total")
    }


async def test_the_servers_counts_are_exported_by_reason() -> None:
    metrics = WorkerMetrics()
    closed = "qa_worker_http_connections_closed_total"
    accepted = "qa_worker_http_connections_accepted_total"
    before = scraped(metrics)
    assert before == {
        (accepted, ""): 0,
        **{(closed, reason): 0 for reason in ("evicted", "timed_out", "too_large", "malformed")},
    }
    async with serving(metrics) as server:
        assert status(await exchange(server.port, get("/healthz"))) == 200
        assert status(await exchange(server.port, b"GET / HTTP/1.1\r\nA" + b"a" * 9000)) == 431
        assert status(await exchange(server.port, b"NOT HTTP\r\n\r\n")) == 400
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finished: timed out, and reset
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 5)
        writer.close()
        counts = scraped(metrics)
    assert counts == {
        (accepted, ""): 4,
        (closed, "evicted"): 0,
        (closed, "timed_out"): 1,
        (closed, "too_large"): 1,
        (closed, "malformed"): 1,
    }


async def test_an_address_in_use_is_a_config_error_naming_the_settings() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = HealthServer(WorkerMetrics(), lambda: (True, "ok"), "127.0.0.1", port)
        with pytest.raises(ConfigError) as raised:
            await server.start()
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message
    assert "--http-port / QA_HTTP_PORT" in message
    assert "--http-host / QA_HTTP_HOST" in message
    assert "\n" not in message


async def test_run_on_a_port_in_use_exits_2_in_one_line(
    exported_models: dict[str, Path], tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        # The server is started before the broker is asked for anything.
        settings = worker_settings("127.0.0.1:1", exported_models["bert"], http_port=port)
        log = tmp_path / "worker.log"
        with worker_process(settings, log) as process:
            started = time.monotonic()
            code = await asyncio.to_thread(process.wait, 120)
    output = log.read_text()
    assert code == 2, output
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if f"127.0.0.1:{port}" in line]
    assert "--http-port / QA_HTTP_PORT" in line
    assert time.monotonic() - started < 120
