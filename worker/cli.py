"""`qa-worker`: the command line. Each subcommand parses its flags into `Settings` and hands off."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from . import __version__, bench, streaming
from .config import Settings, add_arguments
from .errors import ConfigError, EventError, WorkerError
from .events import DocumentEvent, InputLimits, parse_document, tags_event
from .export import export_model
from .loading import load_engine
from .logs import configure_logging
from .model_cache import DEFAULT_MODEL
from .progress import Progress, progress_wanted
from .qa import QAEngine, QAOptions, QAResult, Question
from .squad import QuestionRecord, evaluate, read_questions
from .tagging import TaggedDocument, load_question_sets, tag_documents

# Questions are answered in chunks so output streams and memory stays flat on large files.
CHUNK_QUESTIONS = 512


def result_line(question_id: str, result: QAResult | EventError) -> dict[str, object]:
    if isinstance(result, EventError):
        return {"id": question_id, "error": {"code": result.code, "message": str(result)}}
    return {"id": question_id, **result.to_dict()}


def answer_records(
    engine: QAEngine, records: Sequence[QuestionRecord], settings: Settings, options: QAOptions
) -> Iterator[tuple[QuestionRecord, QAResult | EventError]]:
    enabled = progress_wanted(settings.progress)
    with Progress("answering", len(records), enabled, unit="questions") as bar:
        for offset in range(0, len(records), CHUNK_QUESTIONS):
            chunk = records[offset : offset + CHUNK_QUESTIONS]
            results = engine.answer_many(
                [Question(record.question, record.context, options) for record in chunk],
                settings.batch_limits(),
            )
            yield from zip(chunk, results, strict=True)
            bar.advance(len(chunk))


def report_throughput(engine: QAEngine, questions: int, seconds: float) -> None:
    stats = engine.stats
    print(
        f"answered {questions} questions ({stats.windows} windows, {stats.batches} batches) "
        f"in {seconds:.2f} s: {questions / seconds:.1f} questions/s, "
        f"{stats.windows / seconds:.1f} windows/s overall, "
        f"{stats.windows / max(stats.seconds, 1e-9):.1f} windows/s in inference, "
        f"padding ratio {stats.padding_ratio:.3f}",
        file=sys.stderr,
    )


def command_answer(args: argparse.Namespace) -> int:
    settings = Settings.from_sources(args)
    if (args.input is None) == (args.question is None and args.context is None):
        raise ConfigError("give either --question and --context, or --input FILE")
    engine = load_engine(settings)
    options = settings.qa_options()
    if args.input is None:
        if args.question is None or args.context is None:
            raise ConfigError("--question and --context go together")
        result = engine.answer_many([Question(args.question, args.context, options)])[0]
        print(json.dumps(result_line(args.id, result), ensure_ascii=False))
        return 2 if isinstance(result, EventError) else 0
    records = read_questions(args.input)
    began = time.perf_counter()
    with open_output(args.output) as output:
        for record, result in answer_records(engine, records, settings, options):
            output.write(json.dumps(result_line(record.id, result), ensure_ascii=False) + "\n")
    report_throughput(engine, len(records), time.perf_counter() - began)
    return 0


def command_eval(args: argparse.Namespace) -> int:
    settings = Settings.from_sources(args)
    engine = load_engine(settings)
    records = read_questions(args.squad)
    if any(record.is_impossible is None for record in records):
        raise ConfigError(f"{args.squad} has no gold answers: eval needs a SQuAD-format file")
    predictions: dict[str, str] = {}
    span_predictions: dict[str, str] = {}
    margins: dict[str, float] = {}
    began = time.perf_counter()
    for record, result in answer_records(engine, records, settings, settings.qa_options()):
        if isinstance(result, EventError):
            predictions[record.id] = ""
            continue
        predictions[record.id] = result.answer
        if result.best_span is not None:
            span_predictions[record.id] = result.best_span.answer
            margins[record.id] = result.best_span.score - result.null_score
    report_throughput(engine, len(records), time.perf_counter() - began)
    metrics = evaluate(records, predictions)
    # The threshold search judges the best span of every question, answered or not.
    tuned = evaluate(records, span_predictions, null_margins=margins)
    metrics.update({key: value for key, value in tuned.items() if key.startswith("best_")})
    print(json.dumps(metrics, indent=2))
    return 0


class open_output:
    """stdout when no path is given, else a file opened for writing."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._stream: TextIO | None = None

    def __enter__(self) -> TextIO:
        if self._path is None:
            return sys.stdout
        self._stream = self._path.open("w", encoding="utf-8")
        return self._stream

    def __exit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            self._stream.close()


