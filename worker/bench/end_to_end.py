"""The end-to-end and sweep phases: a worker process behind a broker, on topics of its own."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from ..backends.onnx import stream_layout
from ..config import Settings
from ..embedded.broker import EmbeddedBroker
from ..squad import QuestionRecord
from ..stream.transport import aiokafka_options
from .clock import cpu_seconds
from .goodput import measure_goodput
from .load import LoadGenerator, phase_events, start_load
from .offline import WindowTimer
from .options import BenchOptions
from .queueing import QueueingModel
from .report import Report, note
from .topics import WARMUP_EVENTS, bench_worker_settings, create_bench_topics, delete_topics
from .tracing_overhead import measure_tracing_overhead
from .worker_process import WorkerProcess

SWEEP_LOADS = (0.25, 0.5, 0.75, 1.0)


# Odd, so that the median is one of the rounds.
END_TO_END_ROUNDS = 3


async def measure_streaming(
    settings: Settings,
    options: BenchOptions,
    records: Sequence[QuestionRecord],
    window: WindowTimer,
    queueing: QueueingModel,
) -> Report:
    """end_to_end, sweep, goodput, idle, startup_s and peak_rss_mb from one worker process;
    rss_per_stream from a second one with a single stream. `window` is timed before each
    latency phase; each sweep phase also gives what `queueing` allows for its arrivals."""
    # The embedded broker needs a short fetch wait to answer fast; idle is measured at this one.
    fetch_wait_ms = settings.fetch_max_wait_ms
    async with contextlib.AsyncExitStack() as stack:
        broker_pid = None
        if options.broker is None:
            broker = await stack.enter_async_context(EmbeddedBroker())
            settings, broker_pid = broker.worker_settings(settings), broker.pid
        else:
            settings = dataclasses.replace(settings, broker=options.broker)
        worker_settings = bench_worker_settings(settings)
        await create_bench_topics(worker_settings)
        if options.broker is not None:
            stack.push_async_callback(delete_topics, worker_settings)
        producer = AIOKafkaProducer(acks="all", **aiokafka_options(worker_settings))
        await producer.start()
        stack.push_async_callback(producer.stop)
        note("starting the worker")
        load = await start_load(stack, worker_settings, producer, broker_pid)
        worker = load.worker
        await load.run(phase_events("warmup", records, min(WARMUP_EVENTS, len(records))))
        rounds = []
        for round_ in range(1, END_TO_END_ROUNDS + 1):
            note(f"end_to_end: {len(records)} events at once (round {round_})")
            events = phase_events(f"end-to-end-{round_}", records, len(records))
            rounds.append(await load.run(events))
        # The round of median throughput, whole: its latencies and batches belong with it.
        end_to_end = sorted(rounds, key=lambda phase: phase["events_per_s"])[len(rounds) // 2]
        end_to_end["events_per_s_by_round"] = [phase["events_per_s"] for phase in rounds]
        sweep = []
        for fraction in SWEEP_LOADS:
            window.sample()
            sweep.append(
                await sweep_load(
                    load, records, fraction, end_to_end["events_per_s"], options, queueing
                )
            )
        goodput = await measure_goodput(
            load, records, end_to_end["events_per_s"], window, options.sweep_events
        )
        idle_settings = dataclasses.replace(worker_settings, fetch_max_wait_ms=fetch_wait_ms)
        idle = await measure_idle(idle_settings, options)
        measured = {
            "end_to_end": end_to_end,
            "sweep": sweep,
            "goodput": goodput,
            "idle_cpu_cores": idle,
            "padding_ratio": end_to_end["padding_ratio"],
            # Read before the worker stops, while /proc still has it.
            "peak_rss_mb": worker.peak_rss_mb(),
            "startup_s": worker.startup_s,
        }
        measured["memory"] = await measure_stream_memory(
            settings, records, producer, broker_pid, measured["peak_rss_mb"], options.broker
        )
        if options.tracing_overhead:
            measured["tracing_overhead"] = await measure_tracing_overhead(
                stack, settings, records, load, producer, broker_pid
            )
    return measured


async def sweep_load(
    load: LoadGenerator,
    records: Sequence[QuestionRecord],
    fraction: float,
    capacity: float,
    options: BenchOptions,
    queueing: QueueingModel,
) -> Report:
    rate = fraction * capacity
    note(f"sweep: {options.sweep_events} events at {fraction:.0%} load ({rate:.1f} events/s)")
    events = phase_events(f"load-{fraction:.2f}", records, options.sweep_events)
    return {
        "load": fraction,
        "target_events_per_s": rate,
        **await load.run(events, rate, queueing),
    }


async def measure_idle(settings: Settings, options: BenchOptions) -> float | None:
    """Cores a worker with nothing to do uses, at the fetch wait the user's settings give.

    A worker of its own: the measured one polls the embedded broker every 5 ms, which tansu
    needs to answer fast but a Kafka broker does not (it answers a fetch as records arrive), so
    idling at that wait would measure the bench's setting rather than the worker.
    """
    settings = bench_worker_settings(settings)
    await create_bench_topics(settings)
    async with contextlib.AsyncExitStack() as stack:
        if options.broker is not None:
            stack.push_async_callback(delete_topics, settings)
        worker = await stack.enter_async_context(WorkerProcess(settings))
        note(
            f"idle: a worker at fetch wait {settings.fetch_max_wait_ms:g} ms with nothing to do"
            f" for {options.idle_seconds:g} s"
        )
        return await idle_cpu_cores(worker, options.idle_seconds)


async def idle_cpu_cores(worker: WorkerProcess, seconds: float) -> float | None:
    """Cores the worker used over `seconds` with no event to answer; None where unknown."""
    before = cpu_seconds(worker.pid)
    await asyncio.sleep(seconds)
    after = cpu_seconds(worker.pid)
    if before is None or after is None:
        return None
    return (after - before) / seconds


async def measure_stream_memory(
    settings: Settings,
    records: Sequence[QuestionRecord],
    producer: AIOKafkaProducer,
    broker_pid: int | None,
    peak_rss_mb: float | None,
    external_broker: str | None,
) -> Report:
    """Peak RSS of the worker's layout against one stream of the same threads: RSS per stream.

    The second worker answers a burst of events too, so that its session's buffers have grown
    as the first's did; the difference is what each stream beyond the first costs.
    """
    threads, streams = stream_layout(settings.inference_streams, settings.threads)
    memory: Report = {
        "streams": streams,
        "threads": threads,
        "peak_rss_mb": peak_rss_mb,
        "one_stream_peak_rss_mb": None,
        "rss_per_stream_mb": None,
    }
    if streams == 1:
        return memory
    note(f"memory: a worker with 1 stream of {threads} threads, against {streams}")
    single = bench_worker_settings(
        dataclasses.replace(settings, inference_streams=1, threads=threads)
    )
    await create_bench_topics(single)
    async with contextlib.AsyncExitStack() as stack:
        if external_broker is not None:
            stack.push_async_callback(delete_topics, single)
        load = await start_load(stack, single, producer, broker_pid)
        await load.run(phase_events("memory", records, len(records)))
        one = load.worker.peak_rss_mb()
    memory["one_stream_peak_rss_mb"] = one
    if one is not None and peak_rss_mb is not None:
        memory["rss_per_stream_mb"] = (peak_rss_mb - one) / (streams - 1)
    return memory
