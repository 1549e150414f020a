"""`export_model` on small random-weight checkpoints of every supported architecture."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.support.permissions import refusal_where_permissions_hold
from worker.errors import ExportError
from worker.model.export import export_model
from worker.model.manifest import MANIFEST_NAME, Manifest, sha256_file

KINDS = ("bert", "mobilebert", "roberta", "distilbert")
LOGIT_ATOL = 1e-4

PAIRS = [
    ("Who won two Nobel Prizes?", "Marie Curie won two Nobel Prizes, in physics and chemistry."),
    ("Where?", "Le café de la gare est fermé le dimanche."),
    ("What is the capital?", "東京は日本の首都です。 The party was great 🎉 and the cake 🍰 too."),
]


def torch_logits(checkpoint: Path, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    import torch
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        output = model(**{name: torch.from_numpy(array) for name, array in inputs.items()})
    return output.start_logits.numpy(), output.end_logits.numpy()


def onnx_logits(path: Path, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    start, end = session.run(["start_logits", "end_logits"], inputs)
    return start, end


def tokenized(checkpoint: Path, names: tuple[str, ...], **kwargs: object) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    questions, contexts = zip(*PAIRS, strict=True)
    encoded = tokenizer(list(questions), list(contexts), return_tensors="np", **kwargs)
    return {name: encoded[name].astype(np.int64) for name in names}


@dataclass(frozen=True)
class Exported:
    """One architecture's checkpoint, its export folder, and the manifest read back from it."""

    kind: str
    checkpoint: Path
    folder: Path
    manifest: Manifest


@pytest.fixture(params=KINDS)
def exported(
    request: pytest.FixtureRequest,
    checkpoint_factory: Callable[[str], Path],
    export_factory: Callable[[str], Path],
) -> Exported:
    kind: str = request.param
    folder = export_factory(kind)
    return Exported(kind, checkpoint_factory(kind), folder, Manifest.read(folder))


def test_manifest_describes_the_export(exported: Exported) -> None:
    from transformers import AutoTokenizer

    kind = exported.kind
    checkpoint, folder, manifest = exported.checkpoint, exported.folder, exported.manifest
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))

    assert manifest.model_type == config["model_type"] == kind
    assert manifest.source == str(checkpoint)
    takes_type_ids = kind in ("bert", "mobilebert")
    assert ("token_type_ids" in manifest.input_names) == takes_type_ids
    assert {"input_ids", "attention_mask"} <= set(manifest.input_names)
    assert manifest.max_length == manifest.tokenizer.model_max_length == 512
    assert manifest.tokenizer.padding_side == tokenizer.padding_side == "right"
    assert manifest.tokenizer.cls_token_id == tokenizer.cls_token_id
    assert manifest.tokenizer.pad_token_id == tokenizer.pad_token_id
    assert manifest.onnx_files == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert manifest.default_precision == "int8"
    assert manifest.quantization["method"] == "dynamic"
    assert manifest.quantization["weight_type"] == "QInt8"
    assert set(manifest.versions) >= {
        "torch",
        "transformers",
        "onnx",
        "onnxruntime",
        "tokenizers",
        "kafka-qa-worker",
    }

    written = {path.name for path in folder.iterdir()} - {MANIFEST_NAME}
    assert set(manifest.checksums) == written == {"model.onnx", "model.int8.onnx", "tokenizer.json"}
    for name, checksum in manifest.checksums.items():
        assert sha256_file(folder / name) == checksum
    # The reference pipeline reads the checkpoint's own file: the worker must read the same bytes.
    assert (folder / "tokenizer.json").read_bytes() == (checkpoint / "tokenizer.json").read_bytes()


