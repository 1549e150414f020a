"""`qa-worker`: the command line, which only parses and dispatches.

Each subcommand's body is a module of `worker.commands` (`bench`'s is `worker.bench.command`); it
reads the parsed flags into `Settings` itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .config import Settings, add_arguments
from .errors import WorkerError
from .interrupts import release_stop_signals

DESCRIPTION = (
    "Extractive question answering over Kafka: ONNX Runtime micro-batches, at-least-once answers, "
    "Prometheus metrics."
)
DEFAULT_BENCH_EVENTS = 300
DEFAULT_SWEEP_EVENTS = 200
# What `produce` and `consume` use of the settings: where the brokers are and how to log in.
CLIENT_SETTINGS = (
    "broker",
    "security_protocol",
    "sasl_mechanism",
    "sasl_username",
    "sasl_password",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
)
# `demo` serves no HTTP and logs its own way: of the worker's settings it takes the others.
DEMO_UNUSED_SETTINGS = (
    "http_host",
    "http_port",
    "http_max_connections",
    "http_idle_timeout_s",
    "http_request_timeout_s",
    "log_format",
)

log = logging.getLogger(__name__)


class HelpWithDefaults(argparse.HelpFormatter):
    """Appends "(default: X)" to the help of a flag with a default its text does not give.

    Setting flags default to None (so that their variables can apply) and state their default in
    their own text (worker.config.add_arguments); a switch's default, off, goes without saying.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return action.help
        return f"{text} (default: %(default)s)"


class DeprecatedAlias(argparse.Action):
    """An old flag name that still works: it stores into the new flag's dest and logs a warning
    naming the new one."""

    def __init__(self, *args: Any, new_flag: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.new_flag = new_flag

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        log.warning("%s is deprecated and will be removed: use %s", option_string, self.new_flag)
        setattr(namespace, self.dest, values)


@dataclass(frozen=True)
class Command:
    """A subcommand's body, named by module and function and imported only when it runs: the
    parser and `--help` then load no runtime (ONNX Runtime, faust, the bench and its tools)."""

    module: str
    function: str

    def __call__(self, args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(self.module), self.function)(args))


def add_settings(
    parser: argparse.ArgumentParser, groups: Sequence[str], only: Sequence[str] | None = None
) -> None:
    """Adds the flags of these setting groups (only those named in `only`, when given), and notes
    the groups for `main` to check."""
    add_arguments(parser, groups, only)
    parser.set_defaults(setting_groups=(*(parser.get_default("setting_groups") or ()), *groups))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qa-worker", description=DESCRIPTION, formatter_class=HelpWithDefaults
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, formatter_class=HelpWithDefaults, **kwargs)

    export = command("export", "prepare a model folder: ONNX, tokenizer, manifest")
    # Stored as `source`, not `model`: Settings.model is the prepared folder the other commands
    # load, and export's --model names the checkpoint it prepares that folder from.
    export.add_argument(
        "--model",
        dest="source",
        metavar="MODEL",
        required=True,
        help="local checkpoint folder or Hub id",
    )
    export.add_argument("--out", required=True, type=Path, help="folder to write")
    export.add_argument(
        "--quantize",
        choices=("none", "int8", "int8-static"),
        default="none",
        help="int8: dynamic int8 as the default precision; int8-static: also a static int8 file "
        "calibrated on --calibration",
    )
    export.add_argument(
        "--calibration",
        type=Path,
        help="SQuAD JSON or JSONL questions to calibrate --quantize int8-static on",
    )
    export.add_argument("--revision", help="Hub branch, tag or commit to download; default: main")
    # Of the settings, export takes --progress alone, and not through add_settings: the model
    # check before a command is for prepared folders, and export's --model names a checkpoint.
    add_arguments(export, ("model",), only=("progress",))
    export.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also load weights from pickle files (pytorch_model.bin); they can run code",
    )
    export.set_defaults(handler=Command("worker.commands.export", "command_export"))

    answer = command("answer", "answer one question, or a JSONL/SQuAD file")
    add_settings(answer, ("model", "qa", "batching"))
    answer.add_argument("--question", help="the question to answer (with --context)")
    answer.add_argument("--context", help="the passage to find the answer in (with --question)")
    answer.add_argument("--id", default="0", help="id echoed for --question/--context")
    answer.add_argument("--input", type=Path, help="JSONL of {id, question, context}, or SQuAD")
    answer.add_argument("--output", type=Path, help="JSONL to write; default stdout")
    answer.set_defaults(handler=Command("worker.commands.answer", "command_answer"))

    evaluation = command("eval", "SQuAD 2.0 exact match and F1")
    add_settings(evaluation, ("model", "qa", "batching"))
    evaluation.add_argument("--squad", required=True, type=Path, help="SQuAD-format JSON file")
    evaluation.set_defaults(handler=Command("worker.commands.evaluate", "command_eval"))

    tag = command("tag", "tag JSONL documents with a question set, offline")
    add_settings(tag, ("model", "qa", "batching"))
    # The same flag as `run`'s, so one file is named one way; the old name still works.
    add_settings(tag, ("tagging",), only=("question_sets",))
    tag.add_argument(
        "--questions",
        dest="question_sets",
        type=Path,
        action=DeprecatedAlias,
        new_flag="--question-sets",
        help="deprecated name of --question-sets",
    )
    tag.add_argument("--input", required=True, type=Path, help="JSONL of {id, text, ...}")
    tag.add_argument("--question-set", help="set for documents that name none; default: first")
    tag.add_argument("--output", type=Path, help="JSONL to write; default stdout")
    tag.set_defaults(handler=Command("worker.commands.tag", "command_tag"))

    run = command("run", "run the streaming worker until SIGTERM")
    add_settings(run, ("model", "qa", "batching", "kafka", "tagging", "worker"))
    run.set_defaults(handler=Command("worker.commands.run", "command_run"))

    demo = command("demo", "embedded broker + worker: send questions, print answers, shut down")
    add_settings(demo, ("model", "qa", "batching"))
    add_settings(
        demo,
        ("worker",),
        only=[name for name in setting_names("worker") if name not in DEMO_UNUSED_SETTINGS],
    )
    demo.add_argument("--input", type=Path, help="JSONL or SQuAD questions; default: samples")
    demo.add_argument("--count", type=int, help="send this many questions (cycling the input)")
    demo.add_argument(
        "--tagging", action="store_true", help="also tag sample documents with a question set"
    )
    demo.set_defaults(handler=Command("worker.commands.demo", "command_demo"))

    produce = command("produce", "send JSONL or SQuAD questions to a topic")
    add_settings(produce, ("kafka",), only=CLIENT_SETTINGS)
    produce.add_argument("--input", type=Path, help="JSONL or SQuAD questions; default: samples")
    produce.add_argument("--count", type=int, help="send this many (cycling the input)")
    produce.add_argument(
        "--topic", help="topic to send to; default: $QA_QUESTIONS_TOPIC, else qa-questions"
    )
    produce.set_defaults(handler=Command("worker.commands.clients", "command_produce"))

    consume = command("consume", "print answers (or any JSON topic) as JSONL")
    add_settings(consume, ("kafka",), only=CLIENT_SETTINGS)
    consume.add_argument(
        "--topic",
        action="append",
        help="topic to read, repeatable; default: $QA_ANSWERS_TOPIC, else qa-answers",
    )
    consume.add_argument("--count", type=int, help="stop after this many events")
    consume.add_argument("--timeout", type=float, default=10.0, help="stop after idle seconds")
    consume.add_argument(
        "--from-beginning",
        action="store_true",
        help="read each partition from its first event; default: only events sent after the "
        "consumer starts",
    )
    consume.set_defaults(handler=Command("worker.commands.clients", "command_consume"))

    add_bench_parser(commands)
    return parser


