"""`qa-worker export` from a folder that ships an ONNX QA model, with torch and transformers absent.

The Hub-style folders are made with the export extra (the test's own tool: torch exports the
ONNX file, tests/support/hub_layouts.py lays the folder out); the preparation itself then runs in
a child interpreter where torch and transformers cannot be imported (tests/support/without_torch).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from parity.cases import build_cases, engine_answers
from tests.support.hub_layouts import hub_onnx_layout, source_checkpoint
from tests.support.parity import assert_answers_match
from tests.support.without_torch import run_without_torch
from worker.errors import ExportError
from worker.model.export import export_model
from worker.model.manifest import Manifest, sha256_file

# Which test checkpoint goes into which Hub layout: BERT-style vocab.txt at the root, RoBERTa's
# vocab.json and merges.txt beside onnx/model.onnx.
LAYOUTS = {"mobilebert": "root", "roberta": "onnx"}


@pytest.fixture(scope="module")
def hub_folders(
    checkpoint_factory: Callable[[str], Path],
    export_factory: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, Path]]:
    """kind -> (Hub-style ONNX folder, the same checkpoint with weights for the reference)."""
    root = tmp_path_factory.mktemp("hub-layouts")
    folders = {}
    for kind, layout in LAYOUTS.items():
        checkpoint = checkpoint_factory(kind)
        onnx_file = export_factory(kind) / "model.onnx"
        folders[kind] = (
            hub_onnx_layout(checkpoint, onnx_file, root / f"{kind}-{layout}", layout),
            source_checkpoint(checkpoint, root / f"{kind}-source"),
        )
    return folders


@pytest.fixture(scope="module")
def prepared(
    hub_folders: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prepared")
    folders = {}
    for kind, (hub, _) in hub_folders.items():
        out = root / kind
        done = run_without_torch(
            "export", "--model", str(hub), "--out", str(out), "--quantize", "int8"
        )
        assert done.returncode == 0, done.stderr
        folders[kind] = out
    return folders


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_prepared_folder_copies_the_onnx_model_and_checks_it(
    kind: str, hub_folders: dict[str, tuple[Path, Path]], prepared: dict[str, Path]
) -> None:
    hub, _ = hub_folders[kind]
    folder = prepared[kind]
    manifest = Manifest.read(folder)
    location = "model.onnx" if LAYOUTS[kind] == "root" else "onnx/model.onnx"
    assert not (hub / "tokenizer.json").exists()
    assert manifest.model_type == kind
    assert manifest.source == str(hub)
    assert manifest.onnx_files == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert manifest.default_precision == "int8"
    assert (folder / "model.onnx").read_bytes() == (hub / location).read_bytes()
    graph_inputs = tuple(value.name for value in onnx.load(str(hub / location)).graph.input)
    assert manifest.input_names == graph_inputs
    assert manifest.max_length == 512
    assert "torch" not in manifest.versions
    assert set(manifest.checksums) == {"model.onnx", "model.int8.onnx", "tokenizer.json"}
    for name, checksum in manifest.checksums.items():
        assert sha256_file(folder / name) == checksum
    check = manifest.check
    assert check["compared_with"] == "source ONNX model"
    differences, tolerances = check["max_logit_difference"], check["tolerance"]
    assert differences["fp32"] == 0.0  # type: ignore[index]
    assert 0.0 < differences["int8"] <= tolerances["int8"]  # type: ignore[index,operator]


@pytest.mark.reference
@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_answers_equal_the_reference_on_the_source_checkpoint(
    kind: str, hub_folders: dict[str, tuple[Path, Path]], prepared: dict[str, Path]
) -> None:
    from parity.reference import run_reference

    _, source = hub_folders[kind]
    cases = build_cases(seed=sum(map(ord, kind)) + 15)
    expected = run_reference(source, cases)
    actual = engine_answers(prepared[kind], cases)
    assert_answers_match(cases, expected, actual)


def qa_graph(
    path: Path,
    inputs: tuple[str, ...] = ("input_ids", "attention_mask"),
    outputs: tuple[str, ...] = ("start_logits", "end_logits"),
    input_type: int = TensorProto.INT64,
    sequence: str | int = "sequence",
) -> Path:
    """A minimal graph of the QA shape: each output is input_ids cast to float."""
    nodes = [helper.make_node("Cast", [inputs[0]], ["as_float"], to=TensorProto.FLOAT)]
    nodes += [helper.make_node("Identity", ["as_float"], [name]) for name in outputs]
    graph = helper.make_graph(
        nodes,
        "qa",
        [helper.make_tensor_value_info(name, input_type, ["batch", sequence]) for name in inputs],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", sequence])
            for name in outputs
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


@pytest.fixture
def graph_folder(tmp_path: Path, hub_folders: dict[str, tuple[Path, Path]]) -> Path:
    """The root-layout MobileBERT folder, its ONNX model to be replaced by a test's own graph."""
    hub, _ = hub_folders["mobilebert"]
    folder = tmp_path / "repo"
    folder.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_bytes((hub / name).read_bytes())
    return folder


