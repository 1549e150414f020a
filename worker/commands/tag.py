"""`qa-worker tag`: JSONL documents tagged with a question set, offline."""

from __future__ import annotations

import argparse
import json
import time

from .. import __version__
from ..batching.layout import batch_limits
from ..config import Settings, describe
from ..errors import ConfigError, EventError
from ..events import DocumentEvent, InputLimits, parse_document, tags_event
from ..model.loading import load_engine
from ..qa import QAOptions
from ..tagging import TaggedDocument, load_question_sets, tag_documents
from .offline import open_output


def command_tag(args: argparse.Namespace) -> int:
    settings = Settings.from_sources(args)
    if settings.question_sets is None:
        raise ConfigError(f"no question-set file given: pass {describe('question_sets')}")
    question_sets = load_question_sets(settings.question_sets, settings.subset(QAOptions))
    engine = load_engine(settings)
    limits = InputLimits(
        settings.max_question_chars,
        settings.max_context_chars,
        settings.max_json_depth,
        settings.max_json_values,
    )
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
            batch_limits(settings),
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
