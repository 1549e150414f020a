"""`qa-worker bench --heavy-mix`: contexts at the limit, with one-window questions beside them.

Each case runs a worker process of its own (its own topics and group, a fresh start, so that its
memory grows from the same state every time), warmed up by `WARMUP_EVENTS` questions:

- `long_contexts`, once per count of `HeavyMix.long_counts`: that many contexts of the worker's
  `--max-context-chars` sent at once to partition 0 of the questions topic. Each is SQuAD
  contexts of the bench's file one after another, from a different first one each, cut at a space
  within the limit, and asks the question of its first passage. While any of them is unanswered,
  one-window questions of the workload go open-loop (`HeavyMix.light_events_per_s`, Poisson) to
  the other partitions.
- `tagging`: `HeavyMix.documents` documents of the same length on a documents topic, tagged with
  a question set of `HeavyMix.fields` fields (questions of the file), written to a temporary
  folder; the time from a document's send to its tags event.

Per case, the worker's RSS growth: the kernel's high-water mark, reset as the case starts
(`/proc/PID/clear_refs`), minus the RSS then; windows and real tokens per second, from its
/metrics counters over the case; the event-loop lag p99 and the time choosing each batch took the
loop, from the difference of its histograms (read as the bound of the bucket the quantile falls
in, so at most); the most windows held and pending, from its gauges sampled every
`GAUGE_INTERVAL_S`; and the latency of /healthz and /readyz polled every `PROBE_INTERVAL_S` from
the bench process (whose own event loop adds to it). The light questions' latency is given in
ms and in "one window" (the sweep's denominator). The report's derived step sets the windows/s
beside the ceiling's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from ..config import Settings
from ..embedded.broker import EmbeddedBroker
from ..errors import BenchError
from ..qa.windows import EncodedQuestion
from ..squad import QuestionRecord
from ..stream.transport import aiokafka_options, create_topics
from .load import PHASE_TIMEOUT_S, Event, LoadGenerator, percentiles, phase_events, start_load
from .report import Report, note
from .runtime_stats import bucket_quantile, runtime_statistics
from .topic_reader import TopicReader
from .topics import (
    PARTITIONS,
    WARMUP_EVENTS,
    bench_worker_settings,
    create_bench_topics,
    delete_topics,
)
from .worker_process import WorkerProcess
from .workload import Workload

__all__ = ["HeavyMix", "long_contexts", "measure_heavy_mix", "one_window_records"]

# Partition 0 takes the long contexts; the light questions go round the others.
LONG_PARTITION = 0
# The Helm chart's probes give up after this long (timeoutSeconds).
PROBE_TIMEOUT_S = 3.0
PROBE_INTERVAL_S = 0.5
# Less often than the probes: each scrape renders every metric on the worker's event loop.
GAUGE_INTERVAL_S = 2.0
# Beyond PHASE_TIMEOUT_S, how long each question over a long context may take: a generous bound
# (about 30 times a 2-core machine's time for 100,000 characters), so a case of 200 is not cut
# short, while a worker that stopped answering is still reported.
LONG_QUESTION_TIMEOUT_S = 60.0
PLAN = "qa_worker_batch_plan_seconds"


@dataclass(frozen=True)
class HeavyMix:
    """What the phase sends: the bench's sizes by default, smaller in tests."""

    long_counts: tuple[int, ...] = (40, 200)
    # None: the worker's --max-context-chars, the longest context it takes.
    context_chars: int | None = None
    light_events_per_s: float = 2.0
    # Sent even when the long contexts are answered sooner, so that there are percentiles.
    min_light_events: int = 20
    documents: int = 2
    fields: int = 12


def one_window_records(
    records: Sequence[QuestionRecord], workload: Workload
) -> list[QuestionRecord]:
    """The records whose question and context the engine made into a single window."""
    light = [
        record
        for record, encoded in zip(records, workload.encoded, strict=True)
        if isinstance(encoded, EncodedQuestion) and len(encoded.windows) == 1
    ]
    if not light:
        raise BenchError("no question of the workload fits in one window, for the heavy mix")
    return light


