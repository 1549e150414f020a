"""Tracing hooks on the real OpenTelemetry SDK (in-memory and OTLP/HTTP exporters), the no-op
used when tracing is off, the worker without OpenTelemetry installed, and JSON log lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from tests.support.otlp import OtlpReceiver, clear_otel_environment
from tests.support.windows import token_window
from tests.support.without_torch import REPO_ROOT
from worker.batching.batcher import MicroBatcher
from worker.batching.plan import BatchLimits
from worker.bench.tracing_overhead import OtlpSink
from worker.config import Settings
from worker.errors import ConfigError, ErrorCode
from worker.observability.logs import JsonFormatter, bind_event, configure_logging, event_fields
from worker.observability.tracing import NO_TRACING, build_tracing, traceparent_ids
from worker.observability.tracing_otel import ExportLedger, OtelTracing, otlp_tracing
from worker.qa import QAOptions, QAResult
from worker.qa.decode import WindowLogits
from worker.qa.windows import EncodedQuestion, Window

TIMEOUT = 30.0
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01".encode()


@dataclass(frozen=True)
class Record:
    topic: str = "questions"
    partition: int = 3
    offset: int = 41
    key: bytes | None = b"key-1"


class LengthEngine:
    """Reads the context as window lengths ("5 12" is two windows); every answer scores 0.5."""

    streams = 1

    def encode(self, question: str, context: str) -> EncodedQuestion:
        windows = [token_window(np.ones(n, np.int64)) for n in map(int, context.split())]
        return EncodedQuestion(question, context, windows, context_sequence=1)

    def infer(self, windows: Sequence[Window], stream: int) -> list[WindowLogits]:
        return [
            WindowLogits(np.zeros(len(w), np.float32), np.zeros(len(w), np.float32))
            for w in windows
        ]

    def decode(
        self, encoded: EncodedQuestion, logits: Sequence[WindowLogits], options: QAOptions
    ) -> QAResult:
        return QAResult("", 0.5, 0, 0, is_impossible=True, null_score=0.5)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def sdk_tracing(exporter: InMemorySpanExporter, sampler: object = None) -> OtelTracing:
    provider = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OtelTracing(provider)


async def handle_event(
    tracing: OtelTracing | object,
    batcher: MicroBatcher,
    headers: list[tuple[str, bytes]],
    record: Record,
    context: str,
    reason: ErrorCode | None = None,
) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """What QAWorker._handle does with the hooks: (outgoing headers, bound log fields)."""
    with tracing.event(record, headers, "test-group") as trace:  # type: ignore[attr-defined]
        bind_event(event_id=f"event-{record.offset}")
        await batcher.answer("q", context, QAOptions())
        with tracing.produce("answers"):  # type: ignore[attr-defined]
            outgoing = tracing.outgoing_headers(headers)  # type: ignore[attr-defined]
        trace.finish("answers", reason)
        return outgoing, dict(event_fields())


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    return named


async def test_events_continue_their_trace_and_the_batch_links_every_event(
    exporter: InMemorySpanExporter,
) -> None:
    tracing = sdk_tracing(exporter)
    # Two one-window events of one length fill a batch of two; the long wait makes them share it.
    limits = BatchLimits(batch_size=2, max_batch_tokens=1024, max_wait_ms=TIMEOUT * 1000)
    async with MicroBatcher(LengthEngine(), limits, tracing=tracing) as batcher:
        traced_headers = [
            ("traceparent", TRACEPARENT),
            ("tracestate", b"vendor=abc"),
            ("correlation-id", b"c-1"),
        ]
        (traced_out, traced_fields), (fresh_out, fresh_fields) = await asyncio.wait_for(
            asyncio.gather(
                handle_event(tracing, batcher, traced_headers, Record(offset=1), "12"),
                handle_event(tracing, batcher, [], Record(offset=2), "12"),
            ),
            TIMEOUT,
        )
    named = by_name(exporter.get_finished_spans())
    assert sorted(named) == ["inference batch", "process questions", "send answers"]
    processes = {
        span.attributes["messaging.kafka.offset"]: span for span in named["process questions"]
    }
    traced, fresh = processes[1], processes[2]
    # The traced event continues the incoming trace, under the incoming span.
    assert format_trace_id(traced.context.trace_id) == TRACE_ID
    assert traced.parent is not None and format_span_id(traced.parent.span_id) == PARENT_ID
    assert traced.kind is SpanKind.CONSUMER
    assert dict(traced.attributes) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "questions",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 1,
        "messaging.consumer.group.name": "test-group",
        "messaging.kafka.message.key": "key-1",
        "messaging.message.id": "event-1",
        "qa.reply.topic": "answers",
    }
    # The event without one starts a trace of its own.
    assert fresh.parent is None and fresh.context.trace_id != traced.context.trace_id
    for process in (traced, fresh):
        children = {
            span.name: span
            for spans in named.values()
            for span in spans
            if span.parent is not None and span.parent.span_id == process.context.span_id
        }
        assert sorted(children) == ["send answers"]
        assert children["send answers"].context.trace_id == process.context.trace_id
        assert children["send answers"].kind is SpanKind.PRODUCER
        # The steps are span events of the event's span, in order, each with its duration.
        steps = {event.name: event for event in process.events}
        assert [event.name for event in process.events] == ["tokenize", "queue wait", "decode"]
        ends = {
            name: event.timestamp + event.attributes["qa.duration_ms"] * 1e6
            for name, event in steps.items()
        }
        assert process.start_time <= steps["tokenize"].timestamp
        # Rounded to whole nanoseconds through a float: a microsecond of slack.
        assert ends["tokenize"] <= steps["queue wait"].timestamp + 1e3
        assert ends["queue wait"] <= steps["decode"].timestamp + 1e3
        assert ends["decode"] <= children["send answers"].start_time + 1e3
    # One batch served both traces: a root span linked to each event's span.
    [batch] = named["inference batch"]
    assert batch.parent is None
    assert {link.context.span_id for link in batch.links} == {
        traced.context.span_id,
        fresh.context.span_id,
    }
    assert dict(batch.attributes) == {
        "qa.batch.windows": 2,
        "qa.batch.events": 2,
        "qa.batch.padded_tokens": 24,
        "qa.batch.streams": ("questions",),
    }
    # The answer's headers carry the producer span's context, once, in place of the incoming.
    send = next(s for s in named["send answers"] if s.parent.span_id == traced.context.span_id)
    assert traced_out == [
        ("correlation-id", b"c-1"),
        ("traceparent", f"00-{TRACE_ID}-{format_span_id(send.context.span_id)}-01".encode()),
        ("tracestate", b"vendor=abc"),
    ]
    assert traceparent_ids(fresh_out) == (
        format_trace_id(fresh.context.trace_id),
        format_span_id(next(s for s in named["send answers"] if s is not send).context.span_id),
    )
    assert traced_fields == {
        "trace_id": TRACE_ID,
        "span_id": format_span_id(traced.context.span_id),
        "event_id": "event-1",
    }
    assert fresh_fields["trace_id"] == format_trace_id(fresh.context.trace_id)


async def test_a_dead_lettered_event_ends_its_span_as_an_error(
    exporter: InMemorySpanExporter,
) -> None:
    tracing = sdk_tracing(exporter)
    async with MicroBatcher(LengthEngine(), BatchLimits(), tracing=tracing) as batcher:
        await handle_event(tracing, batcher, [], Record(), "5", reason=ErrorCode.DEADLINE_EXCEEDED)
    [process] = by_name(exporter.get_finished_spans())["process questions"]
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "deadline_exceeded"
    assert process.attributes["qa.dead_letter.reason"] == "deadline_exceeded"


async def test_an_unsampled_event_exports_nothing_and_still_passes_its_trace_on(
    exporter: InMemorySpanExporter,
) -> None:
    tracing = sdk_tracing(exporter, ParentBased(TraceIdRatioBased(0.0)))
    async with MicroBatcher(LengthEngine(), BatchLimits(), tracing=tracing) as batcher:
        unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00".encode()
        outgoing, fields = await handle_event(
            tracing, batcher, [("traceparent", unsampled)], Record(), "5"
        )
    # The batch span is a root: the ratio sampler decides it too, and leaves it out at 0.
    assert exporter.get_finished_spans() == ()
    [(name, value)] = outgoing
    assert name == "traceparent" and value.startswith(f"00-{TRACE_ID}-".encode())
    assert value.endswith(b"-00") and value != unsampled
    assert fields["trace_id"] == TRACE_ID


@pytest.mark.parametrize("traced", [False, True], ids=["off", "otel"])
def test_an_events_log_fields_end_with_its_event(
    traced: bool, exporter: InMemorySpanExporter
) -> None:
    # Not async on purpose: a caller handling events one after another in one context must not
    # leave one event's ids on the next one's lines.
    tracing = sdk_tracing(exporter) if traced else NO_TRACING
    with tracing.event(Record(), [("traceparent", TRACEPARENT)], "test-group"):
        bind_event(event_id="event-1")
        assert event_fields()["trace_id"] == TRACE_ID
        assert event_fields()["event_id"] == "event-1"
    assert dict(event_fields()) == {}


def test_traceparent_ids_accept_only_valid_w3c_headers() -> None:
    def ids(*values: bytes) -> tuple[str, str] | None:
        return traceparent_ids([("traceparent", value) for value in values])

    assert ids(TRACEPARENT) == (TRACE_ID, PARENT_ID)
    # The first of two wins, as in OpenTelemetry's Kafka header getter.
    assert ids(TRACEPARENT, f"00-{'1' * 32}-{PARENT_ID}-01".encode()) == (TRACE_ID, PARENT_ID)
    assert traceparent_ids([("other", TRACEPARENT)]) is None
    for bad in (
        TRACEPARENT.upper(),
        TRACEPARENT[:-1],
        TRACEPARENT + b"0",
        b"ff" + TRACEPARENT[2:],
        f"00-{'0' * 32}-{PARENT_ID}-01".encode(),
        f"00-{TRACE_ID}-{'0' * 16}-01".encode(),
        b"\xff" * 55,
    ):
        assert ids(bad) is None, bad


async def test_with_tracing_off_headers_pass_unchanged_and_logs_keep_the_trace_id() -> None:
    headers = [("traceparent", TRACEPARENT), ("a", b"1")]
    assert build_tracing(Settings()) is NO_TRACING

    async def handle() -> dict[str, str]:
        with NO_TRACING.event(Record(), headers, "group") as trace:
            with NO_TRACING.stage("tokenize"), NO_TRACING.produce("answers"):
                assert NO_TRACING.outgoing_headers(headers) is headers
            assert NO_TRACING.link() is None
            trace.finish("answers", None)
            return dict(event_fields())

    assert await asyncio.create_task(handle()) == {"trace_id": TRACE_ID}


def test_otlp_protocols_other_than_http_protobuf_fail_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL='grpc'.*http/protobuf"):
        build_tracing(Settings(tracing="otlp"))


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


async def test_spans_reach_an_otlp_http_receiver_as_protobuf(
    otlp_receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_otel_environment(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp_receiver.url)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    tracing = build_tracing(Settings(tracing="otlp"))
    async with MicroBatcher(LengthEngine(), BatchLimits(), tracing=tracing) as batcher:
        await handle_event(tracing, batcher, [("traceparent", TRACEPARENT)], Record(), "5")
    # Shutting down flushes the batch span processor: every span is sent by the time it returns.
    await asyncio.to_thread(tracing.shutdown)
    assert otlp_receiver.received.is_set()
    assert set(otlp_receiver.paths) == {"/v1/traces"}
    assert set(otlp_receiver.content_types) == {"application/x-protobuf"}
    spans = []
    for request in otlp_receiver.requests:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert resource["service.name"] == "kafka-qa-worker"
            assert resource["deployment.environment"] == "test"
            for scope_spans in resource_spans.scope_spans:
                spans.extend(scope_spans.spans)
    names = sorted(span.name for span in spans)
    assert names == ["inference batch", "process questions", "send answers"]
    [process] = [span for span in spans if span.name == "process questions"]
    assert [event.name for event in process.events] == ["tokenize", "queue wait", "decode"]
    assert process.trace_id.hex() == TRACE_ID and process.parent_span_id.hex() == PARENT_ID
    [batch] = [span for span in spans if span.name == "inference batch"]
    assert [link.span_id for link in batch.links] == [process.span_id]


async def test_the_service_name_comes_from_otel_service_name_when_set(
    otlp_receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp_receiver.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "qa-east")
    tracing = otlp_tracing()
    with tracing.event(Record(), [], "group") as trace:
        trace.finish("answers", None)
    await asyncio.to_thread(tracing.shutdown)
    [request] = otlp_receiver.requests
    resource = {a.key: a.value.string_value for a in request.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "qa-east"


WITHOUT_OPENTELEMETRY = """
import sys
from importlib.machinery import PathFinder


