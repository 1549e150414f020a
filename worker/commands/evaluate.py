"""`qa-worker eval`: SQuAD 2.0 exact match and F1, with the best null threshold."""

from __future__ import annotations

import argparse
import json
import time

from ..config import Settings
from ..errors import ConfigError, EventError
from ..model.loading import load_engine
from ..qa import QAOptions
from ..squad import evaluate, read_questions
from .offline import answer_records, report_throughput


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
    for record, result in answer_records(engine, records, settings, settings.subset(QAOptions)):
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
