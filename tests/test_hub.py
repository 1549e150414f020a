"""Hub ids for export, answer and demo, tested offline against a Hub cache the test lays out.

The cache has huggingface_hub's layout (`models--ORG--NAME/snapshots/COMMIT/...` and
`refs/main`), filled with the Hub-style ONNX folders of tests/support/hub_layouts.py; every
command runs with HF_HUB_OFFLINE=1 and without torch (tests/support/without_torch.py).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.hub_layouts import hub_onnx_layout
from tests.support.without_torch import run_without_torch
from worker.model.cache import DEFAULT_MODEL
from worker.model.hub import files_to_download, looks_like_hub_id
from worker.model.manifest import MANIFEST_NAME, Manifest

MAIN_COMMIT = "1" * 40
OTHER_COMMIT = "2" * 40


def add_snapshot(cache: Path, repo_id: str, commit: str, files: Path, ref: str | None) -> None:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(files, repo / "snapshots" / commit)
    if ref is not None:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit, encoding="utf-8")


@pytest.fixture(scope="module")
def hub_cache(
    checkpoint_factory: Callable[[str], Path],
    export_factory: Callable[[str], Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """example-org/tiny-qa: MobileBERT, root layout, at main; RoBERTa, onnx/ layout, at another
    commit. The demo's default repository id holds the MobileBERT folder too."""
    root = tmp_path_factory.mktemp("hub")
    layouts = {}
    for kind, layout in (("mobilebert", "root"), ("roberta", "onnx")):
        onnx_file = export_factory(kind) / "model.onnx"
        layouts[kind] = hub_onnx_layout(
            checkpoint_factory(kind), onnx_file, root / "layouts" / kind, layout
        )
    cache = root / "cache"
    add_snapshot(cache, "example-org/tiny-qa", MAIN_COMMIT, layouts["mobilebert"], "main")
    add_snapshot(cache, "example-org/tiny-qa", OTHER_COMMIT, layouts["roberta"], None)
    add_snapshot(cache, DEFAULT_MODEL, MAIN_COMMIT, layouts["mobilebert"], "main")
    return cache


def offline_env(hub_cache: Path, model_cache: Path) -> dict[str, str]:
    return {"HF_HUB_CACHE": str(hub_cache), "QA_MODEL_CACHE": str(model_cache)}


def test_export_takes_a_hub_id_from_the_cache(hub_cache: Path, tmp_path: Path) -> None:
    env = offline_env(hub_cache, tmp_path / "models")
    done = run_without_torch(
        "export", "--model", "example-org/tiny-qa", "--out", str(tmp_path / "main"), env=env
    )
    assert done.returncode == 0, done.stderr
    manifest = Manifest.read(tmp_path / "main")
    assert (manifest.source, manifest.model_type) == ("example-org/tiny-qa", "mobilebert")

    pinned = tmp_path / "pinned"
    done = run_without_torch(
        "export",
        "--model",
        "example-org/tiny-qa",
        "--revision",
        OTHER_COMMIT,
        "--out",
        str(pinned),
        env=env,
    )
    assert done.returncode == 0, done.stderr
    manifest = Manifest.read(pinned)
    assert (manifest.source, manifest.model_type) == (
        f"example-org/tiny-qa@{OTHER_COMMIT}",
        "roberta",
    )


def test_answer_prepares_a_hub_id_once_and_reuses_it(hub_cache: Path, tmp_path: Path) -> None:
    env = offline_env(hub_cache, tmp_path / "models")
    question = ("--question", "Who won?", "--context", "Marie Curie won two Nobel Prizes.")
    first = run_without_torch("answer", "--model", "example-org/tiny-qa", *question, env=env)
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "models" / "example-org--tiny-qa" / "main"
    assert f"preparing example-org/tiny-qa (int8) into {folder}" in first.stderr
    manifest = Manifest.read(folder)
    assert manifest.default_precision == "int8"
    written = (folder / MANIFEST_NAME).stat().st_mtime_ns

    second = run_without_torch("answer", "--model", "example-org/tiny-qa", *question, env=env)
    assert second.returncode == 0, second.stderr
    assert "preparing" not in second.stderr
    assert (folder / MANIFEST_NAME).stat().st_mtime_ns == written
    assert json.loads(second.stdout) == json.loads(first.stdout)


