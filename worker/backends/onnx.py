"""The ONNX Runtime backend."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..manifest import END_LOGITS, START_LOGITS

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


class OnnxBackend:
    def __init__(self, model_path: Path, threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        # One batch runs at a time; parallelism comes from the intra-op pool.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = tuple(item.name for item in self._session.get_inputs())
        outputs = [item.name for item in self._session.get_outputs()]
        missing = {START_LOGITS, END_LOGITS} - set(outputs)
        if missing:
            raise ValueError(
                f"{model_path} has outputs {outputs}, not {START_LOGITS} and {END_LOGITS}; "
                "export it with `qa-worker export`"
            )

    def run(self, inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        feed = {name: inputs[name] for name in self.input_names}
        start, end = self._session.run([START_LOGITS, END_LOGITS], feed)
        return start, end
