"""Preparing a model folder from a checkpoint that already ships an ONNX QA model, without torch.

Hub repositories keep that file at the root (`model.onnx`, e.g. csarron/mobilebert-uncased-
squad-v2) or under `onnx/` (Optimum exports). Its inputs and outputs are checked against what the
engine feeds and reads, tokenizer.json is built when the folder has none, and the file is copied
(and quantized when asked) beside a manifest, all with the runtime dependencies alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OnnxInterfaceError, OnnxSourceError, TokenizerBuildError
from .manifest import LOGIT_OUTPUTS, TOKENIZER_NAME, TokenizerInfo
from .tokenizer_build import (
    BPE_MODEL_TYPES,
    BPE_SPECIALS,
    WORDPIECE_MODEL_TYPES,
    WORDPIECE_SPECIALS,
    TokenizerConfig,
    align_with_config,
    build_tokenizer,
    tokenizer_kind,
)

ONNX_LOCATIONS = ("model.onnx", "onnx/model.onnx")
# The names ONNX exporters give a model's side file of weights; the graph refers to it by name.
EXTERNAL_DATA_SUFFIXES = ("_data", ".data")

ENGINE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
REQUIRED_INPUTS = ("input_ids", "attention_mask")


@dataclass(frozen=True)
class OnnxSource:
    """An ONNX QA model found in a checkpoint folder, with what the manifest needs about it."""

    folder: Path
    onnx_path: Path
    side_files: tuple[Path, ...]
    input_names: tuple[str, ...]
    model_type: str
    max_position_embeddings: int | None


def find_onnx(folder: Path) -> Path | None:
    for location in ONNX_LOCATIONS:
        if (folder / location).is_file():
            return folder / location
    return None


def inspect_onnx_source(folder: Path, onnx_path: Path) -> OnnxSource:
    config = _read_config(folder)
    input_names = check_interface(onnx_path)
    side_files = tuple(
        onnx_path.with_name(onnx_path.name + suffix)
        for suffix in EXTERNAL_DATA_SUFFIXES
        if onnx_path.with_name(onnx_path.name + suffix).is_file()
    )
    positions = config.get("max_position_embeddings")
    return OnnxSource(
        folder=folder,
        onnx_path=onnx_path,
        side_files=side_files,
        input_names=input_names,
        model_type=str(config["model_type"]),
        max_position_embeddings=int(positions) if positions is not None else None,
    )


def check_interface(onnx_path: Path) -> tuple[str, ...]:
    """The graph's input names, in its order, after checking them and the outputs."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise OnnxInterfaceError(
            f"ONNX Runtime cannot load {onnx_path} ({type(error).__name__}: {error})"
        ) from error
    inputs = {item.name: item for item in session.get_inputs()}
    outputs = {item.name: item for item in session.get_outputs()}
    problems = []
    unknown = [name for name in inputs if name not in ENGINE_INPUTS]
    if unknown:
        problems.append(f"inputs {unknown} that the engine does not provide")
    missing = [name for name in REQUIRED_INPUTS if name not in inputs]
    if missing:
        problems.append(f"no inputs {missing} (its inputs: {list(inputs)})")
    missing = [name for name in LOGIT_OUTPUTS if name not in outputs]
    if missing:
        problems.append(f"no outputs {missing} (its outputs: {list(outputs)})")
    for role, items, dtype in (("input", inputs, "tensor(int64)"), ("output", outputs, None)):
        for name, item in items.items():
            if name not in ENGINE_INPUTS + LOGIT_OUTPUTS:
                continue
            if dtype is not None and item.type != dtype:
                problems.append(f"{role} {name} of type {item.type}, not {dtype}")
            if dtype is None and item.type != "tensor(float)":
                problems.append(f"{role} {name} of type {item.type}, not tensor(float)")
            fixed = [dim for dim in item.shape if isinstance(dim, int)]
            if len(item.shape) != 2 or fixed:
                problems.append(
                    f"{role} {name} of shape {item.shape}, not (batch, sequence) with both "
                    "axes dynamic"
                )
    if problems:
        # The fix depends on what else the checkpoint ships; worker.model.export adds it.
        raise OnnxInterfaceError(
            f"{onnx_path} is not an extractive QA model the worker can run: it has "
            + "; ".join(problems)
            + f". The worker feeds {', '.join(ENGINE_INPUTS)} (the last only when the graph "
            f"takes it) as int64 and reads {' and '.join(LOGIT_OUTPUTS)} as float"
        )
    return tuple(inputs)


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise OnnxSourceError(
            f"{folder} has an ONNX model but no config.json, which says the model type and "
            "its longest sequence; add the checkpoint's config.json"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise OnnxSourceError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or "model_type" not in config:
        raise OnnxSourceError(f"{path} names no model_type")
    return config


def write_tokenizer(source: OnnxSource, target: Path) -> Any:
    """The folder's tokenizer.json as transformers would use it, or one built from vocab files."""
    from tokenizers import Tokenizer

    given = source.folder / TOKENIZER_NAME
    if given.is_file():
        from_file = Tokenizer.from_file(str(given))
        aligned = align_with_config(from_file, source.folder, source.model_type)
        if aligned is from_file:
            # Unchanged: the very bytes the reference reads, so nothing can drift.
            target.write_bytes(given.read_bytes())
        else:
            aligned.save(str(target))
        return aligned
    kind = tokenizer_kind(source.folder)
    allowed = WORDPIECE_MODEL_TYPES if kind == "wordpiece" else BPE_MODEL_TYPES
    if kind is not None and source.model_type not in allowed:
        raise OnnxSourceError(
            f"{source.folder} has no tokenizer.json, and tokenizer.json is built from "
            f"{kind} vocabulary files only for model types {', '.join(allowed)}, not "
            f"{source.model_type!r}; save the tokenizer.json transformers makes "
            "(`AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)`) into the folder"
        )
    try:
        tokenizer = build_tokenizer(source.folder)
    except TokenizerBuildError as error:
        raise OnnxSourceError(str(error)) from error
    tokenizer.save(str(target))
    return tokenizer


def tokenizer_info(source: OnnxSource, tokenizer: Any, max_length: int) -> TokenizerInfo:
    config = TokenizerConfig.read(source.folder)
    defaults = BPE_SPECIALS if source.model_type in BPE_MODEL_TYPES else WORDPIECE_SPECIALS
    pad, _ = config.special_token("pad_token", defaults)
    cls, _ = config.special_token("cls_token", defaults)
    pad_id = tokenizer.token_to_id(pad)
    if pad_id is None:
        raise OnnxSourceError(
            f"the padding token {pad!r} is not in the tokenizer of {source.folder}, and "
            "batching needs one; set pad_token in its tokenizer_config.json"
        )
    padding_side = str(config.get("padding_side", "right"))
    if padding_side not in ("left", "right"):
        raise OnnxSourceError(f"padding_side {padding_side!r} in tokenizer_config.json")
    return TokenizerInfo(
        padding_side=padding_side,
        cls_token_id=tokenizer.token_to_id(cls),
        pad_token_id=pad_id,
        model_max_length=max_length,
    )


def declared_max_length(folder: Path) -> int | None:
    value = TokenizerConfig.read(folder).get("model_max_length")
    return int(value) if isinstance(value, int | float) else None
