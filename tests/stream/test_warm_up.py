"""Warm-up before ready: every inference stream runs the batcher's batch shapes before the worker
starts consuming, the worker is not ready until that ends, and a model that fails it stops the
start-up with the cause."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

from tests.support.streaming import create_topics, wait_until, worker_settings
from worker.backends import InferenceBackend
from worker.batching.plan import BatchLimits
from worker.embedded.broker import EmbeddedBroker, free_port
from worker.errors import SetupError
from worker.observability.metrics import WorkerMetrics
from worker.qa import QAEngine
from worker.stream import QAWorker

Shape = tuple[int, int]


class RecordingBackend:
    """Wraps a backend: records each run's stream and (windows, tokens) shape, holds runs while
    `gate` is closed, and fails every run on `failing_stream`."""

    def __init__(self, backend: InferenceBackend, failing_stream: int | None = None) -> None:
        self.backend = backend
        self.input_names = backend.input_names
        self.streams = backend.streams
        self.failing_stream = failing_stream
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.runs: list[tuple[int, Shape]] = []
        self.padded_runs = 0
        self._lock = threading.Lock()

    @property
    def sessions(self) -> int:
        return self.backend.sessions

    def run(
        self, inputs: Mapping[str, np.ndarray], stream: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        rows, tokens = inputs["input_ids"].shape
        with self._lock:
            self.runs.append((stream, (rows, tokens)))
            self.padded_runs += int(not inputs["attention_mask"].all())
        if stream == self.failing_stream:
            raise RuntimeError(f"no memory left for stream {stream}")
        return self.backend.run(inputs, stream)

    def shapes(self, stream: int) -> set[Shape]:
        with self._lock:
            return {shape for ran_on, shape in self.runs if ran_on == stream}


@pytest.fixture(scope="module")
def model(export_factory: Callable[[str], Path]) -> Path:
    return export_factory("bert")


def recorded_engine(
    model: Path, failing_stream: int | None = None, max_seq_len: int | None = None
) -> tuple[QAEngine, RecordingBackend]:
    """A two-stream engine of `model` whose backend is a RecordingBackend around the real one."""
    loaded = QAEngine.load(model, precision="fp32", streams=2, threads=1, max_seq_len=max_seq_len)
    recorder = RecordingBackend(loaded.backend, failing_stream)
    return QAEngine(loaded.tokenizer, recorder, loaded.manifest, loaded.model_id), recorder


@pytest.mark.parametrize(
    ("kind", "max_seq_len", "limits", "expected"),
    [
        # The tiny models' default window is the reference's 384 tokens; 1,024 tokens a batch.
        ("bert", None, BatchLimits(batch_size=16), {(16, 64), (8, 128), (4, 256), (2, 384)}),
        ("bert", None, BatchLimits(batch_size=1), {(1, 64), (1, 128), (1, 256), (1, 384)}),
        # Lengths from the longest window up are left out; a window over the budget runs alone.
        (
            "bert",
            200,
            BatchLimits(batch_size=8, max_batch_tokens=150),
            {(2, 64), (1, 128), (1, 200)},
        ),
        # The shortest window the settings allow; RoBERTa's byte-level BPE puts the context first.
        ("bert", 8, BatchLimits(batch_size=4), {(4, 8)}),
        ("roberta", 8, BatchLimits(batch_size=4), {(4, 8)}),
        ("roberta", None, BatchLimits(batch_size=2), {(2, 64), (2, 128), (2, 256), (2, 384)}),
    ],
)
def test_every_stream_runs_each_batch_shape_of_full_unpadded_windows(
    export_factory: Callable[[str], Path],
    kind: str,
    max_seq_len: int | None,
    limits: BatchLimits,
    expected: set[Shape],
) -> None:
    engine, recorder = recorded_engine(export_factory(kind), max_seq_len=max_seq_len)
    shapes = engine.warm_up(limits)
    assert set(shapes) == expected
    for stream in range(engine.streams):
        assert recorder.shapes(stream) >= expected, stream
    # Windows of the tokenizer at exactly each length: nothing in a batch is padding.
    assert recorder.padded_runs == 0
    # And one question went on through decoding.
    assert len(recorder.runs) == len(expected) * engine.streams + 1


def test_a_run_that_fails_stops_the_warm_up_naming_the_stream_the_shape_and_the_cause(
    model: Path,
) -> None:
    engine, _ = recorded_engine(model, failing_stream=1)
    with pytest.raises(SetupError) as raised:
        engine.warm_up(BatchLimits(batch_size=4))
    message = str(raised.value)
    assert "a 4x64 batch (windows x tokens) on inference stream 1" in message
    assert "no memory left for stream 1" in message


async def test_a_failing_warm_up_stops_the_start_before_it_connects_and_never_turns_ready(
    model: Path,
) -> None:
    engine, _ = recorded_engine(model, failing_stream=0)
    metrics = WorkerMetrics()
    # No broker listens there: a start that went on to connect would not fail this fast.
    settings = worker_settings(f"127.0.0.1:{free_port()}", model)
    worker = QAWorker(settings, engine, metrics)
    try:
        with pytest.raises(SetupError, match="no memory left for stream 0"):
            await asyncio.wait_for(worker.start(), 20)
        assert worker.readiness() == (False, "the Kafka consumer has not started")
        assert not worker.app.started
        assert metrics.registry.get_sample_value("qa_worker_ready") == 0
    finally:
        await worker.stop()


@pytest.mark.broker
async def test_the_worker_is_ready_only_once_its_warm_up_has_run_the_batchers_shapes(
    model: Path,
) -> None:
    engine, recorder = recorded_engine(model)
    metrics = WorkerMetrics()
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        settings = worker_settings(
            broker.bootstrap_servers, model, batch_size=4, max_batch_tokens=512
        )
        # The batcher's limits: 4 windows and 512 tokens a batch.
        expected = {(4, 64), (4, 128), (2, 256), (1, 384)}
        worker = QAWorker(settings, engine, metrics)
        recorder.gate.clear()
        starting = asyncio.ensure_future(worker.start())
        try:
            await wait_until(recorder.entered.is_set, 30, "the warm-up to begin")
            # 3 s: longer than a worker here takes from start to ready (some 2 s) when nothing
            # holds its warm-up.
            for _ in range(30):
                assert not worker.readiness()[0]
                assert metrics.registry.get_sample_value("qa_worker_ready") == 0
                assert not starting.done()
                await asyncio.sleep(0.1)
            recorder.gate.set()
            await starting
            for stream in range(engine.streams):
                assert recorder.shapes(stream) >= expected, stream
            await wait_until(lambda: worker.readiness()[0], 30, "the worker to be ready")
            await wait_until(
                lambda: metrics.registry.get_sample_value("qa_worker_ready") == 1,
                10,
                "qa_worker_ready to follow",
            )
        finally:
            recorder.gate.set()
            await asyncio.gather(starting, return_exceptions=True)
            await worker.stop()
