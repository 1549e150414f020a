"""The ONNX Runtime backend."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

START_LOGITS = "start_logits"
END_LOGITS = "end_logits"


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
