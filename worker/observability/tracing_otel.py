"""`Tracing` on the OpenTelemetry SDK: W3C trace context in Kafka headers, spans out over OTLP.

Attribute names follow OpenTelemetry's messaging semantic conventions for Kafka. Only the worker
imports this module, and only with `--tracing otlp` (it needs the `tracing` extra).

faust-streaming's `faust.contrib.opentelemetry` sensor is not used: it ends its span when the
stream moves to the next event, but this worker hands each event to a task of its own and keeps
up to `max_in_flight` of them running, so the sensor's span would close before the event's work
does and would be current in the agent's loop rather than in the task; nor does it inject into
what is produced. Its reading of Kafka headers (the first `traceparent` wins, bytes decoded
leniently) is kept here.

Shutting down is bounded: the SDK's own shutdown may wait for its exporter's timeout per batch,
up to a fixed 30 s, whatever OTEL_BSP_EXPORT_TIMEOUT says, and its force_flush takes no timeout
at all. `OtelTracing.shutdown(timeout_s)` therefore flushes and shuts down in a thread of its own
and waits for it at most `timeout_s`; past that moment the exporter sends nothing more, and one
log line counts the spans that were not exported. A collector that accepts connections and never
answers costs the worker `timeout_s`, not the exporter's timeouts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from .. import __version__
from ..errors import ConfigError, ErrorCode
from .logs import bind_event, event_fields, event_scope, hold_logs, hold_logs_of
from .tracing_interface import ConsumedRecord, EventTrace, Headers, Tracing

__all__ = ["DEFAULT_SERVICE_NAME", "ExportLedger", "OtelTracing", "otlp_tracing"]

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "kafka-qa-worker"
INSTRUMENTATION_NAME = "kafka-qa-worker"
# Only this protocol's exporter ships in the `tracing` extra.
OTLP_PROTOCOL = "http/protobuf"


class _KafkaHeadersGetter(Getter[Headers]):
    def get(self, carrier: Headers, key: str) -> list[str] | None:
        for name, value in carrier:
            if name == key and value is not None:
                return [value.decode("utf-8", "replace")]
        return None

    def keys(self, carrier: Headers) -> list[str]:
        return [name for name, _ in carrier]


class _KafkaHeadersSetter(Setter[Headers]):
    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier.append((key, value.encode("utf-8")))


_GETTER = _KafkaHeadersGetter()
_SETTER = _KafkaHeadersSetter()
# A sampled span with the widest ids, for sizing the headers a producer span will add.
_SAMPLE_SPAN = trace.NonRecordingSpan(
    trace.SpanContext(
        trace_id=2**128 - 1,
        span_id=2**64 - 1,
        is_remote=False,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
)


@dataclass(frozen=True)
class _EventLink:
    span: trace.Span
    context: trace.SpanContext
    topic: str


_current_event: ContextVar[_EventLink | None] = ContextVar("qa_worker_trace_event", default=None)


class _EventSpan:
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def finish(self, topic: str, dead_letter_reason: ErrorCode | None) -> None:
        event_id = event_fields().get("event_id")
        if event_id is not None:
            self._span.set_attribute("messaging.message.id", event_id)
        self._span.set_attribute("qa.reply.topic", topic)
        if dead_letter_reason is not None:
            self._span.set_attribute("qa.dead_letter.reason", dead_letter_reason.value)
            self._span.set_status(Status(StatusCode.ERROR, dead_letter_reason.value))


class ExportLedger(SpanProcessor):
    """Counts the sampled spans that ended and those its exporter got acknowledged, and stops
    the exporter at a deadline: what shutdown needs to be bounded and to say what it lost.

    Add it to the provider before the batch processor, and give that processor `exporter`.
    """

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter: SpanExporter = _LedgerExporter(self, exporter)
        self._lock = threading.Lock()
        self.ended = 0
        self.exported = 0
        self.failed = 0
        self._deadline: float | None = None

    def on_end(self, span: ReadableSpan) -> None:
        # The batch processor queues only sampled spans; those are the ones it may lose.
        if span.context is not None and span.context.trace_flags.sampled:
            with self._lock:
                self.ended += 1

    def stop_exporting_at(self, deadline: float) -> None:
        """From `deadline` (monotonic) on, batches handed to the exporter are dropped unsent."""
        self._deadline = deadline

    def past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def settled(self, spans: int, exported: bool) -> None:
        with self._lock:
            if exported:
                self.exported += spans
            else:
                self.failed += spans

    def unexported(self) -> int:
        """Sampled spans ended and neither exported nor failed: queued, or in an export."""
        with self._lock:
            return self.ended - self.exported - self.failed


class _LedgerExporter(SpanExporter):
    def __init__(self, ledger: ExportLedger, inner: SpanExporter) -> None:
        self._ledger = ledger
        self._inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._ledger.past_deadline():
            self._ledger.settled(len(spans), exported=False)
            return SpanExportResult.FAILURE
        result = SpanExportResult.FAILURE
        try:
            result = self._inner.export(spans)
        finally:
            self._ledger.settled(len(spans), exported=result is SpanExportResult.SUCCESS)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class OtelTracing:
    """Spans of `provider`'s tracer; the caller configured the provider (sampler, exporter).

    With `ledger` (added to the provider), shutdown logs how many spans it did not export.
    """

    def __init__(self, provider: TracerProvider, ledger: ExportLedger | None = None) -> None:
        self._provider = provider
        self._ledger = ledger
        self._tracer = provider.get_tracer(INSTRUMENTATION_NAME, __version__)
        # The producer span's own fields (traceparent, or a configured propagator's ids) have a
        # fixed size, so a sample span's stand in for them in `sized_headers`; built once, in a
        # context of its own, as no event's context changes them.
        self._sample_headers: Headers = []
        sample_context = trace.set_span_in_context(_SAMPLE_SPAN, Context())
        propagate.inject(self._sample_headers, context=sample_context, setter=_SETTER)
        self._sample_names = frozenset(name for name, _ in self._sample_headers)
        hold_logs_of("opentelemetry")

    @contextmanager
    def event(self, record: ConsumedRecord, headers: Headers, group: str) -> Iterator[EventTrace]:
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "messaging.consumer.group.name": group,
        }
        if record.key is not None:
            attributes["messaging.kafka.message.key"] = record.key.decode("utf-8", "replace")
        with event_scope():
            # What the propagators warn about a header is logged once the event's id is bound.
            with hold_logs():
                parent = propagate.extract(headers, getter=_GETTER)
            span = self._tracer.start_span(
                f"process {record.topic}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes=attributes,
            )
            context = span.get_span_context()
            token = _current_event.set(_EventLink(span, context, record.topic))
            try:
                with trace.use_span(span, end_on_exit=True):
                    # A span the sampler left out still has the trace's ids, which logs want.
                    bind_event(
                        trace_id=trace.format_trace_id(context.trace_id),
                        span_id=trace.format_span_id(context.span_id),
                    )
                    yield _EventSpan(span)
            finally:
                _current_event.reset(token)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start_ns = time.time_ns()
        try:
            yield
        finally:
            self.interval(name, start_ns, time.time_ns())

    def interval(self, name: str, start_ns: int, end_ns: int) -> None:
        # A span event, not a child span: cheaper to record and to export, and there are three
        # per event (about 410 against 510 us of CPU per event, hooks and export, measured).
        event = _current_event.get()
        if event is not None:
            duration_ms = max(0, end_ns - start_ns) / 1e6
            event.span.add_event(name, {"qa.duration_ms": duration_ms}, timestamp=start_ns)

    @contextmanager
    def produce(self, topic: str) -> Iterator[None]:
        attributes = {
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": topic,
        }
        with self._tracer.start_as_current_span(
            f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            yield

    def link(self) -> object | None:
        return _current_event.get()

    def batch(
        self, links: Sequence[object], windows: int, padded_tokens: int, start_ns: int, end_ns: int
    ) -> None:
        events = [link for link in links if isinstance(link, _EventLink)]
        span = self._tracer.start_span(
            "inference batch",
            # A root of its own, whatever context the caller runs in: it serves many traces.
            context=Context(),
            links=[Link(event.context) for event in events],
            start_time=start_ns,
            attributes={
                "qa.batch.windows": windows,
                "qa.batch.events": len(events),
                "qa.batch.padded_tokens": padded_tokens,
                "qa.batch.streams": sorted({event.topic for event in events}),
            },
        )
        span.end(end_time=max(start_ns, end_ns))

    def outgoing_headers(self, headers: Headers) -> Headers:
        # The incoming context is replaced, not repeated: two traceparents would be ambiguous.
        fields = propagate.get_global_textmap().fields
        outgoing = [(name, value) for name, value in headers if name not in fields]
        propagate.inject(outgoing, setter=_SETTER)
        return outgoing

    def sized_headers(self, headers: Headers) -> Headers:
        # Tracestate and baggage go out as they came in, so they are counted as they are.
        replaced = self._sample_names
        return [
            *((name, value) for name, value in headers if name not in replaced),
            *self._sample_headers,
        ]

    def shutdown(self, timeout_s: float = 30.0) -> None:
        ledger = self._ledger
        if ledger is not None:
            ledger.stop_exporting_at(time.monotonic() + timeout_s)
            lost_before = ledger.failed
        # A daemon thread: one stuck in an export to a collector that never answers must not
        # keep the process from exiting.
        closing = threading.Thread(
            target=self._flush_and_shut_down,
            args=(timeout_s,),
            name="qa-worker-tracing-shutdown",
            daemon=True,
        )
        closing.start()
        closing.join(timeout_s)
        if ledger is None:
            return
        dropped = ledger.unexported() + ledger.failed - lost_before
        if dropped:
            log.warning(
                "tracing: %d spans dropped at shutdown: not exported within %.1f s",
                dropped,
                timeout_s,
            )

    def _flush_and_shut_down(self, timeout_s: float) -> None:
        self._provider.force_flush(timeout_millis=int(timeout_s * 1000))
        self._provider.shutdown()


def otlp_tracing() -> Tracing:
    """Tracing exported over OTLP/HTTP, configured by the OTEL_ environment variables.

    The SDK reads them itself: OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT and _HEADERS,
    OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER and _ARG,
    OTEL_BSP_* for the batching of exports, OTEL_PROPAGATORS.
    """
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = os.environ.get(name)
        if protocol is not None and protocol != OTLP_PROTOCOL:
            raise ConfigError(
                f"{name}={protocol!r}: the worker exports traces over {OTLP_PROTOCOL} only"
            )
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    # Not shut down at exit by the SDK: its exit hook would wait up to 30 s on a collector that
    # does not answer; the worker shuts tracing down itself, within its drain timeout.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    ledger = ExportLedger(OTLPSpanExporter())
    provider.add_span_processor(ledger)
    provider.add_span_processor(BatchSpanProcessor(ledger.exporter))
    return OtelTracing(provider, ledger)
