"""The ONNX Runtime backend."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..model.manifest import END_LOGITS, START_LOGITS

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU limit.

    In a container the affinity is every core of the node; the limit is what the pod gets, and
    more threads than that only contend with each other.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cores or 1, cgroup_cpu_limit(CGROUP_CPU_MAX) or cores or 1)


def cgroup_cpu_limit(path: Path) -> int | None:
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def stream_layout(streams: int, threads: int, cores: int | None = None) -> tuple[int, int]:
    """(threads per stream, streams) for the settings, where 0 means chosen for the cores.

    The default, one single-threaded stream per core, measured fastest on the development
    machine (docs/performance.md; `python -m benchmarks.stream_layouts` repeats it): one
    session's intra-op threads wait for each other at the end of every operator, while separate
    streams never do. On the 2-core machine (MobileBERT int8, nothing else running), two
    single-threaded streams sharing one session answered 1.07-1.5x the events/s of one session
    with two threads (1.5x at batch 1, 1.07x at batch 16), as many as a session per stream at
    half the weights' memory. Two threads are faster only for one window alone (20.7 against
    24.0 ms); a second, wide session for short queues is not built (see docs/performance.md).
    """
    cores = cores or available_cores()
    if not streams:
        streams = max(1, cores // threads) if threads else cores
    return threads or max(1, cores // streams), streams


def open_session(model: Path | bytes, threads: int) -> ort.InferenceSession:
    """A CPU session of the model (a file or its bytes) on `threads` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Parallelism comes from the intra-op pool and from the streams, not from running the
    # graph's independent nodes side by side.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def stream_sessions(model: Path | bytes, threads: int, streams: int) -> list[ort.InferenceSession]:
    """The session each of `streams` streams runs, each on `threads` intra-op threads.

    With one thread per stream, every stream runs the one session (ONNX Runtime's `Run` is
    thread-safe, and with a single intra-op thread it computes on the caller's thread), so the
    weights are loaded once. With more, each stream has its own session: streams sharing one
    intra-op pool would wait on each other, which is what several streams are for avoiding.
    """
    if threads == 1:
        return [open_session(model, threads)] * streams
    return [open_session(model, threads) for _ in range(streams)]


class OnnxBackend:
    """One ONNX model run by `streams` threads at once, each batch on `threads` intra-op threads.

    `run(inputs, stream)` may be called concurrently for distinct streams; which streams share
    a session is `stream_sessions`' rule.
    """

    def __init__(self, model_path: Path, threads: int = 0, streams: int = 1) -> None:
        if streams < 1:
            raise ValueError(f"streams must be 1 or more, got {streams}")
        self.streams = streams
        self.threads, _ = stream_layout(streams, threads)
        self._sessions = stream_sessions(model_path, self.threads, streams)
        session = self._sessions[0]
        self.input_names = tuple(item.name for item in session.get_inputs())
        outputs = [item.name for item in session.get_outputs()]
        missing = {START_LOGITS, END_LOGITS} - set(outputs)
        if missing:
            raise ValueError(
                f"{model_path} has outputs {outputs}, not {START_LOGITS} and {END_LOGITS}; "
                "export it with `qa-worker export`"
            )

    @property
    def sessions(self) -> int:
        """Distinct ONNX Runtime sessions, so copies of the weights, this backend holds."""
        return len({id(session) for session in self._sessions})

    def run(
        self, inputs: Mapping[str, np.ndarray], stream: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        feed = {name: inputs[name] for name in self.input_names}
        start, end = self._sessions[stream].run([START_LOGITS, END_LOGITS], feed)
        return start, end