def test_onnx_graph_has_the_engine_interface(exported: Exported) -> None:
    folder, manifest = exported.folder, exported.manifest
    for precision in ("fp32", "int8"):
        model = onnx.load(str(manifest.onnx_path(folder, precision)))
        assert not any(
            tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in model.graph.initializer
        )
        inputs = {value.name: value.type.tensor_type for value in model.graph.input}
        assert tuple(inputs) == manifest.input_names
        outputs = {value.name: value.type.tensor_type for value in model.graph.output}
        assert tuple(outputs) == ("start_logits", "end_logits")
        for tensor_type, dtype in [(t, onnx.TensorProto.INT64) for t in inputs.values()] + [
            (t, onnx.TensorProto.FLOAT) for t in outputs.values()
        ]:
            assert tensor_type.elem_type == dtype
            # Both axes symbolic: any batch size and any sequence length.
            assert [dim.dim_param for dim in tensor_type.shape.dim] == ["batch", "sequence"]


def test_fp32_logits_equal_torch_logits(exported: Exported) -> None:
    checkpoint, folder, manifest = exported.checkpoint, exported.folder, exported.manifest
    # Three pairs of different lengths, padded to the longest.
    padded = tokenized(checkpoint, manifest.input_names, padding=True)
    assert (padded["attention_mask"] == 0).any()
    # One row far longer than the sample the graph was exported with.
    long = tokenized(checkpoint, manifest.input_names, padding="max_length", max_length=300)
    single = {name: array[:1] for name, array in long.items()}

    for inputs in (padded, long, single):
        expected = torch_logits(checkpoint, inputs)
        actual = onnx_logits(manifest.onnx_path(folder, "fp32"), inputs)
        for want, got in zip(expected, actual, strict=True):
            assert got.dtype == np.float32
            assert got.shape == inputs["input_ids"].shape
            np.testing.assert_allclose(got, want, atol=LOGIT_ATOL, rtol=0)