@pytest.mark.parametrize(
    ("graph", "complaint"),
    [
        (
            {"outputs": ("logits",)},
            "no outputs ['start_logits', 'end_logits'] (its outputs: ['logits'])",
        ),
        ({"inputs": ("input_ids",)}, "no inputs ['attention_mask'] (its inputs: ['input_ids'])"),
        (
            {"inputs": ("input_ids", "attention_mask", "position_ids")},
            "inputs ['position_ids'] that the engine does not provide",
        ),
        (
            {"input_type": TensorProto.INT32},
            "input input_ids of type tensor(int32), not tensor(int64)",
        ),
        ({"sequence": 384}, "input input_ids of shape ['batch', 384], not (batch, sequence)"),
    ],
)
def test_an_onnx_model_of_another_shape_is_refused_with_what_differs(
    graph: dict[str, object], complaint: str, graph_folder: Path, tmp_path: Path
) -> None:
    qa_graph(graph_folder / "model.onnx", **graph)  # type: ignore[arg-type]
    with pytest.raises(ExportError) as caught:
        export_model(str(graph_folder), tmp_path / "out")
    message = str(caught.value)
    assert "is not an extractive QA model the worker can run" in message
    assert complaint in message
    # The folder has no weights, so re-exporting is no fix to offer.
    assert "ships no safetensors weights to export instead" in message
    assert "qa-worker export" not in message
    assert not (tmp_path / "out").exists()


def test_a_graph_of_the_right_shape_is_prepared(graph_folder: Path, tmp_path: Path) -> None:
    # The positive control for the refusals above: the same minimal graph, correctly named.
    qa_graph(graph_folder / "model.onnx")
    manifest = export_model(str(graph_folder), tmp_path / "out")
    assert manifest.input_names == ("input_ids", "attention_mask")
    assert manifest.check["max_logit_difference"] == {"fp32": 0.0}


def test_a_folder_without_onnx_or_weights_says_what_it_needs(
    graph_folder: Path, tmp_path: Path
) -> None:
    with pytest.raises(ExportError) as caught:
        export_model(str(graph_folder), tmp_path / "out")
    assert "model.onnx" in str(caught.value)
    assert "safetensors" in str(caught.value)


def test_weights_without_torch_name_the_export_extra(
    checkpoint_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    done = run_without_torch(
        "export", "--model", str(checkpoint_factory("bert")), "--out", str(tmp_path / "out")
    )
    assert done.returncode == 2
    # The runtime install lacks onnxscript as well as torch; the message names the extra.
    assert "needs the export extra (torch, transformers, onnxscript" in done.stderr
    assert "pip install 'kafka-qa-worker[export]'" in done.stderr
    assert "exporting needs onnxscript" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_export_beyond_the_tolerance_fails_and_writes_nothing(
    checkpoint_factory: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.model.export_check

    # torch and ONNX Runtime differ in the last bits; no tolerance at all must then fail.
    monkeypatch.setattr(worker.model.export_check, "FP32_TOLERANCE", 0.0)
    with pytest.raises(ExportError) as caught:
        export_model(str(checkpoint_factory("bert")), tmp_path / "out")
    message = str(caught.value)
    assert "fp32 model (model.onnx) gives start/end logits up to" in message
    assert "from the PyTorch model" in message
    assert not (tmp_path / "out").exists()


def test_the_export_records_its_check(export_factory: Callable[[str], Path]) -> None:
    manifest = Manifest.read(export_factory("bert"))
    check = manifest.check
    assert check["compared_with"] == "PyTorch model"
    differences = check["max_logit_difference"]
    assert set(differences) == {"fp32", "int8"}  # type: ignore[arg-type]
    assert 0 <= differences["fp32"] <= check["tolerance"]["fp32"]  # type: ignore[index]
    assert np.isfinite(differences["int8"])  # type: ignore[index]


def test_weights_in_a_side_file_travel_with_the_model(
    hub_folders: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    from worker.qa import QAEngine

    hub, _ = hub_folders["mobilebert"]
    repo = tmp_path / "repo"
    shutil.copytree(hub, repo)
    # As Optimum stores large models: every weight in model.onnx_data beside the graph.
    model = onnx.load(str(hub / "model.onnx"))
    onnx.save(
        model,
        str(repo / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx_data",
        size_threshold=1024,
    )
    assert (repo / "model.onnx").stat().st_size < (repo / "model.onnx_data").stat().st_size

    out = tmp_path / "out"
    manifest = export_model(str(repo), out, quantize="int8")
    assert "model.onnx_data" in manifest.checksums
    assert manifest.files_to_load("fp32") == ["tokenizer.json", "model.onnx", "model.onnx_data"]
    assert manifest.check["max_logit_difference"]["fp32"] == 0.0  # type: ignore[index]
    context = "Marie Curie won two Nobel Prizes, in physics and in chemistry."
    for precision in ("fp32", "int8"):
        result = QAEngine.load(out, precision=precision).answer("Who won?", context)
        assert result.answer == context[result.start : result.end]
