"""Prometheus metrics of the streaming worker.

Each `WorkerMetrics` owns its own `CollectorRegistry`, so tests, and two workers in one process,
never clash over the global registry. `worker.observability.http.HealthServer` serves `render()`
on `/metrics`.

The exported names below are a contract: the Helm chart's alerts and the Grafana dashboard are
built on them. Rename or relabel one only together with those. `METRIC_NAMES` lists the same
names as they appear on `# TYPE` lines and in PromQL (histograms also export `_bucket`, `_sum`
and `_count` series; counters and histograms also export prometheus_client's `_created` series
unless the deployment sets `PROMETHEUS_DISABLE_CREATED_SERIES=true`).

| name                                 | type      | labels           | what                     |
| ------------------------------------ | --------- | ---------------- | ------------------------ |
| qa_worker_events_received_total      | counter   | topic            | question events consumed |
| qa_worker_events_answered_total      | counter   |                  | answers acked by broker  |
| qa_worker_events_dead_lettered_total | counter   | reason           | events dead-lettered     |
| qa_worker_end_to_end_latency_seconds | histogram |                  | event time to answer ack |
| qa_worker_queue_wait_seconds         | histogram |                  | wait for an inference    |
| qa_worker_inference_seconds          | histogram |                  | inference time per batch |
| qa_worker_batch_size_windows         | histogram |                  | windows per batch        |
| qa_worker_batch_plan_seconds         | histogram |                  | loop time planning batch |
| qa_worker_held_windows               | gauge     |                  | windows being answered   |
| qa_worker_pending_windows            | gauge     |                  | windows awaiting a batch |
| qa_worker_batch_tokens               | histogram |                  | padded tokens per batch  |
| qa_worker_tokens_real_total          | counter   |                  | tokens of the windows    |
| qa_worker_tokens_padded_total        | counter   |                  | tokens run, with padding |
| qa_worker_padding_ratio              | gauge     |                  | padded / real, recent    |
| qa_worker_in_flight_events           | gauge     |                  | read, not acknowledged   |
| qa_worker_oldest_in_flight_seconds   | gauge     |                  | age of the oldest held   |
| qa_worker_delivery_retries_total     | counter   | topic            | sends retried            |
| qa_worker_reply_topics_known         | gauge     |                  | reply topics remembered  |
| qa_worker_consumer_lag_messages      | gauge     | topic, partition | lag per partition        |
| qa_worker_seconds_since_last_commit  | gauge     |                  | since the last commit    |
| qa_worker_partition_stalled          | gauge     | topic, partition | 1 stalled, 0 moving      |
| qa_worker_model_info                 | gauge = 1 | see below        | the loaded model         |
| qa_worker_ready                      | gauge     |                  | 1 ready, 0 not           |
| qa_worker_answer_score               | histogram | see below        | top answer's score       |
| qa_worker_abstentions_total          | counter   | see below        | null answers given       |
| qa_worker_event_loop_lag_seconds     | histogram |                  | a loop wake-up's delay   |
| qa_worker_gc_pause_seconds           | histogram | generation       | garbage-collection pause |

The HTTP server's:

| name                                      | type    | labels | what                 |
| ----------------------------------------- | ------- | ------ | -------------------- |
| qa_worker_http_connections_accepted_total | counter |        | connections accepted |
| qa_worker_http_connections_closed_total   | counter | reason | closed by the server |

Details:

- Dead-letter `reason` is the dead letter's error code, one of `worker.errors.ErrorCode`.
- End-to-end latency runs from the event's Kafka timestamp (the producer's clock; a negative
  difference from clock skew counts as 0) to the broker acknowledging the answer.
- Queue wait runs from consuming the event to the start of the batch that holds its windows.
- Padded tokens are windows x longest window of a batch, as ONNX Runtime runs them; real tokens
  are the windows' own lengths.
- In-flight events are consumed and not acknowledged yet: being answered, or answered and
  waiting for an earlier event of their partition; the oldest one's age (0 when none) is what
  holds its partition's commits back, as a delivery retrying does.
- Delivery retries count sends that failed with an error worth retrying, by the topic sent to;
  every reply topic counts under the one label value `(reply topic)`, since a series per topic
  that events name would grow without bound.
- Reply topics known are those found to exist and remembered (`worker.stream.delivery`, at most
  `REPLY_TOPICS_KNOWN`).
- Consumer lag is messages behind the high watermark; series of partitions no longer assigned
  are removed, so that only the partition's current owner reports it.
- A partition is stalled (1) when it has had lag and its committed offset has not moved for
  `--stall-timeout-s` (`worker.stream.watchdog`); one series per assigned partition, removed
  like the lag's when the partition is revoked.
- Seconds since last commit counts from the last commit that moved an offset (faust also
  commits when nothing moved), is computed at scrape time, and before the first such commit
  counts from the worker's start.
- Answer quality: every answer computed (a question's, and each field of a document's question
  set) observes its top answer's score, the null answer's included, so `_count` is the answers
  computed and `abstentions / _count` the abstention rate. Labels: `topic`, the input topic, and
  `question_set`, the set's name (empty for questions), both bounded by the configuration. An
  abstention is an answer whose top item is the null answer (`is_impossible`).
- Event-loop lag is how much later than asked a task sleeping on the worker's event loop woke
  (`worker.observability.runtime`, every 0.1 s); GC pauses time each collection, by the
  generation collected (0, 1 or 2; each has a series from the start).
- HTTP connections accepted count every connection to the `/metrics`, `/healthz`, `/readyz`
  port; closed ones count those the server closed itself, by `reason`: `evicted` (for a new one,
  at the connection bound), `timed_out` (a request not read, or a response not taken, in time),
  `too_large` (answered 413 or 431) and `malformed` (answered 400, 501 or 505). Each reason has
  a series from the start; both are read from the server at each scrape
  (`worker.observability.bounded_http.HttpServerStats`).
- Model info labels: `model`, `model_type`, `precision`, `checksum` (of the model folder) and
  `worker_version`; there is no series until a model is loaded, and one after.

`qa_worker_padding_ratio` divides padded by real tokens, each summed over batches with weights
that halve every `PADDING_HALF_LIFE_SECONDS` of the injected clock, so it follows the last minute
or so and holds its value while no batches run; it is NaN before the first batch. For an exact
ratio over any range use
`rate(qa_worker_tokens_padded_total[5m]) / rate(qa_worker_tokens_real_total[5m])`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric

from .. import __version__
from ..errors import ErrorCode
from ..qa.types import QAResult
from .bounded_http import HttpServerStats

__all__ = ["CONTENT_TYPE", "METRIC_NAMES", "PADDING_HALF_LIFE_SECONDS", "WorkerMetrics"]

PREFIX = "qa_worker_"

METRIC_NAMES: tuple[str, ...] = tuple(
    PREFIX + name
    for name in (
        "events_received_total",
        "events_answered_total",
        "events_dead_lettered_total",
        "end_to_end_latency_seconds",
        "queue_wait_seconds",
        "inference_seconds",
        "batch_size_windows",
        "batch_plan_seconds",
        "held_windows",
        "pending_windows",
        "batch_tokens",
        "tokens_real_total",
        "tokens_padded_total",
        "padding_ratio",
        "in_flight_events",
        "oldest_in_flight_seconds",
        "delivery_retries_total",
        "reply_topics_known",
        "consumer_lag_messages",
        "seconds_since_last_commit",
        "partition_stalled",
        "model_info",
        "ready",
        "answer_score",
        "abstentions_total",
        "event_loop_lag_seconds",
        "gc_pause_seconds",
        "http_connections_accepted_total",
        "http_connections_closed_total",
    )
)

# The classic text format, which every Prometheus version reads; all names here are valid in it,
# so the UTF-8 name escaping of newer formats never applies. Spelled out because
# prometheus_client's own constant for it is younger than the oldest release we accept.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

PADDING_HALF_LIFE_SECONDS = 60.0

# 5 ms (a short batch on a warm int8 model) to 60 s (a backlog after a restart); beyond that the
# +Inf bucket and the sum still say how bad it is.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
BATCH_TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
# Scores are probabilities; finer near 1, where a confident model's answers sit.
# From the 1 ms asyncio's timers round to, past the 5 ms a healthy loop stays under at p99, to
# the seconds of a loop held by a blocking call.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Young collections take tens of microseconds; a full one over a large heap, tens of ms or more.
GC_PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
GC_GENERATIONS = 3
SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


class WorkerMetrics:
    """The worker's metrics in a registry of their own; see the module docstring for the names."""

    content_type = CONTENT_TYPE

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """`clock` is monotonic seconds; tests pass one they control."""
        self.registry = CollectorRegistry()
        self._clock = clock
        self._last_commit = clock()
        # Guards the state kept beside the registry (padding sums, assigned partitions): the
        # batcher may report from its inference threads, not only from the event loop.
        self._lock = threading.Lock()
        self._lag_keys: set[tuple[str, str]] = set()
        self._stalled_keys: set[tuple[str, str]] = set()
        self._decayed_real = 0.0
        self._decayed_padded = 0.0
        self._last_batch: float | None = None

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=self.registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=self.registry)

        def histogram(
            name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()
        ) -> Histogram:
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=self.registry)

        self._received = counter("events_received_total", "Question events consumed.", ("topic",))
        self._answered = counter(
            "events_answered_total", "Answers published and acknowledged by the broker."
        )
        self._dead_lettered = counter(
            "events_dead_lettered_total",
            "Events sent to the dead-letter topic, by error code.",
            ("reason",),
        )
        self._end_to_end = histogram(
            "end_to_end_latency_seconds",
            "From the event's timestamp to its answer being acknowledged by the broker.",
            LATENCY_BUCKETS,
        )
        self._queue_wait = histogram(
            "queue_wait_seconds",
            "Time an event waited in the worker before its inference batch ran.",
            LATENCY_BUCKETS,
        )
        self._inference = histogram(
            "inference_seconds", "Inference time per batch.", LATENCY_BUCKETS
        )
        self._batch_windows = histogram(
            "batch_size_windows", "Windows per inference batch.", BATCH_SIZE_BUCKETS
        )
        self._plan = histogram(
            "batch_plan_seconds",
            "Event-loop time spent choosing each inference batch.",
            GC_PAUSE_BUCKETS,
        )
        self._held_windows = gauge(
            "held_windows",
            "Windows of the questions being answered (waiting, running or being decoded), "
            "against the work budget.",
        )
        self._pending_windows = gauge("pending_windows", "Windows waiting for a batch.")
        self._batch_tokens = histogram(
            "batch_tokens",
            "Padded tokens (windows x longest window) per inference batch.",
            BATCH_TOKEN_BUCKETS,
        )
        self._tokens_real = counter("tokens_real_total", "Tokens of the windows themselves.")
        self._tokens_padded = counter(
            "tokens_padded_total", "Tokens the inference batches ran, padding included."
        )
        self._padding_ratio = gauge(
            "padding_ratio",
            f"Padded / real tokens, weights halving every {PADDING_HALF_LIFE_SECONDS:g} s; "
            "NaN before the first batch.",
        )
        self._padding_ratio.set(math.nan)
        self._in_flight = gauge(
            "in_flight_events",
            "Events consumed and not yet acknowledged: being answered, or answered and waiting "
            "for an earlier event of their partition.",
        )
        self._oldest_in_flight = gauge(
            "oldest_in_flight_seconds",
            "Age of the oldest event consumed and not yet answered or dead-lettered; 0 if none.",
        )
        self._oldest_in_flight.set(0)
        self._retries = counter(
            "delivery_retries_total",
            "Sends that failed with an error worth retrying, retried with backoff; by topic.",
            ("topic",),
        )
        self._reply_topics_known = gauge(
            "reply_topics_known",
            "Reply topics remembered as existing (at most worker.stream.delivery's "
            "REPLY_TOPICS_KNOWN); one not remembered is asked about before it is sent to.",
        )
        self._lag = gauge(
            "consumer_lag_messages",
            "Messages behind the high watermark, per assigned partition.",
            ("topic", "partition"),
        )
        self._stalled = gauge(
            "partition_stalled",
            "1 when the partition has lag and its committed offset has not moved for the stall "
            "timeout, else 0; per assigned partition.",
            ("topic", "partition"),
        )
        since_commit = gauge(
            "seconds_since_last_commit",
            "Seconds since a commit last moved an offset; before that, since the worker started.",
        )
        since_commit.set_function(lambda: self._clock() - self._last_commit)
        self._model_info = gauge(
            "model_info",
            "The loaded model; always 1.",
            ("model", "model_type", "precision", "checksum", "worker_version"),
        )
        self._ready = gauge("ready", "1 when the worker is ready to answer questions, else 0.")
        self._answer_score = histogram(
            "answer_score",
            "Score of the top answer of every answer computed, the null answer's included.",
            SCORE_BUCKETS,
            ("topic", "question_set"),
        )
        self._abstentions = counter(
            "abstentions_total",
            "Answers whose top item is the null answer, by input topic and question set.",
            ("topic", "question_set"),
        )

        self._loop_lag = histogram(
            "event_loop_lag_seconds",
            "How much later than asked a periodic task on the worker's event loop woke.",
            LOOP_LAG_BUCKETS,
        )
        self._gc_pause = histogram(
            "gc_pause_seconds",
            "Garbage-collection pauses, by the generation collected.",
            GC_PAUSE_BUCKETS,
            ("generation",),
        )
        for generation in range(GC_GENERATIONS):
            self._gc_pause.labels(str(generation))
        self._http = _HttpCollector()
        self.registry.register(self._http)

    def event_received(self, topic: str) -> None:
        self._received.labels(topic).inc()

    def event_answered(self, end_to_end_s: float, queue_s: float) -> None:
        self._answered.inc()
        # The event timestamp comes from the producer's wall clock; skew can make the difference
        # negative, which would drag the histogram's sum below what was really waited.
        self._end_to_end.observe(max(0.0, end_to_end_s))
        self._queue_wait.observe(queue_s)

    def event_dead_lettered(self, reason: ErrorCode) -> None:
        """Counts a dead letter; a `reason` that is not an ErrorCode raises ValueError."""
        # Converted, not trusted: a free-form label value would make series without bound.
        self._dead_lettered.labels(ErrorCode(reason).value).inc()

    def on_batch(
        self, windows: int, real_tokens: int, padded_tokens: int, seconds: float, plan_s: float
    ) -> None:
        """The batcher's observer: one inference batch ran, `plan_s` after choosing it took."""
        self._inference.observe(seconds)
        self._plan.observe(plan_s)
        self._batch_windows.observe(windows)
        self._batch_tokens.observe(padded_tokens)
        self._tokens_real.inc(real_tokens)
        self._tokens_padded.inc(padded_tokens)

        with self._lock:
            # Read under the lock so that batches are decayed in the order their times say.
            now = self._clock()
            if self._last_batch is not None:
                decay = 0.5 ** ((now - self._last_batch) / PADDING_HALF_LIFE_SECONDS)
                self._decayed_real *= decay
                self._decayed_padded *= decay
            self._last_batch = now
            self._decayed_real += real_tokens
            self._decayed_padded += padded_tokens
            if self._decayed_real > 0:
                self._padding_ratio.set(self._decayed_padded / self._decayed_real)

    def answer_scored(self, topic: str, question_set: str, result: QAResult) -> None:
        """The handlers' quality observer: one answer computed (question_set "" for questions)."""
        self._answer_score.labels(topic, question_set).observe(result.score)
        if result.is_impossible:
            self._abstentions.labels(topic, question_set).inc()

    def watch_work(
        self, held_windows: Callable[[], int], pending_windows: Callable[[], int]
    ) -> None:
        """Reads the batcher's windows held and waiting at each scrape."""
        self._held_windows.set_function(held_windows)
        self._pending_windows.set_function(pending_windows)

    def set_in_flight(self, n: int) -> None:
        self._in_flight.set(n)

    def watch_oldest_in_flight(self, age: Callable[[], float]) -> None:
        """Reads the oldest in-flight event's age from `age` at every scrape."""
        self._oldest_in_flight.set_function(age)

    def delivery_retried(self, topic: str) -> None:
        self._retries.labels(topic).inc()

    def watch_reply_topics_known(self, count: Callable[[], int]) -> None:
        """Reads how many reply topics are remembered from `count` at every scrape."""
        self._reply_topics_known.set_function(count)

    def set_lags(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Sets the lag of every assigned (topic, partition); drops series of revoked ones."""
        self._set_per_partition(self._lag, self._lag_keys, lags)

    def set_stalled(self, stalled: Mapping[tuple[str, int], bool]) -> None:
        """Whether each assigned (topic, partition) is stalled; drops series of revoked ones."""
        flags = {key: 1 if flag else 0 for key, flag in stalled.items()}
        self._set_per_partition(self._stalled, self._stalled_keys, flags)

    def _set_per_partition(
        self, metric: Gauge, exported: set[tuple[str, str]], values: Mapping[tuple[str, int], int]
    ) -> None:
        """Sets `metric` for every assigned partition and removes the series of revoked ones: a
        revoked partition's last value would otherwise stay exported for good while another
        worker reports that partition, and an alert would fire on the stale copy."""
        keys = {(topic, str(partition)): value for (topic, partition), value in values.items()}
        with self._lock:
            for gone in exported - keys.keys():
                metric.remove(*gone)
            for key, value in keys.items():
                metric.labels(*key).set(value)
            exported.clear()
            exported.update(keys)

    def committed(self) -> None:
        self._last_commit = self._clock()

    def set_model_info(
        self,
        *,
        model: str,
        model_type: str,
        precision: str,
        checksum: str,
        worker_version: str = __version__,
    ) -> None:
        # One series only: a reload must not leave the previous model's labels behind.
        self._model_info.clear()
        self._model_info.labels(model, model_type, precision, checksum, worker_version).set(1)

    def loop_lagged(self, seconds: float) -> None:
        """The runtime monitor's observer: one wake-up of the lag sampler."""
        self._loop_lag.observe(seconds)

    def gc_paused(self, generation: int, seconds: float) -> None:
        """The runtime monitor's observer: one garbage collection of `generation`."""
        # Bounded by the interpreter's generations, whatever a future one reports.
        self._gc_pause.labels(str(min(max(generation, 0), GC_GENERATIONS - 1))).observe(seconds)

    def watch_http(self, stats: Callable[[], HttpServerStats]) -> None:
        """Reads the HTTP server's connection counts from `stats` at every scrape."""
        self._http.stats = stats

    def set_ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    def render(self) -> bytes:
        """The registry in the Prometheus text format (`content_type`)."""
        return generate_latest(self.registry)


class _HttpCollector:
    """The HTTP server's counts as counters, read at scrape time: the server keeps them itself,
    in `HttpServerStats`, and need not know of Prometheus."""

    def __init__(self) -> None:
        self.stats: Callable[[], HttpServerStats] = HttpServerStats

    def describe(self) -> list[Metric]:
        return self._families(HttpServerStats())

    def collect(self) -> list[Metric]:
        return self._families(self.stats())

    @staticmethod
    def _families(stats: HttpServerStats) -> list[Metric]:
        accepted = CounterMetricFamily(
            PREFIX + "http_connections_accepted",
            "Connections accepted by the /metrics, /healthz, /readyz server.",
        )
        accepted.add_metric([], stats.accepted)
        closed = CounterMetricFamily(
            PREFIX + "http_connections_closed",
            "Connections the HTTP server closed itself: evicted at the connection bound, timed "
            "out, or refused as too large or malformed.",
            labels=["reason"],
        )
        for reason, count in stats.closed().items():
            closed.add_metric([reason], count)
        return [accepted, closed]