class PathFinderWithoutOpenTelemetry(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] == "opentelemetry":
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [
    PathFinderWithoutOpenTelemetry if f is PathFinder else f for f in sys.meta_path
]
import worker.cli, worker.stream, worker.batching.batcher
from worker.config import Settings
from worker.errors import ConfigError
from worker.observability.tracing import NO_TRACING, build_tracing

assert build_tracing(Settings()) is NO_TRACING
try:
    build_tracing(Settings(tracing="otlp"))
except ConfigError as error:
    print(error)
else:
    sys.exit("tracing started without OpenTelemetry")
loaded = sorted({name for name in sys.modules if name.partition(".")[0] == "opentelemetry"})
sys.exit(f"imported {loaded}" if loaded else 0)
"""


def test_the_worker_imports_and_starts_untraced_without_opentelemetry() -> None:
    environ = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPENTELEMETRY],
        capture_output=True,
        text=True,
        env=environ,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "--tracing / QA_TRACING otlp needs OpenTelemetry (opentelemetry" in done.stdout
    assert "pip install 'kafka-qa-worker[tracing]'" in done.stdout


async def test_json_log_lines_carry_the_ids_bound_in_their_own_task_only() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("tests.tracing.json")
    log.addHandler(handler)
    log.propagate = False
    try:

        async def about_an_event() -> None:
            bind_event(event_id="q-7", trace_id=TRACE_ID)
            bind_event(span_id=PARENT_ID)
            try:
                raise ValueError("bad input")
            except ValueError:
                log.exception("failed on %s", "q-7")

        await asyncio.create_task(about_an_event())
        log.warning("not about an event: \u00e9")
    finally:
        log.removeHandler(handler)
    first, second = map(json.loads, stream.getvalue().splitlines())
    assert first["message"] == "failed on q-7" and first["level"] == "ERROR"
    assert first["logger"] == "tests.tracing.json"
    assert (first["event_id"], first["trace_id"], first["span_id"]) == ("q-7", TRACE_ID, PARENT_ID)
    assert "ValueError: bad input" in first["exception"]
    assert first["time"].endswith("Z") and len(first["time"]) == len("2026-12-02T01:02:03.456Z")
    assert second == {
        "time": second["time"],
        "level": "WARNING",
        "logger": "tests.tracing.json",
        "message": "not about an event: \u00e9",
    }


def test_configure_logging_json_writes_json_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        configure_logging("json")
        logging.getLogger("worker.test").info("started")
        configure_logging("text")
        logging.getLogger("worker.test").info("plain")
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
    json_line, text_line = capsys.readouterr().err.splitlines()
    assert json.loads(json_line)["message"] == "started"
    assert text_line.endswith(" INFO worker.test plain")


async def test_the_bench_sink_takes_what_the_otlp_exporter_sends(
    exporter: InMemorySpanExporter,
) -> None:
    # The overhead bench must pay for real exports: a sink the exporter saw failing would make
    # it retry or drop spans, and skew the measurement.
    tracing = sdk_tracing(exporter)
    with tracing.event(Record(), [], "group") as trace:
        trace.finish("answers", None)
    async with OtlpSink() as sink:
        otlp = OTLPSpanExporter(endpoint=f"{sink.endpoint}/v1/traces")
        # The exporter posts synchronously: off the loop that serves the sink.
        result = await asyncio.to_thread(otlp.export, exporter.get_finished_spans())
    assert result is SpanExportResult.SUCCESS
    assert sink.requests == 1 and sink.bytes > 0


class HungExporter(SpanExporter):
    """An export that never returns until released: a collector that accepts and never answers."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        self.release.wait(60)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize("timeout_s", [0.0, 0.3])
def test_shutdown_returns_within_its_bound_and_counts_the_spans_it_dropped(
    caplog: pytest.LogCaptureFixture, timeout_s: float
) -> None:
    hung = HungExporter()
    ledger = ExportLedger(hung)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(ledger)
    provider.add_span_processor(BatchSpanProcessor(ledger.exporter, schedule_delay_millis=600_000))
    tracing = OtelTracing(provider, ledger)
    for offset in range(3):
        with tracing.event(Record(offset=offset), [], "group") as trace:
            trace.finish("answers", None)
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="worker.observability.tracing_otel"):
            tracing.shutdown(timeout_s)
        returned_after_s = time.monotonic() - started
    finally:
        hung.release.set()
    # The SDK alone would wait for the export, then up to 30 s more.
    assert returned_after_s < timeout_s + 1.0
    [line] = [r.getMessage() for r in caplog.records if "dropped at shutdown" in r.getMessage()]
    assert line.startswith("tracing: 3 spans dropped at shutdown")
    # Past the deadline nothing more reaches the collector.
    assert hung.calls <= 1
