"""`qa-worker answer`: one question, or a JSONL/SQuAD file of them, answered offline."""

from __future__ import annotations

import argparse
import json
import time

from ..config import Settings
from ..errors import ConfigError, EventError
from ..model.loading import load_engine
from ..qa import QAOptions, QAResult, Question
from ..squad import read_questions
from .offline import answer_records, open_output, report_throughput


def result_line(question_id: str, result: QAResult | EventError) -> dict[str, object]:
    if isinstance(result, EventError):
        return {"id": question_id, "error": {"code": result.code, "message": str(result)}}
    return {"id": question_id, **result.to_dict()}


def command_answer(args: argparse.Namespace) -> int:
    settings = Settings.from_sources(args)
    if (args.input is None) == (args.question is None and args.context is None):
        raise ConfigError("give either --question and --context, or --input FILE")
    engine = load_engine(settings)
    options = settings.subset(QAOptions)
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
