"""RuntimeMonitor: loop lag from an injected clock and sleep; GC pauses from real collections."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker.observability.metrics import WorkerMetrics
from worker.observability.runtime import RuntimeMonitor

INTERVAL_S = 0.1


@dataclass
class Recorder:
    lags: list[float] = field(default_factory=list)
    pauses: list[tuple[int, float]] = field(default_factory=list)

    def loop_lagged(self, seconds: float) -> None:
        self.lags.append(seconds)

    def gc_paused(self, generation: int, seconds: float) -> None:
        self.pauses.append((generation, seconds))


class ScriptedLoop:
    """A clock and a sleep: each sleep advances the clock by what was asked plus the next
    scripted lateness; once the script is spent, sleeping blocks until cancelled."""

    def __init__(self, lateness: list[float]) -> None:
        self.now = 500.0
        self.asked: list[float] = []
        self._lateness = list(lateness)
        self.spent = asyncio.Event()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        if not self._lateness:
            self.spent.set()
            await asyncio.Event().wait()
        self.now += seconds + self._lateness.pop(0)


async def sample(lateness: list[float]) -> tuple[Recorder, ScriptedLoop]:
    recorder = Recorder()
    loop = ScriptedLoop(lateness)
    monitor = RuntimeMonitor(recorder, INTERVAL_S, clock=loop.clock, sleep=loop.sleep)
    await monitor.start()
    await asyncio.wait_for(loop.spent.wait(), timeout=10)
    await monitor.stop()
    return recorder, loop


async def test_each_sample_is_how_late_that_wake_up_was() -> None:
    lateness = [0.0, 0.003, 0.25, 0.0, 0.0415]
    recorder, loop = await sample(lateness)
    # A late wake-up does not carry over into the next sample.
    assert recorder.lags == pytest.approx(lateness)
    assert loop.asked == [INTERVAL_S] * (len(lateness) + 1)


async def test_an_early_wake_up_counts_as_no_lag() -> None:
    recorder, _ = await sample([-0.0005, 0.002])
    assert recorder.lags == pytest.approx([0.0, 0.002])


async def test_start_and_stop_are_idempotent_and_leave_no_gc_callback() -> None:
    callbacks = list(gc.callbacks)
    loop = ScriptedLoop([])
    monitor = RuntimeMonitor(Recorder(), INTERVAL_S, clock=loop.clock, sleep=loop.sleep)
    await monitor.stop()
    await monitor.start()
    await monitor.start()
    assert monitor.running
    assert len(gc.callbacks) == len(callbacks) + 1
    await asyncio.wait_for(loop.spent.wait(), timeout=10)
    assert loop.asked == [INTERVAL_S]
    await monitor.stop()
    await monitor.stop()
    assert not monitor.running
    assert gc.callbacks == callbacks


@pytest.mark.parametrize("generation", [0, 1, 2])
async def test_a_collection_is_timed_under_its_generation(generation: int) -> None:
    recorder = Recorder()
    loop = ScriptedLoop([])
    ticks = iter([10.0, 10.004, 20.0, 20.5])
    monitor = RuntimeMonitor(
        recorder, INTERVAL_S, clock=loop.clock, sleep=loop.sleep, gc_clock=lambda: next(ticks)
    )
    gc.disable()  # no collection of its own between the forced ones
    try:
        await monitor.start()
        gc.collect(generation)
        monitor.report_pauses()
        assert recorder.pauses == [(generation, pytest.approx(0.004))]
        gc.collect(generation)
        await monitor.stop()
    finally:
        gc.enable()
    assert recorder.pauses[1:] == [(generation, pytest.approx(0.5))]
    # Stopped, collections go untimed.
    gc.collect(generation)
    assert len(recorder.pauses) == 2


async def test_a_collection_on_another_thread_is_timed() -> None:
    recorder = Recorder()
    loop = ScriptedLoop([])
    monitor = RuntimeMonitor(recorder, INTERVAL_S, clock=loop.clock, sleep=loop.sleep)
    await monitor.start()
    try:
        await asyncio.to_thread(gc.collect, 1)
    finally:
        await monitor.stop()
    assert [generation for generation, _ in recorder.pauses] == [1]
    assert recorder.pauses[0][1] >= 0


def metric_samples(metrics: WorkerMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = metrics.render().decode()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def test_the_worker_metrics_export_lags_and_pauses() -> None:
    metrics = WorkerMetrics()
    counts = metric_samples(metrics, "qa_worker_gc_pause_seconds_count")
    # A series per generation from the start, so that rate() has a zero to start from.
    assert counts == {(("generation", str(g)),): 0.0 for g in range(3)}
    loop = ScriptedLoop([0.03])
    monitor = RuntimeMonitor(metrics, INTERVAL_S, clock=loop.clock, sleep=loop.sleep)
    await monitor.start()
    gc.collect()
    await asyncio.wait_for(loop.spent.wait(), timeout=10)
    await monitor.stop()
    counts = metric_samples(metrics, "qa_worker_gc_pause_seconds_count")
    assert counts[(("generation", "2"),)] >= 1
    lag = metric_samples(metrics, "qa_worker_event_loop_lag_seconds_bucket")
    assert lag[(("le", "0.025"),)] == 0
    assert lag[(("le", "0.05"),)] == 1


def test_generations_beyond_the_interpreters_share_the_oldest_series() -> None:
    metrics = WorkerMetrics()
    metrics.gc_paused(7, 0.01)
    assert metric_samples(metrics, "qa_worker_gc_pause_seconds_count") == {
        (("generation", "0"),): 0.0,
        (("generation", "1"),): 0.0,
        (("generation", "2"),): 1.0,
    }
