"""The command line as a newcomer meets it: every default in --help, each subcommand taking only
the flags it uses, one name for the question-set flag, paths that stay paths."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.permissions import refusal_where_permissions_hold
from tests.support.worker_process import run_qa_worker
from worker.cli import build_parser, main
from worker.commands import export as export_command
from worker.commands.demo import beside_its_question
from worker.config import Settings, flag_name

SETTINGS = {spec.name: spec for spec in dataclasses.fields(Settings)}
# What a subcommand needs before argparse looks at the rest.
REQUIRED = {"tag": ["--input", "d.jsonl"]}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def expected_default(action: argparse.Action) -> object:
    """What the flag amounts to when it is not given: a setting's default, else argparse's."""
    spec = SETTINGS.get(action.dest)
    if spec is not None and action.default is None:
        return spec.default
    return action.default


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_default_shows_in_the_help(name: str) -> None:
    parser = subcommands()[name]
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        default = expected_default(action)
        if default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            continue
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        # The help's own words may give it ("default: first"); else the formatter appends it.
        help_text = " ".join((action.help or "").split())
        assert f"default: {shown}" in text or "default" in help_text, (
            f"{name} {action.option_strings[0]}: default {shown!r} not in --help"
        )


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_flag_has_help_text(name: str) -> None:
    silent = [
        action.option_strings[0]
        for action in subcommands()[name]._actions
        if action.option_strings and not action.help
    ]
    assert not silent


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (command, flag_name(name))
        for command in ("produce", "consume")
        for name in (
            "group_id",
            "dead_letter_topic",
            "answers_topic",
            "questions_topic",
            "commit_interval_s",
            "compression_type",
            "session_timeout_s",
            "max_in_flight",
            "http_port",
            "model",
        )
    ]
    + [("demo", "--http-port"), ("demo", "--log-format"), ("tag", "--tags-topic")],
)
def test_subcommands_refuse_flags_they_do_not_use(
    command: str, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([command, *REQUIRED.get(command, []), flag, "1"])
    assert exited.value.code == 2
    assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


def test_produce_and_consume_take_the_client_settings() -> None:
    for command in ("produce", "consume"):
        parser = subcommands()[command]
        assert {"--broker", "--security-protocol", "--sasl-username", "--ssl-cafile"} <= flags(
            parser
        )


@pytest.mark.parametrize(
    ("flag", "environ", "expected"),
    [
        ([], {"QA_PROGRESS": "true"}, True),
        (["--no-progress"], {"QA_PROGRESS": "true"}, False),
        (["--progress"], {"QA_PROGRESS": "false"}, True),
    ],
)
def test_export_takes_progress_from_the_settings(
    flag: list[str],
    environ: dict[str, str],
    expected: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asked: dict[str, object] = {}

    class Written:
        def to_json(self) -> str:
            return "{}\n"

    def fake_export(source: str, out: Path, **options: object) -> Written:
        asked.update(options, source=source, out=out)
        return Written()

    monkeypatch.setattr(export_command, "export_model", fake_export)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    argv = ["export", "--model", "./checkpoint", "--out", str(tmp_path / "out"), *flag]
    assert main(argv) == 0
    assert asked["progress"] is expected
    # The checkpoint goes on as written, for the manifest to record.
    assert asked["source"] == "./checkpoint"
    assert capsys.readouterr().out == "{}\n"


def test_tag_and_run_name_the_question_sets_file_alike(tmp_path: Path) -> None:
    sets = tmp_path / "sets.yaml"
    for command in (["run"], ["tag", "--input", "docs.jsonl"]):
        args = build_parser().parse_args([*command, "--question-sets", str(sets)])
        assert Settings.from_sources(args, {}).question_sets == sets


def test_the_old_question_sets_flag_still_works_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sets = tmp_path / "sets.yaml"
    with caplog.at_level(logging.WARNING):
        args = build_parser().parse_args(["tag", "--input", "d.jsonl", "--questions", str(sets)])
    assert args.question_sets == sets
    assert "--questions is deprecated and will be removed: use --question-sets" in caplog.text


def test_tag_without_a_question_sets_file_says_which_flag_to_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QA_QUESTION_SETS", raising=False)
    code = main(["tag", "--model", "org/name", "--model-cache", str(tmp_path), "--input", "d"])
    assert code == 2
    assert "pass --question-sets / QA_QUESTION_SETS" in capsys.readouterr().err


@pytest.mark.parametrize("written", ["./models/mobilebert", "../models/mobilebert", "."])
def test_a_model_path_written_as_a_path_is_no_hub_id(
    written: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["answer", "--model", written])
    model = Settings.from_sources(args, {}).model
    assert model == Path.cwd() / written
    assert Settings.from_sources(None, {"QA_MODEL": written}).model == model
    # A Hub id and a path without ./ are as written.
    assert Settings.from_sources(None, {"QA_MODEL": "org/name"}).model == Path("org/name")


def test_a_relative_model_folder_that_does_not_exist_is_reported_not_downloaded(
    tmp_path: Path,
) -> None:
    done = run_qa_worker(
        "demo",
        "--model",
        "./models/mobilebert",
        cwd=tmp_path,
        timeout=120,
        # No Hub: were the path taken for a Hub id, the download would be tried and fail.
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)},
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    folder = tmp_path / "models" / "mobilebert"
    assert line.startswith(f"qa-worker demo: --model / QA_MODEL: '{folder}' does not exist")
    assert f"qa-worker export --model CHECKPOINT --out '{folder}'" in line
    assert "Hub" not in line.split("does not exist")[0]


def test_the_demo_prints_each_question_beside_its_answer() -> None:
    questions = {"q1": "Who wrote it?"}
    answer = {"id": "q1", "answer": "Ada", "score": 0.9}
    line = beside_its_question(answer, questions)
    assert list(line) == ["question", "id", "answer", "score"]
    assert line["question"] == "Who wrote it?"
    # A tags event answers a document, not one of the questions: as it came.
    tags = {"id": "doc-0", "tags": {}}
    assert beside_its_question(tags, questions) is tags


@pytest.mark.parametrize("name", ["model.int8.onnx", "tokenizer.json", "manifest.json"])
def test_an_unreadable_model_file_is_named_before_anything_loads(
    name: str, tmp_path: Path, export_factory: Callable[[str], Path]
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(export_factory("bert"), folder)
    (folder / name).chmod(0)
    line = refusal_where_permissions_hold(
        "answer",
        "--model",
        str(folder),
        "--question",
        "Who?",
        "--context",
        "Ada wrote it.",
        timeout=120,
    )
    assert line.startswith(
        f"qa-worker answer: --model / QA_MODEL: '{folder / name}' cannot be read: permission "
        "denied (mode 0000"
    )
