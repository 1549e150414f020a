"""The model's work: FLOPs of the matrix products in one window."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

MATMUL_OPS = frozenset({"MatMul", "MatMulInteger", "Gemm"})


def model_gflop_per_window(model_path: Path, tokens: int) -> float:
    """GFLOP of one window of `tokens` tokens: 2·M·N·K over every matrix product the model runs.

    The shapes are those ONNX Runtime reports in a profile of one batch-1 run at that length, with
    graph optimizations off so that each product is still a node of the file, attention's too.
    Real shapes need no shape inference, which loses the sequence length in exported graphs.
    Softmax, layer norms and activations are left out: a few percent of a transformer's work.
    """
    with tempfile.TemporaryDirectory(prefix="qa-bench-profile-") as folder:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        # Only the shapes matter, and token 1 with type 0 and a full mask is valid in any model.
        feed = {
            item.name: np.full((1, tokens), int(item.name != "token_type_ids"), dtype=np.int64)
            for item in session.get_inputs()
        }
        session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    nodes = [event["args"] for event in events if event.get("cat") == "Node"]
    flops = sum(_matmul_flops(node) for node in nodes if node.get("op_name") in MATMUL_OPS)
    return flops / 1e9


def _matmul_flops(node: Mapping[str, Any]) -> int:
    """2 x output elements x the inner dimension, the last of the left operand.

    torch exports linear layers as MatMul, or as Gemm with only the right operand transposed, so
    the left operand's last dimension is the inner one in both.
    """
    # Each shape is listed as {element type: dims}.
    (left,) = node["input_type_shape"][0].values()
    (output,) = node["output_type_shape"][0].values()
    return 2 * math.prod(output) * left[-1]
