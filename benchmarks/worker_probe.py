"""Drives a `QAWorker` in this process through the embedded broker and reports where time goes.

    python -m benchmarks.worker_probe --model models/mobilebert \\
        --squad ../shared/data/squad-v2-dev-half.json [--events N] [--rate R] [--max-padding P] \\
        [--batch-size B] [--slowest N] [--freeze]

With `--rate 0` (the default) every event is produced at once (a burst); otherwise events arrive
as a Poisson stream of R per second. Printed: throughput, the share of the time the inference
thread was busy, the padding ratio and the worst batches, latency percentiles split by the
answers' own timings (queue, inference, the rest of the worker, the broker hops, and the gaps
between the stages of `timings.stages_ms`), the slowest events with their windows' lengths and
their two largest stage gaps, the event-loop lag and GC pauses seen during the
load (`--freeze`: after `gc.freeze()`, as `qa-worker run` does), and the CPU each thread of
this process and the broker used, also per event. Unlike `qa-worker bench`, the load generator
shares this process with the worker (on its own thread and event loop, named
probe-load, so the worker's threads show the worker's CPU alone): use it to look inside one
configuration, and compare configurations only in interleaved repetitions; run it with another
checkout's `worker` first on PYTHONPATH to compare two versions of the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import random
import statistics
import threading
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker.bench.clock import cpu_seconds
from worker.commands.run import freeze_long_lived_objects
from worker.config import Settings
from worker.embedded.broker import FETCH_WAIT_MS, EmbeddedBroker
from worker.model.loading import load_engine
from worker.observability.metrics import WorkerMetrics
from worker.observability.runtime import LOOP_LAG_INTERVAL_S
from worker.squad import read_questions
from worker.stream import QAWorker

TOPICS = ("probe-questions", "probe-answers", "probe-dead-letters")
LOAD_THREAD = "probe-load"


class BatchLog(WorkerMetrics):
    """The worker's metrics, also keeping every batch: (windows, real, padded tokens, seconds),
    every event-loop lag sample and every GC pause: (generation, seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[int, int, int, float]] = []
        self.lags: list[float] = []
        self.pauses: list[tuple[int, float]] = []

    def loop_lagged(self, seconds: float) -> None:
        super().loop_lagged(seconds)
        self.lags.append(seconds)

    def gc_paused(self, generation: int, seconds: float) -> None:
        super().gc_paused(generation, seconds)
        self.pauses.append((generation, seconds))

    def on_batch(
        self, windows: int, real_tokens: int, padded_tokens: int, seconds: float, plan_s: float
    ) -> None:
        super().on_batch(windows, real_tokens, padded_tokens, seconds, plan_s)
        self.batches.append((windows, real_tokens, padded_tokens, seconds))