def long_contexts(
    corpus: Sequence[QuestionRecord], count: int, chars: int
) -> list[tuple[str, str]]:
    """`count` (question, context) pairs, each context the corpus's distinct contexts one after
    another from the `i`th, up to `chars` characters cut at a space, and the question one about
    its first passage. The corpus is gone round again only if it is shorter than `chars`."""
    first_question = {record.context: record.question for record in reversed(corpus)}
    contexts = list(dict.fromkeys(record.context for record in corpus))
    if not contexts:
        raise BenchError("the bench's file has no context to build long ones from")
    pairs = []
    for start in range(count):
        shift = start % len(contexts)
        following = itertools.cycle(contexts[shift:] + contexts[:shift])
        parts = [next(following)]
        while sum(map(len, parts)) + len(parts) - 1 < chars:
            parts.append(next(following))
        text = " ".join(parts)
        if len(text) > chars:
            # At the last space within the limit, so that no word is split.
            space = text.rfind(" ", 0, chars + 1)
            text = text[: space if space > 0 else chars]
        pairs.append((first_question[parts[0]], text))
    return pairs


async def measure_heavy_mix(
    settings: Settings,
    broker: str | None,
    corpus: Sequence[QuestionRecord],
    light: Sequence[QuestionRecord],
    window_ms: float,
    sizes: HeavyMix,
) -> Report:
    """The phase's cases on a broker of their own (an embedded one unless `broker` is given):
    long contexts from `corpus`, one-window questions from `light`, latencies also in windows
    of `window_ms`."""
    async with contextlib.AsyncExitStack() as stack:
        if broker is None:
            embedded = await stack.enter_async_context(EmbeddedBroker())
            settings = embedded.worker_settings(settings)
        else:
            settings = dataclasses.replace(settings, broker=broker)
        producer = AIOKafkaProducer(acks="all", **aiokafka_options(settings))
        await producer.start()
        stack.push_async_callback(producer.stop)
        chars = sizes.context_chars or settings.max_context_chars
        mix = _Mix(settings, broker is not None, producer, corpus, light, window_ms, sizes, chars)
        cases = [await mix.long_context_case(count) for count in sizes.long_counts]
        tagging = await mix.tagging_case()
    return {
        "context_chars": chars,
        "light_events_per_s": sizes.light_events_per_s,
        "window_ms": window_ms,
        "work_budget_windows": settings.max_pending_windows,
        "long_contexts": cases,
        "tagging": tagging,
    }


