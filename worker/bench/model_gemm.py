"""The int8 GEMM rate at the model's own matrix shapes, on the ceiling's layout.

The large-matrix peak (machine.py) is what the kernels reach on 2048^3 products; a transformer's
products are much smaller (MobileBERT's bottlenecks are 128 wide), and small products reach less
of it. Timing MatMulInteger at the model's (M, K, N) gives the honest limit beside that peak.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ..backends.onnx import stream_sessions
from .ceiling import Layout, run_streams
from .machine import import_onnx
from .report import Report

# Each shape's timed runs last about this long per stream: long enough to time well.
SHAPE_SECONDS = 0.2
MIN_REPEATS = 3


def matmul_integer_shapes(model_path: Path) -> Counter[tuple[int, int]]:
    """(K, N) of every MatMulInteger's constant right operand, the weights, and how many use it.

    Attention's products multiply activations by activations and stay float, so only the
    weight products (all but attention's) are counted, as dynamic quantization writes them.
    """
    onnx = import_onnx()
    model = onnx.load(str(model_path))
    weights = {tensor.name: tuple(tensor.dims) for tensor in model.graph.initializer}
    return Counter(
        weights[node.input[1]]
        for node in model.graph.node
        if node.op_type == "MatMulInteger" and len(weights.get(node.input[1], ())) == 2
    )


def measure_model_gemm(model_path: Path, rows: int, layout: Layout) -> Report | None:
    """GOP/s of the model's weight products at `rows` rows, each stream a caller, as the ceiling.

    The rate is the model's own mix: all its products' operations over the time they take, each
    shape timed alone. None for a model without MatMulInteger (a float32 one).
    """
    shapes = matmul_integer_shapes(model_path)
    if not shapes:
        return None
    timed = []
    for (inner, columns), count in sorted(shapes.items()):
        gops = _shape_rate(rows, inner, columns, layout)
        timed.append({"k": inner, "n": columns, "count": count, "gops": gops})
    operations = sum(2 * rows * row["k"] * row["n"] * row["count"] for row in timed)
    seconds = sum(2 * rows * row["k"] * row["n"] * row["count"] / row["gops"] for row in timed)
    return {
        "gops": operations / seconds,
        "m": rows,
        "streams": layout.streams,
        "threads": layout.threads,
        "shapes": timed,
    }


def _shape_rate(rows: int, inner: int, columns: int, layout: Layout) -> float:
    onnx = import_onnx()
    rng = np.random.default_rng(0)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
        "gemm",
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.UINT8, [rows, inner])],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.INT32, [rows, columns])],
        [onnx.numpy_helper.from_array(rng.integers(-128, 128, (inner, columns), np.int8), "b")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    # Shared as OnnxBackend shares them: the same rule, from the same function.
    sessions = stream_sessions(model.SerializeToString(), layout.threads, layout.streams)
    feed = {"a": rng.integers(0, 256, (rows, inner), dtype=np.uint8)}
    for session in {id(session): session for session in sessions}.values():
        session.run(None, feed)
    began = time.perf_counter()
    sessions[0].run(None, feed)
    repeats = max(MIN_REPEATS, math.ceil(SHAPE_SECONDS / (time.perf_counter() - began)))

    def stream_loop(stream: int) -> None:
        for _ in range(repeats):
            sessions[stream].run(None, feed)

    timing = run_streams(layout.streams, stream_loop)
    return 2 * rows * inner * columns * repeats * layout.streams / timing.seconds / 1e9