def thread_cpu_seconds() -> dict[int, float]:
    """CPU seconds of each thread of this process by thread id (Linux)."""
    used: dict[int, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def thread_names() -> dict[int, str]:
    """Python's names of its threads; the others are native (ONNX Runtime's pool)."""
    return {thread.native_id: thread.name for thread in threading.enumerate() if thread.native_id}


def p50_p95(values: list[float]) -> str:
    ordered = sorted(values)
    return f"p50 {statistics.median(ordered):.1f} p95 {ordered[int(0.95 * (len(ordered) - 1))]:.1f}"


@dataclasses.dataclass
class Load:
    """What the load generator saw: send and arrival times by key, and the CPU it spanned."""

    sent: dict[str, float]
    arrived: dict[str, tuple[float, dict]]
    wall: float
    threads_before: dict[int, float]
    threads_after: dict[int, float]


async def generate(bootstrap_servers: str, records: list, rate: float) -> Load:
    """Sends the questions (a burst, or a Poisson stream of `rate`) and waits for every answer."""
    rng = random.Random(0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
    consumer = AIOKafkaConsumer(
        *TOPICS[1:],
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_WAIT_MS,
    )
    await producer.start()
    await consumer.start()
    try:
        arrived: dict[str, tuple[float, dict]] = {}

        async def read() -> None:
            async for record in consumer:
                arrived[record.key.decode()] = (time.perf_counter(), json.loads(record.value))

        reader = asyncio.create_task(read())
        threads_before = thread_cpu_seconds()
        sent: dict[str, float] = {}
        began = scheduled = time.perf_counter()
        for index, record in enumerate(records):
            if rate:
                scheduled += rng.expovariate(rate)
                await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            key = f"e{index}"
            sent[key] = time.perf_counter()
            event = {"id": key, "question": record.question, "context": record.context}
            await producer.send(TOPICS[0], json.dumps(event).encode(), key=key.encode())
        while len(arrived) < len(sent):
            await asyncio.sleep(0.02)
        wall = time.perf_counter() - began
        reader.cancel()
        return Load(sent, arrived, wall, threads_before, thread_cpu_seconds())
    finally:
        await producer.stop()
        await consumer.stop()


def generate_in_thread(bootstrap_servers: str, records: list, rate: float) -> Load:
    # On its own thread and event loop, so the worker's threads carry only the worker's CPU
    # (the embedded broker makes every consumer poll, the answers' one here too).
    threading.current_thread().name = LOAD_THREAD
    return asyncio.run(generate(bootstrap_servers, records, rate))


async def probe(
    settings: Settings, squad: Path, events: int, rate: float, freeze: bool, slowest: int
) -> None:
    records = read_questions(squad)[:events]
    async with EmbeddedBroker() as broker:
        for topic in TOPICS:
            await broker.create_topic(topic, 4)
        settings = dataclasses.replace(
            broker.worker_settings(settings),
            questions_topic=TOPICS[0],
            answers_topic=TOPICS[1],
            dead_letter_topic=TOPICS[2],
            http_port=0,
        )
        metrics = BatchLog()
        engine = load_engine(settings)
        worker = QAWorker(settings, engine, metrics)
        await worker.start()
        if freeze:
            freeze_long_lived_objects()
        try:
            while not worker.readiness()[0]:
                await asyncio.sleep(0.05)
            # The freeze's own collection, and the lag sample it delayed, are start-up's.
            await asyncio.sleep(2 * LOOP_LAG_INTERVAL_S)
            worker.runtime.report_pauses()
            metrics.lags.clear()
            metrics.pauses.clear()
            broker_before = cpu_seconds(broker.pid)
            load = await asyncio.to_thread(
                generate_in_thread, broker.bootstrap_servers, records, rate
            )
            broker_after = cpu_seconds(broker.pid)
            names = thread_names()
        finally:
            await worker.stop()

    sent, arrived, wall = load.sent, load.arrived, load.wall
    busy = sum(seconds for *_, seconds in metrics.batches)
    real = sum(real for _, real, _, _ in metrics.batches)
    padded = sum(padded for _, _, padded, _ in metrics.batches)
    windows = sum(count for count, *_ in metrics.batches)
    print(
        f"{len(sent)} events: {len(sent) / wall:.1f} events/s, inference busy {busy / wall:.2f}, "
        f"{len(metrics.batches)} batches of {windows / len(metrics.batches):.1f} windows, "
        f"padding {padded / real:.3f}"
    )
    worst = sorted(metrics.batches, key=lambda batch: batch[2] / batch[1], reverse=True)[:5]
    print(
        "most padded batches (windows, padded/real):",
        ", ".join(f"({count}, {pad / real_:.2f})" for count, real_, pad, _ in worst),
    )
    timings = [arrived[key][1].get("timings", {}) for key in sent]
    end_to_end = [(arrived[key][0] - sent[key]) * 1000 for key in sent]
    queue = [t["queue_ms"] for t in timings if t]
    inference = [t["inference_ms"] for t in timings if t]
    total = [t["total_ms"] for t in timings if t]
    print(f"latency ms, end to end: {p50_p95(end_to_end)}")
    print(f"  in the worker (total_ms): {p50_p95(total)}")
    print(f"  queued, tokenizing included (queue_ms): {p50_p95(queue)}")
    print(f"  inference of its batches (inference_ms): {p50_p95(inference)}")
    print(
        "  the rest of the worker: "
        + p50_p95([t["total_ms"] - t["queue_ms"] - t["inference_ms"] for t in timings if t])
    )
    stages = [stage_gaps(t["stages_ms"]) for t in timings if t and "stages_ms" in t]
    if stages:
        print("  stage gaps, ms after the previous (read: from the read):")
        for name in stages[0]:
            print(f"    {name}: {p50_p95_p99_max([item[name] for item in stages])}")
    print(f"the {slowest} slowest events (e<index into the questions>):")
    for key in sorted(sent, key=lambda key: arrived[key][0] - sent[key])[-slowest:]:
        record = records[int(key[1:])]
        windows = [len(window) for window in engine.encode(record.question, record.context).windows]
        gaps = stage_gaps(arrived[key][1].get("timings", {}).get("stages_ms", {}))
        largest = sorted(gaps.items(), key=lambda item: -item[1])[:2]
        print(
            f"  {key}: {(arrived[key][0] - sent[key]) * 1000:.0f} ms, windows of {windows} "
            "tokens, largest gaps: " + ", ".join(f"{name} {ms:.0f} ms" for name, ms in largest)
        )
    print(
        f"event-loop lag ms ({len(metrics.lags)} samples): "
        + p50_p95_p99_max([lag * 1000 for lag in metrics.lags])
    )
    for generation in range(3):
        pauses = [seconds * 1000 for g, seconds in metrics.pauses if g == generation]
        if pauses:
            print(
                f"GC generation {generation}: {len(pauses)} pauses, "
                f"{len(pauses) / wall:.2f}/s, ms {p50_p95_p99_max(pauses)}"
            )
    if broker_before is not None and broker_after is not None:
        print(f"CPU cores: broker {(broker_after - broker_before) / wall:.2f}")
    used = {
        names.get(tid, f"native thread {tid}"): seconds - load.threads_before.get(tid, 0.0)
        for tid, seconds in load.threads_after.items()
    }
    busiest = sorted(used.items(), key=lambda item: -item[1])
    print(
        f"CPU by thread of this process (cores; ms per event), {LOAD_THREAD} is the load: "
        + ", ".join(
            f"{name} {seconds / wall:.2f}; {seconds / len(sent) * 1000:.2f}"
            for name, seconds in busiest
            if seconds / wall >= 0.01
        )
    )


def stage_gaps(stages_ms: dict[str, float]) -> dict[str, float]:
    """Each stage's gap after the one before it (the first: after the read), in ms."""
    names = ["read", *stages_ms]
    at = {"read": 0.0, **stages_ms}
    return {after: at[after] - at[before] for before, after in itertools.pairwise(names)}


def p50_p95_p99_max(values: list[float]) -> str:
    ordered = sorted(values)
    if not ordered:
        return "none"

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return f"p50 {at(0.5):.2f}, p95 {at(0.95):.2f}, p99 {at(0.99):.2f}, max {ordered[-1]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--squad", type=Path, required=True)
    parser.add_argument("--events", type=int, default=600)
    parser.add_argument("--rate", type=float, default=0.0, help="events/s; 0: all at once")
    parser.add_argument("--max-padding", type=float, default=Settings().max_padding)
    parser.add_argument(
        "--freeze", action="store_true", help="gc.freeze() after start-up, as `qa-worker run` does"
    )
    parser.add_argument("--slowest", type=int, default=10, help="events to list, slowest last")
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size)
    args = parser.parse_args()
    settings = Settings(model=args.model, max_padding=args.max_padding, batch_size=args.batch_size)
    asyncio.run(probe(settings, args.squad, args.events, args.rate, args.freeze, args.slowest))


if __name__ == "__main__":
    main()