def add_bench_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Registers `bench` on the subparsers object of `qa-worker`'s parser."""
    bench = commands.add_parser(
        "bench",
        formatter_class=HelpWithDefaults,
        help="measure throughput, latency, padding, memory and start-up of the worker",
        description="Measures the engine and a `qa-worker run` process on the same questions. "
        "Worker settings without a flag here (QA_MAX_IN_FLIGHT, QA_DRAIN_TIMEOUT_S, ...) come "
        "from the environment.",
    )
    add_settings(bench, ("model", "qa", "batching"))
    bench.add_argument("--squad", required=True, type=Path, help="SQuAD or JSONL questions")
    bench.add_argument(
        "--events",
        type=positive_count,
        default=DEFAULT_BENCH_EVENTS,
        help="first N questions of the file",
    )
    bench.add_argument(
        "--sweep-events",
        type=positive_count,
        default=DEFAULT_SWEEP_EVENTS,
        help="events sent at each load of the latency sweep",
    )
    bench.add_argument(
        "--broker",
        help="bootstrap servers of a broker to use (QA_SECURITY_PROTOCOL and the other QA_ "
        "client settings apply); default: an embedded broker",
    )
    bench.add_argument(
        "--idle-seconds",
        type=float,
        default=30.0,
        help="how long to watch the worker with nothing to do, for its idle CPU",
    )
    bench.add_argument("--json", type=Path, help="write the report here")
    bench.add_argument("--plot", type=Path, help="draw latency against throughput into this PNG")
    bench.add_argument(
        "--reference-python",
        type=Path,
        help="interpreter with transformers and torch: also time the reference pipeline",
    )
    bench.add_argument(
        "--reference-model",
        help="checkpoint for the reference pipeline; default: the source in the manifest",
    )
    bench.add_argument(
        "--tracing-overhead",
        action="store_true",
        help="also run a worker with --tracing otlp at 100%% sampling, rounds alternating with "
        "the untraced one, and report the events/s ratio",
    )
    bench.add_argument(
        "--heavy-mix",
        action="store_true",
        help="also send 40, then 200 contexts of --max-context-chars to one partition with "
        "one-window questions on the others, and tag 2 such documents with 12 fields: memory, "
        "light latency, event-loop lag and probe latency (tens of minutes)",
    )
    bench.set_defaults(handler=Command("worker.bench.command", "command_bench"))
    return bench


def setting_names(group: str) -> list[str]:
    """The settings of a group, by field name."""
    return [spec.name for spec in dataclasses.fields(Settings) if spec.metadata["group"] == group]


def positive_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "run":
        # Only `run` reports a stop in start-up as one line (worker.interrupts); the others
        # need Python's own handling, KeyboardInterrupt included, for their cleanups.
        release_stop_signals()
    try:
        groups = getattr(args, "setting_groups", ())
        if groups:
            # Before the command's body imports, loads or connects anything: a setting that
            # cannot work fails here in one line (worker.preflight).
            from .preflight import check_settings

            check_settings(Settings.from_sources(args), groups)
        return int(args.handler(args))
    except WorkerError as error:
        from .observability.logs import escape

        # One line whatever the message holds (a path, a parser's error quoting a file).
        print(f"qa-worker {args.command}: {escape(str(error))}", file=sys.stderr)
        return 2