@dataclass
class _Mix:
    """The phase's cases, on one broker, through one producer."""

    settings: Settings
    external_broker: bool
    producer: AIOKafkaProducer
    corpus: Sequence[QuestionRecord]
    light: Sequence[QuestionRecord]
    window_ms: float
    sizes: HeavyMix
    chars: int

    async def long_context_case(self, count: int) -> Report:
        phase = f"heavy-{count}"
        settings = bench_worker_settings(self.settings)
        await create_bench_topics(settings)
        pairs = long_contexts(self.corpus, count, self.chars)
        events = [
            {"id": f"{phase}-long-{index}", "question": question, "context": context}
            for index, (question, context) in enumerate(pairs)
        ]
        async with contextlib.AsyncExitStack() as stack:
            if self.external_broker:
                stack.push_async_callback(delete_topics, settings)
            load = await self._warm_worker(stack, settings)
            note(
                f"heavy mix: {count} contexts of {self.chars:,} characters on partition "
                f"{LONG_PARTITION}, one-window questions on the others meanwhile"
            )
            async with CaseWatch(load.worker) as watch:
                long_sent, long_partitions = await self._burst(settings.questions_topic, events)
                long_ids = list(long_sent)
                arrivals = load.collector.arrivals
                sending = asyncio.create_task(
                    self._send_light(load, phase, lambda: not all(i in arrivals for i in long_ids))
                )
                try:
                    timeout = PHASE_TIMEOUT_S + count * LONG_QUESTION_TIMEOUT_S
                    await load.collector.wait_for(long_ids, load.worker, timeout)
                except BaseException:
                    sending.cancel()
                    raise
                light_sent, light_partitions = await sending
                await load.collector.wait_for(light_sent, load.worker, PHASE_TIMEOUT_S)
            measured = watch.report
        first_sent = min(long_sent.values())
        last_long = max(arrivals[event_id] for event_id in long_ids)
        long_dead = sum(event_id in load.collector.dead_lettered for event_id in long_ids)
        light_answered = [i for i in light_sent if i not in load.collector.dead_lettered]
        # Each light question is one window, so the rest of the windows run are the long ones'.
        long_windows = measured["windows"] - len(light_answered)
        long_answered = count - long_dead
        return {
            "long_contexts": count,
            "long": {
                "events": count,
                "partitions": sorted(long_partitions),
                "dead_lettered": long_dead,
                "windows_per_context": long_windows / long_answered if long_answered else None,
                # Far below the last when the partition's oldest event goes ahead of the
                # others, so that its committed offset moves while the rest wait.
                "first_answered_s": min(arrivals[event_id] for event_id in long_ids) - first_sent,
                "all_answered_s": last_long - first_sent,
            },
            "light": {
                **self._light_report(light_sent, load),
                "partitions": sorted(light_partitions),
                "sent_while_long_pending": sum(sent < last_long for sent in light_sent.values()),
            },
            **measured,
        }

    async def tagging_case(self) -> Report:
        settings = bench_worker_settings(self.settings)
        run = settings.questions_topic.removesuffix("-questions")
        documents_topic, tags_topic = f"{run}-documents", f"{run}-tags"
        await create_bench_topics(settings)
        try:
            await create_topics(
                aiokafka_options(settings), [documents_topic, tags_topic], PARTITIONS
            )
        except KafkaError as error:
            raise BenchError(f"could not create topics: {error}") from None
        pairs = long_contexts(self.corpus, self.sizes.documents, self.chars)
        questions = list(dict.fromkeys(record.question for record in self.corpus))
        fields = questions[: self.sizes.fields]
        if len(fields) < self.sizes.fields:
            raise BenchError(f"the bench's file has fewer than {self.sizes.fields} questions")
        documents = [
            {"id": f"heavy-document-{index}", "text": text} for index, (_, text) in enumerate(pairs)
        ]
        async with contextlib.AsyncExitStack() as stack:
            if self.external_broker:
                stack.push_async_callback(delete_topics, settings)
                stack.push_async_callback(
                    _delete_extra_topics, settings, [documents_topic, tags_topic]
                )
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qa-bench-")))
            question_sets = folder / "question-sets.json"
            question_sets.write_text(
                json.dumps(
                    {"fields": {f"field_{n:02d}": {"question": q} for n, q in enumerate(fields)}}
                ),
                encoding="utf-8",
            )
            settings = dataclasses.replace(
                settings,
                question_sets=question_sets,
                documents_topics=f"{documents_topic}=default",
                tags_topic=tags_topic,
            )
            load = await self._warm_worker(stack, settings)
            tags = await stack.enter_async_context(TagsCollector(settings))
            note(
                f"heavy mix: {len(documents)} documents of {self.chars:,} characters tagged "
                f"with {len(fields)} fields"
            )
            async with CaseWatch(load.worker) as watch:
                sent, _ = await self._burst(documents_topic, documents, spread=True)
                timeout = PHASE_TIMEOUT_S + len(documents) * len(fields) * LONG_QUESTION_TIMEOUT_S
                await _wait_until(
                    lambda: all(
                        i in tags.arrivals or i in load.collector.dead_lettered for i in sent
                    ),
                    load.worker,
                    timeout,
                    f"the tags events of {len(sent)} documents",
                )
            measured = watch.report
        return {
            "documents": len(documents),
            "fields": len(fields),
            "dead_lettered": sum(i in load.collector.dead_lettered for i in sent),
            "tags_fields": [tags.fields.get(i, 0) for i in sent],
            "time_to_tags_s": [
                tags.arrivals[i] - sent[i] if i in tags.arrivals else None for i in sent
            ],
            **measured,
        }

    async def _warm_worker(
        self, stack: contextlib.AsyncExitStack, settings: Settings
    ) -> LoadGenerator:
        """A worker on `settings` that has answered a few questions: its session, arenas and
        Kafka clients at their steady state, as the RSS it grows from should be."""
        load = await start_load(stack, settings, self.producer, None)
        await load.run(phase_events("heavy-warmup", self.light, WARMUP_EVENTS))
        return load

    async def _burst(
        self, topic: str, events: Sequence[Event], spread: bool = False
    ) -> tuple[dict[str, float], set[int]]:
        """Sends the events at once, to LONG_PARTITION or, `spread`, one partition each in
        turn; when each was sent, and the partitions they went to."""
        sent: dict[str, float] = {}
        deliveries = []
        for index, event in enumerate(events):
            sent[event["id"]] = time.perf_counter()
            partition = index % PARTITIONS if spread else LONG_PARTITION
            deliveries.append(await _send(self.producer, topic, event, partition))
        return sent, {metadata.partition for metadata in await asyncio.gather(*deliveries)}

    async def _send_light(
        self, load: LoadGenerator, phase: str, pending: Callable[[], bool]
    ) -> tuple[dict[str, float], set[int]]:
        """One-window questions open-loop to the partitions other than LONG_PARTITION while
        `pending()`, and at least `min_light_events`; when each was planned, and the
        partitions they went to."""
        partitions = [p for p in range(PARTITIONS) if p != LONG_PARTITION]
        sent: dict[str, float] = {}
        deliveries = []
        scheduled = time.perf_counter()
        for index, record in enumerate(itertools.cycle(self.light)):
            scheduled += load.rng.expovariate(self.sizes.light_events_per_s)
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            if index >= self.sizes.min_light_events and not pending():
                break
            event = {
                "id": f"{phase}-light-{index}",
                "question": record.question,
                "context": record.context,
            }
            # From the planned instant, as the sweep's open loop counts (coordinated omission).
            sent[event["id"]] = scheduled
            partition = partitions[index % len(partitions)]
            deliveries.append(await _send(load.producer, load.topic, event, partition))
        return sent, {metadata.partition for metadata in await asyncio.gather(*deliveries)}

    def _light_report(self, sent: Mapping[str, float], load: LoadGenerator) -> Report:
        collector = load.collector
        answered = [event_id for event_id in sent if event_id not in collector.dead_lettered]
        if not answered:
            raise BenchError(f"the worker dead-lettered all {len(sent)} light questions")
        latency = percentiles([(collector.arrivals[i] - sent[i]) * 1000 for i in answered])
        return {
            "events": len(sent),
            "dead_lettered": len(sent) - len(answered),
            "latency_ms": latency,
            "latency_windows": {name: ms / self.window_ms for name, ms in latency.items()},
            "worker_latency_ms": percentiles([collector.answers[i].total_ms for i in answered]),
        }


