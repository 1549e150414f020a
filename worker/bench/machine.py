"""The machine's peak: float32 and int8 matrix-product rates on all cores."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from ..backends.onnx import available_cores
from ..errors import BenchError
from .clock import timed

# 2 x 2048^3 = 17 GFLOP a product: long enough to time well, short enough to repeat.
GEMM_SIZE = 2048
GEMM_REPEATS = 5


def measure_gemm(size: int = GEMM_SIZE, repeats: int = GEMM_REPEATS) -> float:
    """The best float32 matrix-product rate of numpy's BLAS on all cores, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # starts the BLAS threads
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def measure_int8_gemm(size: int = GEMM_SIZE, repeats: int = GEMM_REPEATS) -> float:
    """The best uint8 x int8 matrix-product rate of ONNX Runtime on all cores, in GOP/s.

    numpy has no fast integer product, and an int8 model runs the runtime's own integer kernels
    (MatMulInteger, as dynamic quantization writes them), so they are what its peak is.
    """
    onnx = import_onnx()
    rng = np.random.default_rng(0)
    weights = rng.integers(-128, 128, (size, size), dtype=np.int8)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
        "gemm",
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.UINT8, [size, size])],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.INT32, [size, size])],
        [onnx.numpy_helper.from_array(weights, "b")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    # The IR version of the onnx package may be newer than the runtime reads; 8 is enough.
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = available_cores()
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    feed = {"a": rng.integers(0, 256, (size, size), dtype=np.uint8)}
    session.run(None, feed)
    best = min(timed(lambda: session.run(None, feed)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def import_onnx() -> Any:
    try:
        import onnx
    except ModuleNotFoundError:
        raise BenchError(
            "measuring the int8 GEMM rate needs the onnx package, to build a one-product model: "
            "pip install 'kafka-qa-worker[bench]'"
        ) from None
    return onnx
