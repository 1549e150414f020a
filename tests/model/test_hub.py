"""Hub ids for export, answer and demo, tested offline against a Hub cache the test lays out.

The cache has huggingface_hub's layout (`models--ORG--NAME/snapshots/COMMIT/...` and
`refs/main`), filled with the Hub-style ONNX folders of tests/support/hub_layouts.py; every
command runs with HF_HUB_OFFLINE=1 and without torch (tests/support/without_torch.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.hub_layouts import hub_onnx_layout, hub_wrong_onnx_layout
from tests.support.without_torch import REPO_ROOT, run_without_torch
from tests.support.worker_process import run_qa_worker
from worker.errors import HubError, HubUnreachable
from worker.model.cache import DEFAULT_MODEL, model_folder
from worker.model.hub import (
    download_checkpoint,
    files_to_download,
    looks_like_hub_id,
)
from worker.model.manifest import MANIFEST_NAME, Manifest, sha256_file

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
    # A root model.onnx the interface check refuses, once beside right weights, once alone.
    for repo_id, with_weights in (
        ("example-org/wrong-onnx", True),
        ("example-org/onnx-only", False),
    ):
        layout = hub_wrong_onnx_layout(
            checkpoint_factory("mobilebert"),
            export_factory("mobilebert") / "model.onnx",
            root / "layouts" / repo_id.replace("/", "--"),
            with_weights,
        )
        add_snapshot(cache, repo_id, MAIN_COMMIT, layout, "main")
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
    # Without --revision too, the source names the commit main resolved to.
    assert (manifest.source, manifest.model_type) == (
        f"example-org/tiny-qa@{MAIN_COMMIT}",
        "mobilebert",
    )

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
    folder = tmp_path / "models" / "example-org--tiny-qa" / MAIN_COMMIT
    named = f"example-org/tiny-qa@{MAIN_COMMIT}"
    assert f"preparing {named} (int8) into {folder}" in first.stderr
    assert f"prepared {named} into {folder}; later runs reuse it" in first.stderr
    # Offline, the log says which commit main was taken to be.
    assert "cannot ask the Hub which commit main of example-org/tiny-qa is at" in first.stderr
    assert f"using {MAIN_COMMIT}" in first.stderr
    manifest = Manifest.read(folder)
    assert manifest.default_precision == "int8"
    assert manifest.source == named
    written = (folder / MANIFEST_NAME).stat().st_mtime_ns

    second = run_without_torch("answer", "--model", "example-org/tiny-qa", *question, env=env)
    assert second.returncode == 0, second.stderr
    assert "preparing" not in second.stderr
    assert f"using {MAIN_COMMIT}, the commit prepared last" in second.stderr
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
        assert "cannot download 'example-org/not-cached' from the Hugging Face Hub" in message
        assert "HF_HUB_OFFLINE is set and the Hub cache has no copy" in message
        assert "hf download example-org/not-cached --include '*.json'" in message
        assert "--local-dir DIR" in message and "pass --model FOLDER" in message
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "models" / "example-org--not-cached").exists()


@pytest.mark.broker
def test_demo_prepares_the_default_model_once_and_takes_hub_ids(
    hub_cache: Path, tmp_path: Path
) -> None:
    env = offline_env(hub_cache, tmp_path / "models")
    folder = tmp_path / "models" / DEFAULT_MODEL.replace("/", "--") / MAIN_COMMIT
    runs = []
    for _ in range(2):
        done = run_without_torch("demo", "--count", "5", env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"no --model given: using the Hub model {DEFAULT_MODEL}" in done.stderr
        answers = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(answers) == 5
        assert all("answer" in answer for answer in answers)
        runs.append(done.stderr)
    assert f"preparing {DEFAULT_MODEL}@{MAIN_COMMIT} (int8) into {folder}" in runs[0]
    assert "preparing" not in runs[1]
    assert Manifest.read(folder).source == f"{DEFAULT_MODEL}@{MAIN_COMMIT}"

    # And any Hub id given with --model, from the same offline cache.
    done = run_without_torch("demo", "--model", "example-org/tiny-qa", "--count", "3", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"preparing example-org/tiny-qa@{MAIN_COMMIT} (int8)" in done.stderr
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


def run_with_torch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environ.update(HF_HUB_OFFLINE="1", **env)
    return run_qa_worker(*args, env=environ, cwd=REPO_ROOT, timeout=600)


QUESTION = ("--question", "Who won?", "--context", "Marie Curie won two Nobel Prizes.")


def test_a_refused_onnx_model_is_prepared_from_the_weights_with_the_export_extra(
    hub_cache: Path, tmp_path: Path
) -> None:
    env = offline_env(hub_cache, tmp_path / "models")
    done = run_with_torch("answer", "--model", "example-org/wrong-onnx", *QUESTION, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    named = f"example-org/wrong-onnx@{MAIN_COMMIT}"
    fallback = [line for line in done.stderr.splitlines() if "from its weights" in line]
    assert len(fallback) == 1, done.stderr
    assert "no outputs ['start_logits', 'end_logits'] (its outputs: ['logits_start'" in fallback[0]
    assert fallback[0].endswith(f"preparing {named} from its weights (model.safetensors) instead")
    assert "later runs reuse it" in done.stderr
    manifest = Manifest.read(tmp_path / "models" / "example-org--wrong-onnx" / MAIN_COMMIT)
    assert manifest.source == named
    assert manifest.check["compared_with"] == "PyTorch model"
    assert "torch" in manifest.versions
    assert "answer" in json.loads(done.stdout)


def test_a_refused_onnx_model_beside_weights_names_the_export_extra_without_it(
    hub_cache: Path, tmp_path: Path
) -> None:
    env = offline_env(hub_cache, tmp_path / "models")
    done = run_without_torch("answer", "--model", "example-org/wrong-onnx", *QUESTION, env=env)
    assert done.returncode == 2
    message = done.stderr
    assert "(its outputs: ['logits_start', 'logits_end'])" in message
    assert f"example-org/wrong-onnx@{MAIN_COMMIT} also ships weights (model.safetensors)" in message
    assert "lacks torch, transformers, onnxscript, safetensors" in message
    assert "pip install 'kafka-qa-worker[export]'" in message
    # It started preparing, and says so, but never that later runs will reuse a folder.
    assert f"preparing example-org/wrong-onnx@{MAIN_COMMIT} (int8)" in message
    assert "later runs reuse it" not in message
    assert not (tmp_path / "models" / "example-org--wrong-onnx" / MAIN_COMMIT).exists()


def test_a_refused_onnx_model_without_weights_offers_no_export(
    hub_cache: Path, tmp_path: Path
) -> None:
    env = offline_env(hub_cache, tmp_path / "models")
    done = run_with_torch(
        "export", "--model", "example-org/onnx-only", "--out", str(tmp_path / "out"), env=env
    )
    assert done.returncode == 2
    assert "(its outputs: ['logits_start', 'logits_end'])" in done.stderr
    assert (
        f"example-org/onnx-only@{MAIN_COMMIT} ships no safetensors weights to export instead"
        in done.stderr
    )
    # (The command's own name prefixes the message; advice would quote it.)
    assert "`qa-worker export" not in done.stderr and "re-export" not in done.stderr
    assert "kafka-qa-worker[export]" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_changed_file_in_a_prepared_hub_folder_is_prepared_again(
    hub_cache: Path, tmp_path: Path
) -> None:
    env = offline_env(hub_cache, tmp_path / "models")
    first = run_without_torch("answer", "--model", "example-org/tiny-qa", *QUESTION, env=env)
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "models" / "example-org--tiny-qa" / MAIN_COMMIT
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text(encoding="utf-8") + " ", encoding="utf-8")

    second = run_without_torch("answer", "--model", "example-org/tiny-qa", *QUESTION, env=env)
    assert second.returncode == 0, second.stderr
    assert (
        f"tokenizer.json in {folder} is not as it was prepared (missing, changed, or of another "
        f"format); preparing example-org/tiny-qa@{MAIN_COMMIT} again" in second.stderr
    )
    assert f"prepared example-org/tiny-qa@{MAIN_COMMIT} into {folder}" in second.stderr
    assert json.loads(second.stdout) == json.loads(first.stdout)
    manifest = Manifest.read(folder)
    assert sha256_file(tokenizer) == manifest.checksums["tokenizer.json"]


def test_a_moved_revision_is_prepared_afresh_and_offline_the_last_commit_is_used(
    hub_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from huggingface_hub import constants

    import worker.model.cache

    # Downloads come from the laid-out cache; what the Hub says main is at is the test's.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    hub_main = {"commit": MAIN_COMMIT}

    def resolve(repo_id: str, revision: str | None) -> str:
        assert (repo_id, revision) == ("example-org/tiny-qa", None)
        if hub_main["commit"] is None:
            raise HubUnreachable("ConnectionError: no network")
        return hub_main["commit"]

    monkeypatch.setattr(worker.model.cache, "resolve_commit", resolve)
    cache = tmp_path / "models"
    model = Path("example-org/tiny-qa")
    caplog.set_level("INFO", logger="worker.model.cache")

    first = model_folder(model, None, cache, progress=False)
    assert first == cache / "example-org--tiny-qa" / MAIN_COMMIT
    assert Manifest.read(first).model_type == "mobilebert"
    assert model_folder(model, None, cache, progress=False) == first
    assert " moved from " not in caplog.text

    hub_main["commit"] = OTHER_COMMIT
    caplog.clear()
    moved = model_folder(model, None, cache, progress=False)
    assert moved == cache / "example-org--tiny-qa" / OTHER_COMMIT
    assert f"main of example-org/tiny-qa moved from {MAIN_COMMIT} to {OTHER_COMMIT}" in caplog.text
    manifest = Manifest.read(moved)
    assert (manifest.model_type, manifest.source) == (
        "roberta",
        f"example-org/tiny-qa@{OTHER_COMMIT}",
    )

    hub_main["commit"] = None
    caplog.clear()
    assert model_folder(model, None, cache, progress=False) == moved
    assert (
        "cannot ask the Hub which commit main of example-org/tiny-qa is at "
        f"(ConnectionError: no network): using {OTHER_COMMIT}, the commit prepared last"
    ) in caplog.text
    assert "preparing" not in caplog.text


def test_which_commit_a_revision_is_at_and_when_the_hub_cannot_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huggingface_hub
    import requests
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    from worker.model.hub import resolve_commit

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    answers: list[object] = []

    def model_info(repo_id: str, revision: str | None, timeout: float) -> object:
        assert timeout > 0  # a lookup on every run must never hang
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return type("Info", (), {"sha": answer})()

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    answers.append(OTHER_COMMIT)
    assert resolve_commit("example-org/tiny-qa", None) == OTHER_COMMIT
    # A commit id needs no lookup (answers stays empty: model_info would fail on pop).
    assert resolve_commit("example-org/tiny-qa", MAIN_COMMIT) == MAIN_COMMIT
    answers.append(requests.ConnectionError("no route to host"))
    with pytest.raises(HubUnreachable, match=r"^huggingface.co cannot be reached$"):
        resolve_commit("example-org/tiny-qa", None)
    answers.append(RepositoryNotFoundError("404", response=requests.Response()))
    with pytest.raises(HubError, match="the Hugging Face Hub has no 'example-org/gone'"):
        resolve_commit("example-org/gone", None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachable, match="HF_HUB_OFFLINE is set"):
        resolve_commit("example-org/tiny-qa", None)


def connection_error(reason: Exception) -> Exception:
    """What requests raises when urllib3 gives up on a connection, wrapping its reason."""
    import requests
    from urllib3.exceptions import MaxRetryError

    url = "/api/models/example-org/tiny-qa/tree/main?recursive=True&expand=False"
    return requests.ConnectionError(MaxRetryError(None, url, reason))


def name_resolution_error() -> Exception:
    from urllib3.connection import HTTPSConnection
    from urllib3.exceptions import NameResolutionError

    connection = HTTPSConnection("huggingface.co", 443)
    failure = socket.gaierror(-3, "Temporary failure in name resolution")
    return connection_error(NameResolutionError("huggingface.co", connection, failure))


def download_error(monkeypatch: pytest.MonkeyPatch, error: Exception) -> str:
    """The message of a Hub download whose listing raised `error`."""
    import huggingface_hub
    from huggingface_hub import constants

    def fail(*args: object, **kwargs: object) -> list[str]:
        raise error

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", fail)
    with pytest.raises(HubError) as caught:
        download_checkpoint("example-org/tiny-qa", None, allow_pickle=False, progress=False)
    return str(caught.value)


def test_no_dns_gives_the_cause_in_a_few_words_and_the_offline_recipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = download_error(monkeypatch, name_resolution_error())
    assert "\n" not in message and len(message) < 480, message
    cause = message.split(". ")[0]
    assert cause == (
        "cannot download 'example-org/tiny-qa' from the Hugging Face Hub: the name "
        "huggingface.co does not resolve (no DNS)"
    )
    # No token helps a machine without DNS, and urllib3's nested repr says nothing to a user.
    assert "HF_TOKEN" not in message
    for noise in ("MaxRetryError", "NameResolutionError", "HTTPSConnection", "urllib3"):
        assert noise not in message
    # Only the files an export reads, not every format the repository ships.
    assert (
        "`hf download example-org/tiny-qa --include '*.json' '*.txt' '*.model' 'model.onnx*' "
        "'onnx/model.onnx*' '*.safetensors' --local-dir DIR`" in message
    )
    assert message.endswith(
        "run `qa-worker export --model DIR --out FOLDER` and pass --model FOLDER"
    )


def refused() -> Exception:
    from urllib3.connection import HTTPSConnection
    from urllib3.exceptions import NewConnectionError

    error = NewConnectionError(HTTPSConnection("huggingface.co", 443), "Connection refused")
    error.__cause__ = ConnectionRefusedError(111, "Connection refused")
    return error


def timed_out() -> Exception:
    from urllib3.connection import HTTPSConnection
    from urllib3.exceptions import ConnectTimeoutError

    return ConnectTimeoutError(HTTPSConnection("huggingface.co", 443), "timed out")


@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        (refused, "huggingface.co refused the connection"),
        (timed_out, "huggingface.co did not answer in time"),
    ],
)
def test_other_network_failures_are_named_without_a_token(
    reason: Callable[[], Exception], cause: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = download_error(monkeypatch, connection_error(reason()))
    assert f"from the Hugging Face Hub: {cause}. Without the Hub:" in message
    assert "HF_TOKEN" not in message


def test_a_repository_the_hub_does_not_show_asks_for_the_id_and_a_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from huggingface_hub.errors import RepositoryNotFoundError

    message = download_error(monkeypatch, RepositoryNotFoundError("404 Client Error."))
    assert message == (
        "cannot download 'example-org/tiny-qa' from the Hugging Face Hub: no such repository, or "
        "it is private. Check the id; for a private or gated one, set HF_TOKEN"
    )