async def _send(
    producer: AIOKafkaProducer, topic: str, event: Event, partition: int
) -> asyncio.Future[Any]:
    return await producer.send(
        topic,
        key=event["id"].encode(),
        value=json.dumps(event, ensure_ascii=False).encode(),
        partition=partition,
    )


async def _wait_until(
    done: Callable[[], bool], worker: WorkerProcess, timeout: float, what: str
) -> None:
    deadline = time.perf_counter() + timeout
    while not done():
        worker.check_alive()
        if time.perf_counter() > deadline:
            raise BenchError(
                f"{what} had not all arrived after {timeout:.0f} s; the worker's log ends "
                f"with:\n{worker.log_tail()}"
            )
        await asyncio.sleep(0.02)


async def _delete_extra_topics(settings: Settings, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(**aiokafka_options(settings))
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


class TagsCollector(TopicReader):
    """Reads the tags topic; notes when each document's tags event arrived, and its fields."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.tags_topic)
        self.arrivals: dict[str, float] = {}
        self.fields: dict[str, int] = {}

    def take(self, record: ConsumerRecord[bytes, bytes]) -> None:
        key = (record.key or b"").decode()
        self.arrivals.setdefault(key, time.perf_counter())
        self.fields[key] = len(json.loads(record.value)["tags"])


class CaseWatch:
    """What a case measures of its worker around the block: RSS, /metrics, the probes.

    `report` is set when the block ends without an error.
    """

    def __init__(self, worker: WorkerProcess) -> None:
        self._worker = worker
        settings = worker.settings
        self._base_url = f"http://{settings.http_host}:{settings.http_port}"
        self._probe_ms: dict[str, list[float]] = {"/healthz": [], "/readyz": []}
        # Answers other than 200 (with the first one's body: /readyz says why), and probes
        # with no answer within PROBE_TIMEOUT_S, apart: a worker not ready is not a stuck one.
        self._not_ok: dict[str, int] = dict.fromkeys(self._probe_ms, 0)
        self._first_not_ok: dict[str, str | None] = dict.fromkeys(self._probe_ms)
        self._no_answer: dict[str, int] = dict.fromkeys(self._probe_ms, 0)
        self._gauges: dict[str, list[float]] = {"held_windows": [], "pending_windows": []}
        self._scrapes_failed = 0
        self._peak_known = False
        self._idle_rss_mb: float | None = None
        self._before: dict[str, float] = {}
        self._began = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.report: Report = {}

    async def __aenter__(self) -> CaseWatch:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S))
        self._peak_known = reset_peak_rss(self._worker.pid)
        self._idle_rss_mb = rss_mb(self._worker.pid)
        self._before = await self._worker.counters()
        self._began = time.perf_counter()
        self._tasks = [
            asyncio.create_task(self._every(PROBE_INTERVAL_S, self._probe)),
            asyncio.create_task(self._every(GAUGE_INTERVAL_S, self._sample_gauges)),
        ]
        return self

    async def __aexit__(self, exc_type: object, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        assert self._session is not None
        await self._session.close()
        if exc_type is not None:
            return
        for result in results:
            if not isinstance(result, asyncio.CancelledError):
                raise BenchError(f"watching the worker failed: {result!r}")
        after = await self._worker.counters()
        seconds = time.perf_counter() - self._began
        peak = self._worker.peak_rss_mb() if self._peak_known else None
        idle = self._idle_rss_mb
        # Once every answer is in: near the peak, the memory was not given back.
        settled = rss_mb(self._worker.pid)

        def delta(name: str) -> float:
            return after.get(name, 0.0) - self._before.get(name, 0.0)

        windows = delta("qa_worker_batch_size_windows_sum")
        self.report = {
            "seconds": seconds,
            "rss_mb": {
                "idle": idle,
                "peak": peak,
                "growth": peak - idle if peak is not None and idle is not None else None,
                "after": settled,
            },
            "windows": windows,
            "windows_per_s": windows / seconds,
            "real_tokens_per_s": delta("qa_worker_tokens_real_total") / seconds,
            "runtime": runtime_statistics(self._before, after),
            "batch_plan": plan_statistics(self._before, after),
            "held_windows_max": max(self._gauges["held_windows"], default=None),
            "pending_windows_max": max(self._gauges["pending_windows"], default=None),
            "metrics_scrapes_failed": self._scrapes_failed,
            "probes": {
                path.lstrip("/"): {
                    "samples": len(times),
                    "not_ok": self._not_ok[path],
                    "first_not_ok": self._first_not_ok[path],
                    "no_answer": self._no_answer[path],
                    "p50_ms": statistics.median(times) if times else None,
                    "max_ms": max(times, default=None),
                }
                for path, times in self._probe_ms.items()
            },
        }

    async def _every(self, interval: float, action: Callable[[], Any]) -> None:
        """Runs `action` every `interval`, or right after the last run if that took longer."""
        due = time.perf_counter()
        while True:
            await action()
            due = max(due + interval, time.perf_counter())
            await asyncio.sleep(due - time.perf_counter())

    async def _probe(self) -> None:
        await asyncio.gather(*(self._get(path) for path in self._probe_ms))

    async def _get(self, path: str) -> None:
        """One probe; its latency, the whole timeout if it had no answer within it."""
        assert self._session is not None
        began = time.perf_counter()
        try:
            async with self._session.get(self._base_url + path) as response:
                body = await response.text()
                if response.status != 200:
                    self._not_ok[path] += 1
                    if self._first_not_ok[path] is None:
                        self._first_not_ok[path] = f"{response.status} {body}"
        except (aiohttp.ClientError, TimeoutError):
            self._no_answer[path] += 1
        self._probe_ms[path].append((time.perf_counter() - began) * 1000)

    async def _sample_gauges(self) -> None:
        try:
            totals = await self._worker.counters(current=False)
        except (aiohttp.ClientError, TimeoutError):
            # A scrape that failed under load is a finding, not the end of the case.
            self._scrapes_failed += 1
            return
        for name, samples in self._gauges.items():
            value = totals.get(f"qa_worker_{name}")
            if value is not None:
                samples.append(value)


def plan_statistics(before: Mapping[str, float], after: Mapping[str, float]) -> Report:
    """The batches planned between two scrapes, and the loop time choosing them took: mean, and
    the most as the bound of the highest bucket reached."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    plans = delta(f"{PLAN}_count")
    return {
        "batches": plans,
        "mean_ms": delta(f"{PLAN}_sum") / plans * 1000 if plans else None,
        "max_at_most_ms": bucket_quantile(_buckets(PLAN, before, after), plans, 1.0),
    }


def _buckets(
    name: str, before: Mapping[str, float], after: Mapping[str, float]
) -> list[tuple[float, float]]:
    """A histogram's finite buckets as (bound, count between the scrapes), from the samples'
    labels, so that the bounds are whatever the worker's histogram has."""
    prefix = f"{name}_bucket{{le="
    buckets = []
    for key, value in after.items():
        if key.startswith(prefix) and key != f"{prefix}+Inf}}":
            buckets.append((float(key[len(prefix) : -1]), value - before.get(key, 0.0)))
    return sorted(buckets)


def _status_kb(pid: int | None, field: str) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def rss_mb(pid: int | None) -> float | None:
    """The process's resident set now (Linux); None where unknown."""
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else kb / 1024


def reset_peak_rss(pid: int | None) -> bool:
    """Sets the kernel's high-water mark of the process's RSS back to its RSS now (Linux 4.0+);
    False where that cannot be done, and then no peak of a case is known."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True