def test_int8_model_is_quantized_and_tracks_fp32(exported: Exported) -> None:
    checkpoint, folder, manifest = exported.checkpoint, exported.folder, exported.manifest
    int8_path = manifest.onnx_path(folder)
    assert int8_path.name == "model.int8.onnx"
    op_types = {node.op_type for node in onnx.load(str(int8_path)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= op_types
    assert int8_path.stat().st_size < manifest.onnx_path(folder, "fp32").stat().st_size

    inputs = tokenized(checkpoint, manifest.input_names, padding=True)
    real = inputs["attention_mask"].astype(bool)
    fp32 = onnx_logits(manifest.onnx_path(folder, "fp32"), inputs)
    int8 = onnx_logits(int8_path, inputs)
    for full, quantized in zip(fp32, int8, strict=True):
        assert quantized.shape == full.shape
        assert quantized.dtype == np.float32
        assert np.corrcoef(full[real], quantized[real])[0, 1] > 0.98


def test_engine_answers_from_an_export(export_factory: Callable[[str], Path]) -> None:
    from worker.qa import QAEngine

    context = "Marie Curie won two Nobel Prizes, in physics and in chemistry."
    for precision in ("fp32", "int8"):
        engine = QAEngine.load(export_factory("distilbert"), precision=precision)
        result = engine.answer("Who won two Nobel Prizes?", context)
        assert context[result.start : result.end] == result.answer
        assert 0 < result.score <= 1


def test_hub_download_failure_says_how_to_use_a_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # The hub client reads HF_HUB_OFFLINE once, at import; set both so nothing waits on network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ExportError) as caught:
        export_model("example-org/no-such-qa-model", tmp_path / "out")
    message = str(caught.value)
    assert message.startswith("cannot download 'example-org/no-such-qa-model'")
    assert "hf download example-org/no-such-qa-model --include" in message
    assert "qa-worker export --model DIR" in message
    assert not (tmp_path / "out").exists()


def test_pickle_weights_need_allow_pickle(
    tmp_path: Path,
    checkpoint_factory: Callable[[str], Path],
    export_factory: Callable[[str], Path],
) -> None:
    import torch
    from safetensors.torch import load_file

    source = checkpoint_factory("distilbert")
    pickled = tmp_path / "pickled"
    shutil.copytree(source, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(source / "model.safetensors"), pickled / "pytorch_model.bin")

    out = tmp_path / "out"
    with pytest.raises(ExportError, match="--allow-pickle"):
        export_model(str(pickled), out)
    assert not out.exists()

    # Over a previous int8 export: the stale int8 file must go with the old manifest.
    shutil.copytree(export_factory("distilbert"), out)
    manifest = export_model(str(pickled), out, allow_pickle=True)
    assert manifest == Manifest.read(out)
    assert manifest.onnx_files == {"fp32": "model.onnx"}
    assert manifest.default_precision == "fp32"
    assert manifest.quantization == {}
    assert sorted(path.name for path in out.iterdir()) == [
        MANIFEST_NAME,
        "model.onnx",
        "tokenizer.json",
    ]
    # The pickled weights are the same weights: same logits as the safetensors export.
    inputs = tokenized(source, manifest.input_names, padding=True)
    from_pickle = onnx_logits(out / "model.onnx", inputs)
    from_safetensors = onnx_logits(export_factory("distilbert") / "model.onnx", inputs)
    for got, want in zip(from_pickle, from_safetensors, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_refuses_a_folder_that_is_not_an_export(
    tmp_path: Path, checkpoint_factory: Callable[[str], Path]
) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(ExportError, match="not empty"):
        export_model(str(checkpoint_factory("bert")), out)
    assert [path.name for path in out.iterdir()] == ["notes.txt"]


def test_missing_source_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="does not exist"):
        export_model(str(tmp_path / "no-such-checkpoint"), tmp_path / "out")


def test_an_unreadable_weights_file_is_named_as_a_permission_error(
    tmp_path: Path, checkpoint_factory: Callable[[str], Path]
) -> None:
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(checkpoint_factory("bert"), checkpoint)
    weights = checkpoint / "model.safetensors"
    weights.chmod(0)
    line = refusal_where_permissions_hold(
        "export",
        "--model",
        str(checkpoint),
        "--out",
        str(tmp_path / "out"),
        timeout=300,
    )
    # Loading the checkpoint would say FileNotFoundError, for a file that is there.
    assert line.startswith(
        f"qa-worker export: {weights} cannot be read (PermissionError: permission denied, mode 0000"
    )
    assert "make it readable by this user" in line
    assert "FileNotFoundError" not in line
    assert not (tmp_path / "out").exists()


def test_missing_export_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, checkpoint_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    # None in sys.modules makes `import torch` raise ImportError, as if torch were not installed.
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ExportError, match=r"pip install 'kafka-qa-worker\[export\]'"):
        export_model(str(checkpoint_factory("bert")), tmp_path / "out")


def test_importing_the_exporter_does_not_import_torch() -> None:
    code = "import sys, worker.model.export; sys.exit(1 if 'torch' in sys.modules else 0)"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], env=env, check=False, timeout=60)
    assert done.returncode == 0


@pytest.mark.reference
def test_reference_pipeline_answers_from_a_built_checkpoint(
    checkpoint_factory: Callable[[str], Path],
) -> None:
    from parity.reference import run_reference

    # DistilBERT: the one architecture the parity tests do not already run through the reference.
    (question, context), *_ = PAIRS
    cases = [
        {"question": question, "context": context, "top_k": 3},
        {"question": question, "context": context, "handle_impossible_answer": True},
        {"question": "", "context": context},
    ]
    ranked, single, failed = run_reference(checkpoint_factory("distilbert"), cases)
    assert len(ranked["answers"]) == 3
    assert len(single["answers"]) == 1
    for answer in ranked["answers"] + single["answers"]:
        assert context[answer["start"] : answer["end"]] == answer["answer"]
        assert 0 <= answer["score"] <= 1
    assert failed["error"].startswith("ValueError: ")