def command_export(args: argparse.Namespace) -> int:
    # Only the progress setting applies to export; its other flags are its own.
    progress = Settings.from_sources(argparse.Namespace(progress=args.progress)).progress
    manifest = export_model(
        args.model,
        args.out,
        quantize=args.quantize,
        allow_pickle=args.allow_pickle,
        revision=args.revision,
        progress=progress_wanted(progress),
    )
    print(manifest.to_json(), end="")
    return 0


def command_tag(args: argparse.Namespace) -> int:
    settings = Settings.from_sources(args)
    question_sets = load_question_sets(args.questions, settings.qa_options())
    engine = load_engine(settings)
    limits = InputLimits(settings.max_question_chars, settings.max_context_chars)
    parsed: list[DocumentEvent | EventError] = []
    for line in args.input.read_bytes().splitlines():
        if line.strip():
            try:
                parsed.append(parse_document(line, 0, limits))
            except EventError as error:
                parsed.append(error)
    documents = [item for item in parsed if isinstance(item, DocumentEvent)]
    tagged = iter(
        tag_documents(
            engine,
            question_sets,
            documents,
            args.question_set or next(iter(question_sets)),
            settings.batch_limits(),
        )
    )
    with open_output(args.output) as output:
        for item in parsed:
            outcome = item if isinstance(item, EventError) else next(tagged)
            if isinstance(outcome, TaggedDocument):
                line = tags_event(
                    outcome.document,
                    outcome.question_set,
                    dict(outcome.results),
                    settings.require_model().name,
                    engine.model_id,
                    __version__,
                    int(time.time() * 1000),
                )
            else:
                document_id = item.id if isinstance(item, DocumentEvent) else None
                line = {
                    "id": document_id,
                    "error": {"code": outcome.code, "message": str(outcome)},
                }
            output.write(json.dumps(line, ensure_ascii=False) + "\n")
    return 0


def command_run(args: argparse.Namespace) -> int:
    settings = Settings.from_sources(args)
    configure_logging(settings.log_format)
    runner = asyncio.Runner()
    code = runner.run(streaming.run_worker(settings))
    if code != 0:
        # A drain that ran out of time leaves faust's stop (and its consumer thread) running,
        # and closing the loop would wait for it; what was not committed is redelivered after a
        # restart, so nothing is lost by leaving now.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    runner.close()
    return code


