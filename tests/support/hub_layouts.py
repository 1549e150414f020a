"""Checkpoint folders laid out as Hub repositories that ship ONNX models and no tokenizer.json.

`root`: `model.onnx` at the root beside `vocab.txt`, a `tokenizer_config.json` with
`do_lower_case` and `special_tokens_map.json` (as csarron/mobilebert-uncased-squad-v2).
`onnx`: `onnx/model.onnx` beside `vocab.json` and `merges.txt` (as Optimum exports of RoBERTa).
The vocabulary files are written from a checkpoint's tokenizer.json, so transformers, converting
them, gets back the tokenizer the checkpoint was built with.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

# BertTokenizer's own special tokens, written out as a Hub repository's special_tokens_map.json.
from worker.model.tokenizer_build import WORDPIECE_SPECIALS


def write_vocabulary_files(
    tokenizer_json: Path, folder: Path, tokenizer_config: dict[str, Any]
) -> None:
    """vocab.txt (WordPiece) or vocab.json + merges.txt (BPE), plus the tokenizer's configs."""
    state = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = state["model"]
    folder.mkdir(parents=True, exist_ok=True)
    if model["type"] == "WordPiece":
        by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
        (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in by_id), "utf-8")
        (folder / "special_tokens_map.json").write_text(json.dumps(WORDPIECE_SPECIALS), "utf-8")
    elif model["type"] == "BPE":
        (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), "utf-8")
        merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]
        (folder / "merges.txt").write_text(
            "#version: 0.2\n" + "".join(f"{merge}\n" for merge in merges), "utf-8"
        )
    else:
        raise ValueError(f"no vocabulary files for a {model['type']} tokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), "utf-8")


def tokenizer_config_for(checkpoint: Path) -> dict[str, Any]:
    model_type = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))["model_type"]
    config: dict[str, Any] = {"model_max_length": 512}
    if model_type != "roberta":
        config["do_lower_case"] = True
    return config


def source_checkpoint(checkpoint: Path, folder: Path) -> Path:
    """The checkpoint with its tokenizer as vocabulary files only: what the reference loads."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint / "config.json", folder / "config.json")
    shutil.copyfile(checkpoint / "model.safetensors", folder / "model.safetensors")
    write_vocabulary_files(checkpoint / "tokenizer.json", folder, tokenizer_config_for(checkpoint))
    return folder


def hub_onnx_layout(checkpoint: Path, onnx_file: Path, folder: Path, layout: str) -> Path:
    """A repository with the ONNX model in `layout` ('root' or 'onnx'), no weights."""
    location = {"root": "model.onnx", "onnx": "onnx/model.onnx"}[layout]
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_file, folder / location)
    shutil.copyfile(checkpoint / "config.json", folder / "config.json")
    write_vocabulary_files(checkpoint / "tokenizer.json", folder, tokenizer_config_for(checkpoint))
    return folder


def with_renamed_outputs(onnx_file: Path, target: Path) -> Path:
    """The ONNX model with its logits renamed: a graph the interface check refuses."""
    import onnx

    model = onnx.load(str(onnx_file))
    renamed = {"start_logits": "logits_start", "end_logits": "logits_end"}
    for value in model.graph.output:
        value.name = renamed.get(value.name, value.name)
    for node in model.graph.node:
        node.output[:] = [renamed.get(name, name) for name in node.output]
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


def hub_wrong_onnx_layout(
    checkpoint: Path, onnx_file: Path, folder: Path, with_weights: bool
) -> Path:
    """A repository whose root model.onnx fails the interface check, with or without its
    (correct) model.safetensors beside it."""
    source_checkpoint(checkpoint, folder)
    if not with_weights:
        (folder / "model.safetensors").unlink()
    with_renamed_outputs(onnx_file, folder / "model.onnx")
    return folder
