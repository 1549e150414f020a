"""Load generation: events sent at once or open-loop, answers collected, a phase's report."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from ..config import Settings
from ..errors import BenchError
from ..squad import QuestionRecord
from .clock import cpu_seconds
from .placement import AnswerTimes, place_latencies
from .queueing import QueueingModel
from .report import Report
from .runtime_stats import runtime_statistics
from .topic_reader import TopicReader
from .worker_process import WorkerProcess

Event = dict[str, str]


# After the last event of a phase is sent, how long its answers may take.
PHASE_TIMEOUT_S = 300.0


class AnswerCollector(TopicReader):
    """Reads the answers and dead-letters topics; notes when each event's reply first arrived.

    Replies are matched to events by the Kafka key, which the worker copies from the question.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.answers_topic, settings.dead_letter_topic)
        self.arrivals: dict[str, float] = {}
        self.dead_lettered: set[str] = set()
        # Each answer's own timings, to place where a latency went.
        self.answers: dict[str, AnswerTimes] = {}
        self._dead_letter_topic = settings.dead_letter_topic

    def take(self, record: ConsumerRecord[bytes, bytes]) -> None:
        key = (record.key or b"").decode()
        if key in self.arrivals:
            return
        self.arrivals[key] = time.perf_counter()
        if record.topic == self._dead_letter_topic:
            self.dead_lettered.add(key)
        else:
            self.answers[key] = AnswerTimes.from_answer(
                json.loads(record.value), record.timestamp, time.time() * 1000
            )

    async def wait_for(self, ids: Collection[str], worker: WorkerProcess, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while missing := sum(event_id not in self.arrivals for event_id in ids):
            worker.check_alive()
            if self._task is not None and self._task.done():
                raise BenchError(f"reading the answers failed: {self._task.exception()!r}")
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"{missing} of {len(ids)} events had no answer {timeout:.0f} s after the "
                    f"last was sent; the worker's log ends with:\n{worker.log_tail()}"
                )
            await asyncio.sleep(0.02)


def phase_events(phase: str, records: Sequence[QuestionRecord], count: int) -> list[Event]:
    """`count` events cycling through the records, with ids unique to the phase."""
    return [
        {"id": f"{phase}-{index}", "question": record.question, "context": record.context}
        for index, record in zip(range(count), itertools.cycle(records))
    ]


@dataclass
class LoadGenerator:
    producer: AIOKafkaProducer
    collector: AnswerCollector
    worker: WorkerProcess
    topic: str
    rng: random.Random
    broker_pid: int | None = None

    async def run(
        self,
        events: Sequence[Event],
        rate: float | None = None,
        queueing: QueueingModel | None = None,
    ) -> Report:
        """Sends the events all at once, or open-loop at `rate` per second; reports the phase,
        with `queueing`, the latencies queueing alone allows for its arrivals
        (`queueing_bound_ms`)."""
        before = await self.worker.counters()
        pids = {"worker": self.worker.pid, "broker": self.broker_pid, "load_generator": os.getpid()}
        # The wall interval encloses every process's CPU interval, so together they can never
        # report more cores than the machine has.
        began = time.perf_counter()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        sent = await (self._burst(events) if rate is None else self._open_loop(events, rate))
        await self.collector.wait_for(sent, self.worker, PHASE_TIMEOUT_S)
        cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        wall = time.perf_counter() - began
        cpu_cores = {}
        for name, spent in cpu_after.items():
            started = cpu_before[name]
            if spent is not None and started is not None:
                cpu_cores[name] = (spent - started) / wall
        after = await self.worker.counters()
        report = {**phase_report(sent, self.collector, before, after), "cpu_cores": cpu_cores}
        if queueing is not None:
            report["queueing_bound_ms"] = percentiles(queueing.latencies_ms(list(sent.values())))
        return report

    async def _burst(self, events: Sequence[Event]) -> dict[str, float]:
        sent: dict[str, float] = {}
        deliveries = []
        for event in events:
            sent[event["id"]] = time.perf_counter()
            deliveries.append(await self._send(event))
        await asyncio.gather(*deliveries)
        return sent

    async def _open_loop(self, events: Sequence[Event], rate: float) -> dict[str, float]:
        sent: dict[str, float] = {}
        deliveries = []
        scheduled = time.perf_counter()
        for event in events:
            scheduled += self.rng.expovariate(rate)
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            # Latency counts from the planned instant: a send that came late because the machine
            # was busy still waited for the system, and must not hide that (coordinated omission).
            sent[event["id"]] = scheduled
            deliveries.append(await self._send(event))
        await asyncio.gather(*deliveries)
        return sent

    async def _send(self, event: Event) -> asyncio.Future[Any]:
        return await self.producer.send(
            self.topic,
            key=event["id"].encode(),
            value=json.dumps(event, ensure_ascii=False).encode(),
        )


def phase_report(
    sent: Mapping[str, float],
    collector: AnswerCollector,
    before: Mapping[str, float],
    after: Mapping[str, float],
) -> Report:
    answered = [event_id for event_id in sent if event_id not in collector.dead_lettered]
    if not answered:
        raise BenchError(f"the worker dead-lettered all {len(sent)} events of a phase")
    last = max(collector.arrivals[event_id] for event_id in sent)
    latencies = {
        event_id: (collector.arrivals[event_id] - sent[event_id]) * 1000 for event_id in answered
    }
    answers = [collector.answers[event_id] for event_id in answered]
    return {
        "events": len(sent),
        "dead_lettered": len(sent) - len(answered),
        "events_per_s": len(sent) / (last - min(sent.values())),
        "latency_ms": percentiles(list(latencies.values())),
        # The part of the latency spent in the worker; the rest is the broker and its clients.
        "worker_latency_ms": percentiles([answer.total_ms for answer in answers]),
        "placement": place_latencies(latencies, collector.answers),
        **batch_statistics(before, after),
        "runtime": runtime_statistics(before, after),
    }


def percentiles(values: Sequence[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def batch_statistics(before: Mapping[str, float], after: Mapping[str, float]) -> Report:
    """What the worker's batches of one phase looked like, from its /metrics counters."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    real = delta("qa_worker_tokens_real_total")
    batches = delta("qa_worker_batch_size_windows_count")
    return {
        "padding_ratio": delta("qa_worker_tokens_padded_total") / real if real else 1.0,
        "mean_batch_windows": delta("qa_worker_batch_size_windows_sum") / batches
        if batches
        else 0.0,
    }


async def start_load(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    producer: AIOKafkaProducer,
    broker_pid: int | None,
    environ: Mapping[str, str] | None = None,
) -> LoadGenerator:
    """A worker process on `settings` (stopped by `stack`), and the load generator that feeds it
    through `producer` and collects its answers; the same seed for every worker's load."""
    worker = await stack.enter_async_context(WorkerProcess(settings, environ))
    collector = await stack.enter_async_context(AnswerCollector(settings))
    return LoadGenerator(
        producer, collector, worker, settings.questions_topic, random.Random(0), broker_pid
    )