def command_demo(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    settings = Settings.from_sources(args)
    if settings.model is None:
        print(f"no --model given: using the Hub model {DEFAULT_MODEL}", file=sys.stderr)
        settings = dataclasses.replace(settings, model=Path(DEFAULT_MODEL))
    with tempfile.TemporaryDirectory(prefix="qa-worker-demo-") as workdir:
        return asyncio.run(
            streaming.demo(settings, args.input, args.count, args.tagging, Path(workdir))
        )


def command_produce(args: argparse.Namespace) -> int:
    settings = Settings.from_sources(args)
    events = streaming.question_events(args.input, args.count)
    topic = args.topic or settings.questions_topic
    sent = asyncio.run(streaming.produce(settings, events, topic))
    print(f"sent {sent} questions to {topic}", file=sys.stderr)
    return 0


def command_consume(args: argparse.Namespace) -> int:
    settings = Settings.from_sources(args)
    topics = args.topic or [settings.answers_topic]

    async def print_events() -> None:
        received = 0
        async for _topic, event in streaming.consume(
            settings, topics, args.from_beginning, args.timeout
        ):
            print(json.dumps(event, ensure_ascii=False), flush=True)
            received += 1
            if args.count is not None and received >= args.count:
                return

    asyncio.run(print_events())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qa-worker", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    export = commands.add_parser("export", help="prepare a model folder: ONNX, tokenizer, manifest")
    export.add_argument("--model", required=True, help="local checkpoint folder or Hub id")
    export.add_argument("--out", required=True, type=Path, help="folder to write")
    export.add_argument("--quantize", choices=("none", "int8"), default="none")
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
    export.set_defaults(handler=command_export)

    answer = commands.add_parser("answer", help="answer one question, or a JSONL/SQuAD file")
    add_arguments(answer, ("model", "qa", "batching"))
    answer.add_argument("--question")
    answer.add_argument("--context")
    answer.add_argument("--id", default="0", help="id echoed for --question/--context")
    answer.add_argument("--input", type=Path, help="JSONL of {id, question, context}, or SQuAD")
    answer.add_argument("--output", type=Path, help="JSONL to write; default stdout")
    answer.set_defaults(handler=command_answer)

    evaluation = commands.add_parser("eval", help="SQuAD 2.0 exact match and F1")
    add_arguments(evaluation, ("model", "qa", "batching"))
    evaluation.add_argument("--squad", required=True, type=Path, help="SQuAD-format JSON file")
    evaluation.set_defaults(handler=command_eval)

    tag = commands.add_parser("tag", help="tag JSONL documents with a question set, offline")
    add_arguments(tag, ("model", "qa", "batching"))
    tag.add_argument("--questions", required=True, type=Path, help="question-set file")
    tag.add_argument("--input", required=True, type=Path, help="JSONL of {id, text, ...}")
    tag.add_argument("--question-set", help="set for documents that name none; default: first")
    tag.add_argument("--output", type=Path, help="JSONL to write; default stdout")
    tag.set_defaults(handler=command_tag)

    run = commands.add_parser("run", help="run the streaming worker until SIGTERM")
    add_arguments(run, ("model", "qa", "batching", "kafka", "tagging", "worker"))
    run.set_defaults(handler=command_run)

    demo = commands.add_parser(
        "demo", help="embedded broker + worker: send questions, print answers, shut down"
    )
    add_arguments(demo, ("model", "qa", "batching", "worker"))
    demo.add_argument("--input", type=Path, help="JSONL or SQuAD questions; default: samples")
    demo.add_argument("--count", type=int, help="send this many questions (cycling the input)")
    demo.add_argument(
        "--tagging", action="store_true", help="also tag sample documents with a question set"
    )
    demo.set_defaults(handler=command_demo)

    produce = commands.add_parser("produce", help="send JSONL or SQuAD questions to a topic")
    add_arguments(produce, ("kafka",))
    produce.add_argument("--input", type=Path, help="JSONL or SQuAD questions; default: samples")
    produce.add_argument("--count", type=int, help="send this many (cycling the input)")
    produce.add_argument("--topic", help="default: the questions topic")
    produce.set_defaults(handler=command_produce)

    consume = commands.add_parser("consume", help="print answers (or any JSON topic) as JSONL")
    add_arguments(consume, ("kafka",))
    consume.add_argument("--topic", action="append", help="default: the answers topic")
    consume.add_argument("--count", type=int, help="stop after this many events")
    consume.add_argument("--timeout", type=float, default=10.0, help="stop after idle seconds")
    consume.add_argument("--from-beginning", action="store_true")
    consume.set_defaults(handler=command_consume)

    bench.add_bench_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except WorkerError as error:
        print(f"qa-worker {args.command}: {error}", file=sys.stderr)
        return 2
