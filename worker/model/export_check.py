"""The check every export ends with: the prepared ONNX files against the model they came from.

A few sample question/context pairs are tokenized with the prepared tokenizer.json, run through
each prepared ONNX file and through the source (the PyTorch model, or the ONNX file a Hub
repository shipped), and the largest start/end logit difference over real tokens is recorded in
the manifest. An export above the tolerance fails instead of leaving a model that answers
differently from its source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import ExportCheckFailed
from .manifest import LOGIT_OUTPUTS

Logits = tuple[np.ndarray, np.ndarray]
LogitSource = Callable[[Mapping[str, np.ndarray]], Logits]

# fp32 runs the same arithmetic as its source up to operator order: PyTorch and ONNX Runtime
# agree to about 1e-5 on the test models, so 1e-3 leaves room without hiding a wrong graph.
FP32_TOLERANCE = 1e-3
# int8 rounds every weight matrix: its logits move by a share of their spread, not by rounding
# noise. A difference of half a standard deviation of the source's logits still ranks spans
# as fp32 does (the export tests find a correlation above 0.98); a broken quantization is far
# beyond it.
INT8_RELATIVE_TOLERANCE = 0.5

SAMPLE_PAIRS = (
    ("Who won two Nobel Prizes?", "Marie Curie won two Nobel Prizes, in physics and chemistry."),
    ("Where does the river flow?", "The river Nile flows north through Egypt into the sea."),
    ("When?", "The treaty was signed in Vienna on 9 June 1815 after long negotiations. " * 6),
    ("Was ist das?", "Die Straße in München ist über fünf Kilometer lang; 東京は日本の首都です。"),
)
SAMPLE_TOKENS = 128


def sample_inputs(
    tokenizer_path: Path, input_names: Sequence[str], pad_token_id: int, max_length: int
) -> dict[str, np.ndarray]:
    """SAMPLE_PAIRS tokenized by the prepared tokenizer, padded into one batch."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(min(max_length, SAMPLE_TOKENS))
    encodings = tokenizer.encode_batch(list(SAMPLE_PAIRS))
    longest = max(len(encoding.ids) for encoding in encodings)
    arrays = {
        "input_ids": np.full((len(encodings), longest), pad_token_id, dtype=np.int64),
        "attention_mask": np.zeros((len(encodings), longest), dtype=np.int64),
        "token_type_ids": np.zeros((len(encodings), longest), dtype=np.int64),
    }
    for row, encoding in enumerate(encodings):
        size = len(encoding.ids)
        arrays["input_ids"][row, :size] = encoding.ids
        arrays["attention_mask"][row, :size] = 1
        arrays["token_type_ids"][row, :size] = encoding.type_ids
    return {name: arrays[name] for name in input_names}


def onnx_logits(path: Path) -> LogitSource:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(inputs: Mapping[str, np.ndarray]) -> Logits:
        start, end = session.run(list(LOGIT_OUTPUTS), dict(inputs))
        return np.asarray(start, dtype=np.float32), np.asarray(end, dtype=np.float32)

    return run


def check_export(
    folder: Path,
    onnx_files: Mapping[str, str],
    inputs: Mapping[str, np.ndarray],
    source: LogitSource,
    source_name: str,
) -> dict[str, object]:
    """Compares each prepared ONNX file with `source`; returns what the manifest records."""
    real = inputs["attention_mask"].astype(bool)
    expected = source(inputs)
    spread = float(np.concatenate([logits[real] for logits in expected]).std())
    differences: dict[str, float] = {}
    tolerances: dict[str, float] = {}
    for precision, name in onnx_files.items():
        actual = onnx_logits(folder / name)(inputs)
        differences[precision] = max(
            float(np.abs(got[real] - want[real]).max())
            for got, want in zip(actual, expected, strict=True)
        )
        tolerances[precision] = (
            FP32_TOLERANCE if precision == "fp32" else INT8_RELATIVE_TOLERANCE * spread
        )
        if not differences[precision] <= tolerances[precision]:
            raise ExportCheckFailed(
                f"the prepared {precision} model ({name}) gives start/end logits up to "
                f"{differences[precision]:.3g} away from the {source_name} on sample inputs, "
                f"above the tolerance of {tolerances[precision]:.3g}; the export is not "
                "trustworthy and was not written"
            )
    return {
        "compared_with": source_name,
        "samples": int(real.shape[0]),
        "max_logit_difference": differences,
        "tolerance": tolerances,
    }
