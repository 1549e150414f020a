"""A prepared model folder is checked against its manifest's checksums whenever a model loads."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from worker.cli import main
from worker.errors import ModelFolderError
from worker.model.manifest import Manifest, export_command
from worker.qa import QAEngine

CONTEXT = "Marie Curie won two Nobel Prizes, in physics and in chemistry."


@pytest.fixture
def model_folder(tmp_path: Path, export_factory: Callable[[str], Path]) -> Path:
    """A private copy of an fp32 + int8 export, free to be damaged."""
    return Path(shutil.copytree(export_factory("distilbert"), tmp_path / "model"))


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    # The middle of the file lies in the weights: the graph still parses, only the checksum tells.
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def answer(folder: Path, *flags: str) -> int:
    return main(
        ["answer", "--model", str(folder), "--question", "Who?", "--context", CONTEXT, *flags]
    )


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("model.onnx", ("--precision", "fp32")),
        ("model.int8.onnx", ()),
        ("tokenizer.json", ()),
    ],
)
def test_answer_refuses_a_changed_file_and_names_it(
    model_folder: Path,
    name: str,
    flags: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert answer(model_folder, *flags) == 0
    capsys.readouterr()

    flip_one_byte(model_folder / name)
    assert answer(model_folder, *flags) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{model_folder / name} does not match its checksum in manifest.json" in captured.err
    # The fix is the export that made this folder: from its recorded source, into this folder.
    source = Manifest.read(model_folder).source
    assert f"`qa-worker export --model {source} --out {model_folder} --quantize int8`" in (
        captured.err
    )


def test_only_the_files_a_precision_loads_are_checked(model_folder: Path) -> None:
    flip_one_byte(model_folder / "model.onnx")
    # The int8 engine never reads model.onnx, so it loads and answers.
    result = QAEngine.load(model_folder, precision="int8").answer("Who?", CONTEXT)
    assert result.answer == CONTEXT[result.start : result.end]
    with pytest.raises(ModelFolderError, match=r"model\.onnx does not match"):
        QAEngine.load(model_folder, precision="fp32")


def test_a_missing_file_or_checksum_is_an_error(model_folder: Path) -> None:
    (model_folder / "model.int8.onnx").unlink()
    with pytest.raises(ModelFolderError, match=r"model\.int8\.onnx is listed in the manifest"):
        QAEngine.load(model_folder, precision="int8")

    manifest_path = model_folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    del manifest["checksums"]["tokenizer.json"]
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ModelFolderError, match=r"lists no checksum for tokenizer\.json"):
        QAEngine.load(model_folder, precision="fp32")


def test_the_fix_names_the_source_and_commit_the_folder_was_prepared_from(
    model_folder: Path,
) -> None:
    commit = "a" * 40
    manifest = dataclasses.replace(Manifest.read(model_folder), source=f"org/name@{commit}")
    assert export_command(manifest, model_folder) == (
        f"`qa-worker export --model org/name --revision {commit} --out {model_folder} "
        "--quantize int8`"
    )
    fp32 = dataclasses.replace(manifest, source="./checkpoint", default_precision="fp32")
    assert export_command(fp32, model_folder) == (
        f"`qa-worker export --model ./checkpoint --out {model_folder}`"
    )
