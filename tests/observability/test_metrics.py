"""WorkerMetrics as Prometheus scrapes it: through a started HealthServer, parsed by the client."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.support.clock import FakeClock
from worker import __version__
from worker.errors import ErrorCode
from worker.observability.http import HealthServer
from worker.observability.metrics import METRIC_NAMES, PADDING_HALF_LIFE_SECONDS, WorkerMetrics
from worker.qa import QAResult
from worker.stream.app import CommitSensor


class Readiness:
    """A readiness check the test flips."""

    def __init__(self) -> None:
        self.ready = False
        self.reason = "model not loaded"

    def __call__(self) -> tuple[bool, str]:
        return self.ready, self.reason


class Scrape:
    """One /metrics response, parsed."""

    def __init__(self, text: str) -> None:
        self.families = {family.name: family for family in text_string_to_metric_families(text)}

    def exported_names(self) -> set[str]:
        # The parser names a counter's family without `_total`; PromQL and METRIC_NAMES keep it.
        return {
            family.name + "_total" if family.type == "counter" else family.name
            for family in self.families.values()
        }

    def samples(self, name: str) -> list[Sample]:
        return [s for family in self.families.values() for s in family.samples if s.name == name]

    def value(self, name: str, **labels: str) -> float:
        matches = [s.value for s in self.samples(name) if s.labels == labels]
        assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples in {self.samples(name)}"
        return matches[0]

    def bucket(self, name: str, le: str) -> float:
        return self.value(name + "_bucket", le=le)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def metrics(clock: FakeClock) -> WorkerMetrics:
    return WorkerMetrics(clock=clock)


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
async def server(metrics: WorkerMetrics, readiness: Readiness) -> AsyncIterator[HealthServer]:
    async with HealthServer(metrics, readiness, host="127.0.0.1", port=0) as started:
        yield started


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def scrape(http: aiohttp.ClientSession, server: HealthServer) -> Scrape:
    async with http.get(f"http://127.0.0.1:{server.port}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return Scrape(await response.text())


def simulate(metrics: WorkerMetrics) -> None:
    """A little of everything the worker reports."""
    for topic in ("questions", "questions", "questions", "priority"):
        metrics.event_received(topic)
    metrics.event_answered(end_to_end_s=0.2, queue_s=0.05)
    metrics.event_answered(end_to_end_s=3.0, queue_s=1.5)
    metrics.event_dead_lettered(ErrorCode.EMPTY_CONTEXT)
    metrics.event_dead_lettered(ErrorCode.EMPTY_CONTEXT)
    metrics.event_dead_lettered(ErrorCode.INVALID_JSON)
    metrics.on_batch(windows=3, real_tokens=300, padded_tokens=384, seconds=0.04, plan_s=1e-5)
    metrics.on_batch(windows=16, real_tokens=4000, padded_tokens=6144, seconds=0.7, plan_s=2e-4)
    metrics.set_in_flight(5)
    metrics.set_lags({("questions", 0): 7, ("questions", 1): 0})
    metrics.set_model_info(
        model="mobilebert", model_type="mobilebert", precision="int8", checksum="abc123"
    )
    metrics.set_ready(True)
    metrics.answer_scored("questions", "", answer(0.93))
    metrics.answer_scored("documents", "deals", answer(0.4, abstained=True))


def answer(score: float, abstained: bool = False) -> QAResult:
    text = "" if abstained else "Paris"
    return QAResult(text, score, 0, len(text), is_impossible=abstained, null_score=0.1)


@pytest.fixture
async def scraped(
    metrics: WorkerMetrics, server: HealthServer, http: aiohttp.ClientSession
) -> Scrape:
    """What /metrics serves after `simulate`."""
    simulate(metrics)
    return await scrape(http, server)


def test_every_contract_name_is_exported(scraped: Scrape) -> None:
    assert set(METRIC_NAMES) <= scraped.exported_names()
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES)
    assert all(name.startswith("qa_worker_") for name in METRIC_NAMES)


def test_event_counters(scraped: Scrape) -> None:
    received = "qa_worker_events_received_total"
    assert scraped.value(received, topic="questions") == 3
    assert scraped.value(received, topic="priority") == 1
    assert scraped.value("qa_worker_events_answered_total") == 2
    dead = "qa_worker_events_dead_lettered_total"
    assert scraped.value(dead, reason="empty_context") == 2
    assert scraped.value(dead, reason="invalid_json") == 1
    assert scraped.value("qa_worker_in_flight_events") == 5


async def test_answer_scores_and_abstentions_by_topic_and_question_set(
    metrics: WorkerMetrics, server: HealthServer, http: aiohttp.ClientSession
) -> None:
    for score, abstained in ((0.95, False), (0.5, False), (0.7, True), (0.99, False)):
        metrics.answer_scored("documents", "deals", answer(score, abstained))
    metrics.answer_scored("questions", "", answer(0.3, abstained=True))
    scraped = await scrape(http, server)
    deals = {"topic": "documents", "question_set": "deals"}
    plain = {"topic": "questions", "question_set": ""}
    score = "qa_worker_answer_score"
    assert scraped.value(score + "_count", **deals) == 4
    assert scraped.value(score + "_sum", **deals) == pytest.approx(0.95 + 0.5 + 0.7 + 0.99)
    # At a bucket's bound a score counts in it, just over it in the next one.
    assert scraped.value(score + "_bucket", le="0.5", **deals) == 1
    assert scraped.value(score + "_bucket", le="0.95", **deals) == 3
    assert scraped.value(score + "_bucket", le="0.99", **deals) == 4
    assert scraped.value(score + "_count", **plain) == 1
    abstentions = "qa_worker_abstentions_total"
    assert scraped.value(abstentions, **deals) == 1
    assert scraped.value(abstentions, **plain) == 1


def test_dead_letter_reasons_are_only_error_codes() -> None:
    metrics = WorkerMetrics()
    metrics.event_dead_lettered("invalid_json")
    with pytest.raises(ValueError, match="free text"):
        metrics.event_dead_lettered("free text")
    dead = "qa_worker_events_dead_lettered_total"
    assert metrics.registry.get_sample_value(dead, {"reason": "invalid_json"}) == 1
    assert metrics.registry.get_sample_value(dead, {"reason": "free text"}) is None


async def test_latency_histograms(
    metrics: WorkerMetrics, server: HealthServer, http: aiohttp.ClientSession
) -> None:
    simulate(metrics)
    # Producer clock skew: counted, but as zero rather than subtracted from the sum.
    metrics.event_answered(end_to_end_s=-0.5, queue_s=0.001)
    scraped = await scrape(http, server)

    e2e = "qa_worker_end_to_end_latency_seconds"
    assert scraped.value(e2e + "_count") == 3
    assert scraped.value(e2e + "_sum") == pytest.approx(3.2)
    assert scraped.bucket(e2e, "0.005") == 1
    assert scraped.bucket(e2e, "0.25") == 2
    assert scraped.bucket(e2e, "2.5") == 2
    assert scraped.bucket(e2e, "5.0") == 3
    assert scraped.bucket(e2e, "60.0") == 3
    assert scraped.bucket(e2e, "+Inf") == 3

    queue = "qa_worker_queue_wait_seconds"
    assert scraped.value(queue + "_count") == 3
    assert scraped.value(queue + "_sum") == pytest.approx(1.551)

    inference = "qa_worker_inference_seconds"
    assert scraped.value(inference + "_count") == 2
    assert scraped.value(inference + "_sum") == pytest.approx(0.74)
    assert scraped.bucket(inference, "0.05") == 1
    assert scraped.bucket(inference, "1.0") == 2


def test_batch_histograms_and_tokens(scraped: Scrape) -> None:
    windows = "qa_worker_batch_size_windows"
    assert scraped.value(windows + "_count") == 2
    assert scraped.value(windows + "_sum") == 19
    assert scraped.bucket(windows, "1.0") == 0
    assert scraped.bucket(windows, "4.0") == 1
    assert scraped.bucket(windows, "16.0") == 2

    tokens = "qa_worker_batch_tokens"
    assert scraped.value(tokens + "_sum") == 384 + 6144
    assert scraped.bucket(tokens, "256.0") == 0
    assert scraped.bucket(tokens, "512.0") == 1
    assert scraped.bucket(tokens, "4096.0") == 1
    assert scraped.bucket(tokens, "8192.0") == 2
    assert scraped.bucket(tokens, "16384.0") == 2

    assert scraped.value("qa_worker_tokens_real_total") == 4300
    assert scraped.value("qa_worker_tokens_padded_total") == 6528
    # Both batches ran at the same instant, so neither has decayed: the plain ratio.
    assert scraped.value("qa_worker_padding_ratio") == pytest.approx(6528 / 4300)


async def test_padding_ratio_follows_recent_batches(
    metrics: WorkerMetrics, clock: FakeClock, server: HealthServer, http: aiohttp.ClientSession
) -> None:
    assert math.isnan((await scrape(http, server)).value("qa_worker_padding_ratio"))

    metrics.on_batch(windows=2, real_tokens=100, padded_tokens=300, seconds=0.01, plan_s=0.0)
    assert (await scrape(http, server)).value("qa_worker_padding_ratio") == pytest.approx(3.0)

    clock.advance(PADDING_HALF_LIFE_SECONDS)
    metrics.on_batch(windows=2, real_tokens=100, padded_tokens=100, seconds=0.01, plan_s=0.0)
    # The first batch now weighs half: (150 + 100) / (50 + 100).
    scraped = await scrape(http, server)
    assert scraped.value("qa_worker_padding_ratio") == pytest.approx(250 / 150)
    # The counters keep the exact totals for PromQL's own ratio.
    assert scraped.value("qa_worker_tokens_padded_total") == 400
    assert scraped.value("qa_worker_tokens_real_total") == 200


async def test_lags_follow_the_assignment(
    metrics: WorkerMetrics, server: HealthServer, http: aiohttp.ClientSession
) -> None:
    lag = "qa_worker_consumer_lag_messages"
    metrics.set_lags({("questions", 0): 7, ("questions", 1): 0, ("priority", 0): 12})
    scraped = await scrape(http, server)
    assert scraped.value(lag, topic="questions", partition="0") == 7
    assert scraped.value(lag, topic="questions", partition="1") == 0
    assert scraped.value(lag, topic="priority", partition="0") == 12

    # A rebalance takes questions/0 and priority/0 away and brings questions/2.
    metrics.set_lags({("questions", 1): 3, ("questions", 2): 40})
    scraped = await scrape(http, server)
    assert {(s.labels["topic"], s.labels["partition"]): s.value for s in scraped.samples(lag)} == {
        ("questions", "1"): 3,
        ("questions", "2"): 40,
    }

    metrics.set_lags({})
    assert (await scrape(http, server)).samples(lag) == []


async def test_seconds_since_last_commit(
    metrics: WorkerMetrics, clock: FakeClock, server: HealthServer, http: aiohttp.ClientSession
) -> None:
    since = "qa_worker_seconds_since_last_commit"
    assert (await scrape(http, server)).value(since) == 0
    clock.advance(12.5)
    # No commit yet: counted from the start, and recomputed at every scrape.
    assert (await scrape(http, server)).value(since) == pytest.approx(12.5)
    clock.advance(2.5)
    assert (await scrape(http, server)).value(since) == pytest.approx(15.0)

    metrics.committed()
    assert (await scrape(http, server)).value(since) == 0
    clock.advance(4.0)
    assert (await scrape(http, server)).value(since) == pytest.approx(4.0)


async def test_model_info_has_one_series(
    metrics: WorkerMetrics, server: HealthServer, http: aiohttp.ClientSession
) -> None:
    info = "qa_worker_model_info"
    # Nothing until a model is loaded: an unlabelled 1 would claim a model that is not there.
    assert (await scrape(http, server)).samples(info) == []

    metrics.set_model_info(model="bert-a", model_type="bert", precision="fp32", checksum="aa")
    metrics.set_model_info(
        model="bert-b", model_type="bert", precision="int8", checksum="bb", worker_version="9.9"
    )
    samples = (await scrape(http, server)).samples(info)
    assert [(s.labels, s.value) for s in samples] == [
        (
            {
                "model": "bert-b",
                "model_type": "bert",
                "precision": "int8",
                "checksum": "bb",
                "worker_version": "9.9",
            },
            1,
        )
    ]

    metrics.set_model_info(model="bert-c", model_type="bert", precision="fp32", checksum="cc")
    samples = (await scrape(http, server)).samples(info)
    assert [s.labels["worker_version"] for s in samples] == [__version__]


async def assert_readiness_served(
    http: aiohttp.ClientSession, server: HealthServer, status: int, ready: bool, reason: str
) -> None:
    """/readyz answers `status` with `ready` and `reason`, and qa_worker_ready says the same."""
    async with http.get(f"http://127.0.0.1:{server.port}/readyz") as response:
        assert response.status == status
        assert await response.json() == {"ready": ready, "reason": reason}
    assert (await scrape(http, server)).value("qa_worker_ready") == (1 if ready else 0)


async def test_probes(
    metrics: WorkerMetrics,
    readiness: Readiness,
    server: HealthServer,
    http: aiohttp.ClientSession,
) -> None:
    base = f"http://127.0.0.1:{server.port}"
    async with http.get(base + "/healthz") as response:
        assert (response.status, await response.json()) == (200, {"status": "alive"})

    await assert_readiness_served(http, server, 503, False, "model not loaded")

    readiness.ready, readiness.reason = True, "consuming"
    metrics.set_ready(True)
    await assert_readiness_served(http, server, 200, True, "consuming")

    readiness.ready, readiness.reason = False, "broker unreachable"
    metrics.set_ready(False)
    await assert_readiness_served(http, server, 503, False, "broker unreachable")

    async with http.get(base + "/nothing-here") as response:
        assert response.status == 404


async def test_scrapes_and_probes_leave_no_access_log(
    server: HealthServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    for path in ("/metrics", "/healthz", "/readyz"):
        async with http.get(f"http://127.0.0.1:{server.port}{path}") as response:
            await response.read()
    assert [record for record in caplog.records if record.name == "aiohttp.access"] == []


MALFORMED_REQUESTS = (
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /\x00 HTTP/1.1\r\n\r\n",
)


@pytest.mark.parametrize("request_bytes", MALFORMED_REQUESTS)
async def test_a_malformed_request_logs_one_line_and_the_server_goes_on(
    request_bytes: bytes,
    server: HealthServer,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request_bytes)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    assert reply.startswith(b"HTTP/1.0 400") or reply.startswith(b"HTTP/1.1 400")
    logged = [record for record in caplog.records if record.levelno >= logging.INFO]
    assert len(logged) == 1, [record.getMessage() for record in logged]
    assert logged[0].levelno == logging.WARNING
    assert logged[0].exc_info is None
    assert "malformed HTTP, answered 400" in logged[0].getMessage()
    assert "\n" not in logged[0].getMessage()
    async with http.get(f"http://127.0.0.1:{server.port}/healthz") as response:
        assert response.status == 200


async def test_two_workers_in_one_process(http: aiohttp.ClientSession) -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.event_received("questions")
    first.event_received("questions")
    second.event_received("questions")
    second.set_lags({("questions", 3): 9})
    async with (
        HealthServer(first, lambda: (True, "ok"), host="127.0.0.1", port=0) as one,
        HealthServer(second, lambda: (True, "ok"), host="127.0.0.1", port=0) as two,
    ):
        assert one.port != two.port
        scraped_one, scraped_two = await scrape(http, one), await scrape(http, two)
    received = "qa_worker_events_received_total"
    assert scraped_one.value(received, topic="questions") == 2
    assert scraped_two.value(received, topic="questions") == 1
    assert scraped_one.samples("qa_worker_consumer_lag_messages") == []
    lag = scraped_two.value("qa_worker_consumer_lag_messages", topic="questions", partition="3")
    assert lag == 9


async def test_lifecycle(metrics: WorkerMetrics, http: aiohttp.ClientSession) -> None:
    server = HealthServer(metrics, lambda: (True, "ok"), host="127.0.0.1", port=0)
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    await server.start()
    port = server.port
    assert port > 0
    with pytest.raises(RuntimeError, match="already started"):
        await server.start()
    await scrape(http, server)

    await server.stop()
    await server.stop()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(f"http://127.0.0.1:{port}/healthz")


async def test_commits_that_move_no_offset_leave_the_commit_age_rising(
    metrics: WorkerMetrics, clock: FakeClock, server: HealthServer, http: aiohttp.ClientSession
) -> None:
    since = "qa_worker_seconds_since_last_commit"
    committed: dict[str, int] = {}
    sensor = CommitSensor(metrics, lambda: committed)
    committed["questions-0"] = 5
    sensor.on_commit_completed(None, None)
    assert (await scrape(http, server)).value(since) == 0
    # faust commits every interval; with every event stuck in flight nothing moves.
    for _ in range(30):
        clock.advance(1.0)
        sensor.on_commit_completed(None, None)
    assert (await scrape(http, server)).value(since) == pytest.approx(30.0)
    committed["questions-1"] = 1
    sensor.on_commit_completed(None, None)
    assert (await scrape(http, server)).value(since) == 0
    clock.advance(2.0)
    committed["questions-1"] = 9
    sensor.on_commit_completed(None, None)
    assert (await scrape(http, server)).value(since) == 0
