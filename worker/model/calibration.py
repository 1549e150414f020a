"""Static int8: an ONNX file whose activation scales were fixed beforehand on real windows.

Dynamic int8 (the default) measures each activation's range while it runs, a
DynamicQuantizeLinear before every weight product. Static int8 measures the ranges once, over
calibration windows that the model folder's own tokenizer makes of a question file exactly as the
worker does, and writes them into a QDQ graph; ONNX Runtime's CPU provider fuses the
QuantizeLinear/DequantizeLinear pairs around each weight product into an int8 kernel. Ranges
from calibration fit traffic like the calibration file, so this is an opt-in precision
(`int8-static`) beside dynamic int8, never the default. Nor is it faster on the CPU provider so
far: the products become QLinearMatMul with standalone QuantizeLinear and DequantizeLinear
passes around them and the bias Add left unfused, where dynamic int8's DynamicQuantizeMatMul
quantizes, multiplies and adds the bias in one kernel (benchmarks/ort_experiments.py, variants
static_int8*).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputFileError
from ..qa.engine import pad_windows
from ..qa.windows import EncodedQuestion, Window, WindowTokenizer
from ..squad import read_questions
from .log_filter import dropping_logs
from .manifest import TokenizerInfo

# Weight products only, as for dynamic int8: the attention products multiply activations by
# activations and stay in float. QUInt8 activations with QInt8 weights is the pairing the x86
# CPU provider has its fastest int8 kernels for (u8s8); weights symmetric, activations not, so
# post-ReLU and NoNorm outputs keep their full positive range.
STATIC_SETTINGS: dict[str, Any] = {
    "method": "static",
    "format": "QDQ",
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "per_channel": False,
    "calibration_method": "MinMax",
    "op_types": ["MatMul", "Gemm"],
}
# Enough windows for stable min/max ranges at a few seconds of calibration; more add little, as
# the ranges of a random sample of contexts settle quickly.
CALIBRATION_WINDOWS = 64
ENCODE_CHUNK = 64


def calibration_windows(
    path: Path, tokenizer_path: Path, info: TokenizerInfo, limit: int = CALIBRATION_WINDOWS
) -> list[Window]:
    """The first `limit` windows the worker makes of the questions in `path` (SQuAD or JSONL)."""
    try:
        records = read_questions(path)
    except InputFileError as error:
        raise ConfigError(f"cannot calibrate on {path}: {error}") from error
    tokenizer = WindowTokenizer(tokenizer_path, info)
    windows: list[Window] = []
    # In chunks: a whole SQuAD file would be tokenized for the few windows taken from its top.
    for begin in range(0, len(records), ENCODE_CHUNK):
        if len(windows) >= limit:
            break
        chunk = records[begin : begin + ENCODE_CHUNK]
        for item in tokenizer.encode_many([(record.question, record.context) for record in chunk]):
            if isinstance(item, EncodedQuestion):
                windows.extend(item.windows)
    if not windows:
        raise ConfigError(
            f"calibration file {path} holds no question the model can take "
            f"({len(records)} read); static int8 needs real questions and contexts to calibrate on"
        )
    return windows[:limit]


class WindowReader:
    """onnxruntime's CalibrationDataReader over windows, one unpadded window per batch.

    Unpadded so that padding positions, which the worker masks out of every answer, do not
    widen the ranges the real tokens are quantized with.
    """

    def __init__(self, windows: list[Window], input_names: tuple[str, ...], pad_id: int) -> None:
        self._feeds = (
            {name: array for name, array in pad_windows([window], pad_id).items()}
            for window in windows
        )
        self._input_names = input_names

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._feeds, None)
        return None if feed is None else {name: feed[name] for name in self._input_names}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.get_next, None)


def nodes_to_quantize(model: Any, op_types: list[str]) -> list[str]:
    """The nodes of `op_types` to quantize; MatMul and Gemm only where they multiply by a weight.

    Weight products are the int8 products dynamic int8 makes too; other listed types (Add,
    Relu, ...) are quantized wherever they are, so values can stay int8 between the products.
    """
    weights = {tensor.name for tensor in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in op_types
        and (node.op_type not in ("MatMul", "Gemm") or node.input[1] in weights)
    ]


def quantize_static_int8(
    source: Path,
    target: Path,
    windows: list[Window],
    input_names: tuple[str, ...],
    pad_id: int,
    external: bool = False,
    **overrides: Any,
) -> None:
    """Writes `source` calibrated on `windows` as a QDQ int8 file, with STATIC_SETTINGS."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    settings = {**STATIC_SETTINGS, **overrides}
    model = onnx.load(str(source))
    # The pre-processing advice of dynamic int8 (see worker.model.export.quantize_int8), given twice
    # in two wordings by the static quantizer.
    advice = (
        dropping_logs("", "Please consider to run pre-processing before quantization"),
        dropping_logs("", "Please consider pre-processing before quantization"),
    )
    with advice[0], advice[1]:
        quantize_static(
            model,
            target,
            WindowReader(windows, input_names, pad_id),
            quant_format=getattr(QuantFormat, settings["format"]),
            activation_type=getattr(QuantType, settings["activation_type"]),
            weight_type=getattr(QuantType, settings["weight_type"]),
            per_channel=settings["per_channel"],
            calibrate_method=getattr(CalibrationMethod, settings["calibration_method"]),
            op_types_to_quantize=settings["op_types"],
            nodes_to_quantize=nodes_to_quantize(model, settings["op_types"]),
            use_external_data_format=external,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
