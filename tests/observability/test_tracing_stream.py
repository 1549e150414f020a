"""Traces and JSON logs through the embedded broker: a question's trace goes on in its answer."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id
from prometheus_client.parser import text_string_to_metric_families

from tests.support.otlp import (
    OtlpReceiver,
    RefusingCollector,
    SilentCollector,
    clear_otel_environment,
)
from tests.support.streaming import (
    ANSWERS,
    DEAD_LETTERS,
    Record,
    collect,
    create_topics,
    produce,
    worker_settings,
)
from tests.support.worker_process import worker_process
from worker.embedded.broker import EmbeddedBroker
from worker.model.loading import load_engine
from worker.observability.logs import JsonFormatter
from worker.observability.metrics import WorkerMetrics
from worker.observability.tracing import traceparent_ids
from worker.observability.tracing_otel import OtelTracing
from worker.stream import QAWorker

pytestmark = pytest.mark.broker

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
BAD_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The worker's log lines, at DEBUG, as `--log-format json` writes them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("worker")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def test_answers_and_dead_letters_continue_the_question_trace(
    exported_models: dict[str, Path], json_log: io.StringIO
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    context = "The Eiffel Tower was completed in 1889 and stands in Paris."
    values = [
        json.dumps({"id": "traced", "question": "When?", "context": context}).encode(),
        json.dumps({"id": "untraced", "question": "Where?", "context": context}).encode(),
        b"{not json",
    ]
    headers = [
        [("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode()), ("correlation-id", b"c-1")],
        [("correlation-id", b"c-2")],
        [("traceparent", f"00-{BAD_TRACE_ID}-{PARENT_ID}-01".encode())],
    ]
    async with EmbeddedBroker() as broker:
        await create_topics(broker, partitions=1)
        settings = worker_settings(broker.bootstrap_servers, exported_models["bert"])
        metrics = WorkerMetrics()
        worker = QAWorker(settings, load_engine(settings), metrics, tracing=OtelTracing(provider))
        await worker.start()
        try:
            await produce(broker.bootstrap_servers, values, headers=headers)
            records = await collect(broker.bootstrap_servers, [ANSWERS, DEAD_LETTERS], 3, 120)
        finally:
            assert await worker.stop()
    outgoing = {
        (record.json().get("id") if record.topic == ANSWERS else "dead letter"): record
        for record in records
    }
    assert sorted(outgoing) == ["dead letter", "traced", "untraced"]
    spans = exporter.get_finished_spans()
    processes = {
        span.attributes["messaging.kafka.offset"]: span
        for span in spans
        if span.name == "process questions"
    }
    assert sorted(processes) == [0, 1, 2]
    for offset, name, trace_id in (
        (0, "traced", TRACE_ID),
        (1, "untraced", None),
        (2, "dead letter", BAD_TRACE_ID),
    ):
        process = processes[offset]
        record_headers = list(outgoing[name].headers)
        assert [key for key, _ in record_headers].count("traceparent") == 1
        ids = traceparent_ids(record_headers)
        assert ids is not None
        assert ids[0] == format_trace_id(process.context.trace_id)
        if trace_id is not None:
            assert ids[0] == trace_id
            assert format_span_id(process.parent.span_id) == PARENT_ID
        else:
            assert process.parent is None
        # The record's traceparent names the producer span, a child of the event's span.
        [send] = [span for span in spans if format_span_id(span.context.span_id) == ids[1]]
        assert send.name == f"send {outgoing[name].topic}"
        assert send.parent.span_id == process.context.span_id
    assert ("correlation-id", b"c-1") in outgoing["traced"].headers
    assert processes[0].attributes["messaging.message.id"] == "traced"
    assert processes[2].attributes["qa.dead_letter.reason"] == "invalid_json"

    def children(offset: int) -> list[str]:
        parent = processes[offset].context.span_id
        return sorted(s.name for s in spans if s.parent is not None and s.parent.span_id == parent)

    assert children(0) == children(1) == ["send answers"]
    assert children(2) == ["send dead-letters"]
    steps = ["tokenize", "queue wait", "decode"]
    assert [event.name for event in processes[0].events] == steps
    assert [event.name for event in processes[1].events] == steps
    # Refused before it reached the batcher: no steps.
    assert list(processes[2].events) == []
    # The batches that ran the answered events' windows link to exactly those events' spans.
    batches = [span for span in spans if span.name == "inference batch"]
    assert batches and all(batch.parent is None for batch in batches)
    assert {link.context.span_id for batch in batches for link in batch.links} == {
        processes[0].context.span_id,
        processes[1].context.span_id,
    }
    assert sum(batch.attributes["qa.batch.events"] for batch in batches) >= 2
    assert {batch.attributes["qa.batch.streams"] for batch in batches} == {("questions",)}

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    about = {line.get("event_id"): line for line in lines if "trace_id" in line}
    assert about["traced"]["trace_id"] == TRACE_ID
    assert about["traced"]["span_id"] == format_span_id(processes[0].context.span_id)
    assert about["untraced"]["trace_id"] == format_trace_id(processes[1].context.trace_id)
    # The bad event has no id to log, but its line still names its trace.
    assert about[None]["trace_id"] == BAD_TRACE_ID
    assert about[None]["message"].startswith("dead letter for questions[0]@2")

    scores = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }
    labels = (("question_set", ""), ("topic", "questions"))
    assert scores[("qa_worker_answer_score_count", labels)] == 2
    abstentions = sum(
        bool(record.json()["is_impossible"]) for record in records if record.topic == ANSWERS
    )
    assert scores.get(("qa_worker_abstentions_total", labels), 0.0) == abstentions


async def answer_in_a_traced_process(
    model: Path,
    log: Path,
    question: dict[str, str],
    headers: list[tuple[str, bytes]] | None = None,
    **overrides: object,
) -> tuple[Record, int, float]:
    """`qa-worker run --tracing otlp` on a broker of its own answers `question`, then is stopped
    with SIGTERM: the answer, the exit code and the seconds from the signal to the exit."""
    async with EmbeddedBroker() as broker:
        await create_topics(broker, partitions=1)
        settings = worker_settings(broker.bootstrap_servers, model, tracing="otlp", **overrides)
        with worker_process(settings, log) as process:
            try:
                await produce(
                    broker.bootstrap_servers,
                    [json.dumps(question).encode()],
                    headers=None if headers is None else [headers],
                )
                [answer] = await collect(broker.bootstrap_servers, [ANSWERS], 1, 120)
            finally:
                signalled = time.monotonic()
                process.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(process.wait, 60)
                exited_after_s = time.monotonic() - signalled
    return answer, code, exited_after_s


async def test_qa_worker_run_traces_over_otlp_and_logs_json_lines(
    exported_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The production path: `qa-worker run --tracing otlp --log-format json` as its own process,
    # configured by OTEL_ variables, exporting to a receiver on loopback.
    with OtlpReceiver() as receiver:
        clear_otel_environment(monkeypatch)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "qa-test")
        log = tmp_path / "worker.log"
        question = {"id": "q-run", "question": "When?", "context": "It opened in 1889."}
        traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01".encode()
        answer, code, _ = await answer_in_a_traced_process(
            exported_models["bert"],
            log,
            question,
            headers=[("traceparent", traceparent)],
            log_format="json",
        )
        assert code == 0, log.read_text()[-3000:]
    assert traceparent_ids(list(answer.headers))[0] == TRACE_ID
    # Every line the process wrote is one JSON object (faust's and aiokafka's lines included).
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    # The worker shut its exporter down on SIGTERM: the event's spans arrived before it exited.
    assert {resource["service.name"] for resource, _ in receiver.resources()} == {"qa-test"}
    spans = [span for _, found in receiver.resources() for span in found]
    [process_span] = [span for span in spans if span.name == "process questions"]
    assert process_span.trace_id.hex() == TRACE_ID
    assert process_span.parent_span_id.hex() == PARENT_ID
    assert {span.name for span in spans if span.trace_id.hex() == TRACE_ID} == {
        "process questions",
        "send answers",
    }
    assert [event.name for event in process_span.events] == ["tokenize", "queue wait", "decode"]
    [batch] = [span for span in spans if span.name == "inference batch"]
    assert [link.span_id for link in batch.links] == [process_span.span_id]


@pytest.mark.parametrize("collector", [SilentCollector, RefusingCollector])
async def test_sigterm_exits_within_the_drain_timeout_whatever_the_collector_does(
    exported_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    collector: type[SilentCollector | RefusingCollector],
) -> None:
    drain_timeout_s = 3.0
    with collector() as sink:
        clear_otel_environment(monkeypatch)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint)
        # Left to itself the SDK would wait this long per batch, and up to 30 s at shutdown.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "30")
        monkeypatch.setenv("OTEL_BSP_EXPORT_TIMEOUT", "1000")
        # No export before the stop: the spans are still queued when SIGTERM arrives.
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
        log = tmp_path / "worker.log"
        question = {"id": "q-hung", "question": "When?", "context": "It opened in 1889."}
        answer, code, exited_after_s = await answer_in_a_traced_process(
            exported_models["bert"], log, question, drain_timeout_s=drain_timeout_s
        )
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert answer.json()["id"] == "q-hung"
    assert exited_after_s < drain_timeout_s + 2.0, text[-3000:]
    # The process, send and inference-batch spans, counted in one line.
    [dropped] = re.findall(r"tracing: (\d+) spans dropped at shutdown", text)
    assert int(dropped) >= 3
    assert "Traceback" not in text