def test_a_hub_id_missing_from_an_offline_cache_says_how_to_pass_a_folder(
    hub_cache: Path, tmp_path: Path
) -> None:
    env = offline_env(hub_cache, tmp_path / "models")
    for command in (
        ["answer", "--question", "Who?", "--context", "Nobody."],
        ["export", "--out", str(tmp_path / "out")],
    ):
        done = run_without_torch(*command, "--model", "example-org/not-cached", env=env)
        assert done.returncode == 2
        message = done.stderr
        assert "downloading 'example-org/not-cached' from the Hugging Face Hub failed" in message
        assert "HF_HUB_OFFLINE is set and the Hub cache has no copy" in message
        assert "huggingface-cli download example-org/not-cached --local-dir DIR" in message
        assert "pass FOLDER as --model" in message
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "models" / "example-org--not-cached").exists()


@pytest.mark.broker
def test_demo_prepares_the_default_model_once_and_takes_hub_ids(
    hub_cache: Path, tmp_path: Path
) -> None:
    env = offline_env(hub_cache, tmp_path / "models")
    folder = tmp_path / "models" / DEFAULT_MODEL.replace("/", "--") / "main"
    runs = []
    for _ in range(2):
        done = run_without_torch("demo", "--count", "5", env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"no --model given: using the Hub model {DEFAULT_MODEL}" in done.stderr
        answers = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(answers) == 5
        assert all("answer" in answer for answer in answers)
        runs.append(done.stderr)
    assert f"preparing {DEFAULT_MODEL} (int8) into {folder}" in runs[0]
    assert "preparing" not in runs[1]
    assert Manifest.read(folder).source == DEFAULT_MODEL

    # And any Hub id given with --model, from the same offline cache.
    done = run_without_torch("demo", "--model", "example-org/tiny-qa", "--count", "3", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "preparing example-org/tiny-qa (int8)" in done.stderr
    assert len(done.stdout.splitlines()) == 3


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("csarron/mobilebert-uncased-squad-v2", True),
        ("bert-base-uncased", True),
        ("./models/mobilebert", False),
        ("/models/model", False),
        ("~/models", False),
        ("a/b/c", False),
        ("org/..", False),
        ("", False),
    ],
)
def test_what_counts_as_a_hub_id(source: str, expected: bool) -> None:
    assert looks_like_hub_id(source) is expected


def test_only_one_copy_of_the_model_is_downloaded() -> None:
    configs = ["config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]
    # csarron/mobilebert-uncased-squad-v2 ships the model four times; the ONNX one needs no torch.
    root_onnx = [*configs, "model.onnx", "pytorch_model.bin", "tf_model.h5", "README.md"]
    assert files_to_download(root_onnx, allow_pickle=True) == [*configs, "model.onnx"]
    # Optimum: onnx/ holds fp32 and quantized variants beside the safetensors weights.
    optimum = [
        *configs,
        "model.safetensors",
        "onnx/model.onnx",
        "onnx/model.onnx_data",
        "onnx/model_quantized.onnx",
        "onnx/model_fp16.onnx",
    ]
    assert files_to_download(optimum, allow_pickle=False) == [
        *configs,
        "onnx/model.onnx",
        "onnx/model.onnx_data",
    ]
    weights = [*configs, "model.safetensors", "pytorch_model.bin", "training_args.bin"]
    assert files_to_download(weights, allow_pickle=True) == [*configs, "model.safetensors"]
    pickled = [*configs, "pytorch_model.bin", "training_args.bin"]
    assert files_to_download(pickled, allow_pickle=False) == configs
    assert files_to_download(pickled, allow_pickle=True) == [*configs, "pytorch_model.bin"]
