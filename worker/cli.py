"""`qa-worker`: the command line, which only parses and dispatches.

Each subcommand's body is a module of `worker.commands` (`bench`'s is `worker.bench.command`); it
reads the parsed flags into `Settings` itself.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class Command:
    """A subcommand's body, named by module and function and imported only when it runs: the
    parser and `--help` then load no runtime (ONNX Runtime, faust, the bench and its tools)."""

    module: str
    function: str

    def __call__(self, args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(self.module), self.function)(args))


def add_settings(parser: argparse.ArgumentParser, groups: Sequence[str]) -> None:
    """Adds the flags of these setting groups, and notes the groups for `main` to check."""
    add_arguments(parser, groups)
    parser.set_defaults(setting_groups=tuple(groups))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qa-worker", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    export = commands.add_parser("export", help="prepare a model folder: ONNX, tokenizer, manifest")
    export.add_argument("--model", required=True, help="local checkpoint folder or Hub id")
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
    export.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr; default: only when stderr is a terminal [env QA_PROGRESS]",
    )
    export.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also load weights from pickle files (pytorch_model.bin); they can run code",
    )
    export.set_defaults(handler=Command("worker.commands.export", "command_export"))

    answer = commands.add_parser("answer", help="answer one question, or a JSONL/SQuAD file")
    add_settings(answer, ("model", "qa", "batching"))
    answer.add_argument("--question")
    answer.add_argument("--context")
    answer.add_argument("--id", default="0", help="id echoed for --question/--context")
    answer.add_argument("--input", type=Path, help="JSONL of {id, question, context}, or SQuAD")
    answer.add_argument("--output", type=Path, help="JSONL to write; default stdout")
    answer.set_defaults(handler=Command("worker.commands.answer", "command_answer"))

    evaluation = commands.add_parser("eval", help="SQuAD 2.0 exact match and F1")
    add_settings(evaluation, ("model", "qa", "batching"))
    evaluation.add_argument("--squad", required=True, type=Path, help="SQuAD-format JSON file")
    evaluation.set_defaults(handler=Command("worker.commands.evaluate", "command_eval"))

    tag = commands.add_parser("tag", help="tag JSONL documents with a question set, offline")
    add_settings(tag, ("model", "qa", "batching"))
    tag.add_argument("--questions", required=True, type=Path, help="question-set file")
    tag.add_argument("--input", required=True, type=Path, help="JSONL of {id, text, ...}")
    tag.add_argument("--question-set", help="set for documents that name none; default: first")
    tag.add_argument("--output", type=Path, help="JSONL to write; default stdout")
    tag.set_defaults(handler=Command("worker.commands.tag", "command_tag"))

    run = commands.add_parser("run", help="run the streaming worker until SIGTERM")
    add_settings(run, ("model", "qa", "batching", "kafka", "tagging", "worker"))
    run.set_defaults(handler=Command("worker.commands.run", "command_run"))

    demo = commands.add_parser(
        "demo", help="embedded broker + worker: send questions, print answers, shut down"
    )
    add_settings(demo, ("model", "qa", "batching", "worker"))
    demo.add_argument("--input", type=Path, help="JSONL or SQuAD questions; default: samples")
    demo.add_argument("--count", type=int, help="send this many questions (cycling the input)")
    demo.add_argument(
        "--tagging", action="store_true", help="also tag sample documents with a question set"
    )
    demo.set_defaults(handler=Command("worker.commands.demo", "command_demo"))

    produce = commands.add_parser("produce", help="send JSONL or SQuAD questions to a topic")
    add_settings(produce, ("kafka",))
    produce.add_argument("--input", type=Path, help="JSONL or SQuAD questions; default: samples")
    produce.add_argument("--count", type=int, help="send this many (cycling the input)")
    produce.add_argument("--topic", help="default: the questions topic")
    produce.set_defaults(handler=Command("worker.commands.clients", "command_produce"))

    consume = commands.add_parser("consume", help="print answers (or any JSON topic) as JSONL")
    add_settings(consume, ("kafka",))
    consume.add_argument("--topic", action="append", help="default: the answers topic")
    consume.add_argument("--count", type=int, help="stop after this many events")
    consume.add_argument("--timeout", type=float, default=10.0, help="stop after idle seconds")
    consume.add_argument("--from-beginning", action="store_true")
    consume.set_defaults(handler=Command("worker.commands.clients", "command_consume"))

    add_bench_parser(commands)
    return parser


def add_bench_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Registers `bench` on the subparsers object of `qa-worker`'s parser."""
    bench = commands.add_parser(
        "bench",
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
