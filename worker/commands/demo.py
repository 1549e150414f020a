"""`qa-worker demo`: an embedded broker and a worker; questions sent, answers printed, shut down."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import sys
import tempfile
from pathlib import Path

from ..config import Settings
from ..embedded.broker import EmbeddedBroker
from ..model.cache import DEFAULT_MODEL
from ..model.loading import load_engine
from ..observability.metrics import WorkerMetrics
from ..stream import QAWorker
from .clients import consume, produce, question_events

DEMO_QUESTION_SET = """\
acquisitions:
  fields:
    buyer: {question: "Which company made the acquisition?"}
    target: {question: "Which company was acquired?"}
    price: {question: "How much was paid?", null_threshold: 0.0}
"""

DEMO_DOCUMENTS = (
    "In March, Acme Corp. acquired the robotics startup Widget Inc. for $40 million after "
    "months of talks.",
    "Globex bought the analytics firm Initech on Tuesday; terms were not disclosed.",
    "Umbrella Health agreed to acquire Cyberdyne Labs for 1.2 billion euros in cash.",
)
DEMO_DOCUMENTS_TOPIC = "qa-documents"


async def demo(
    settings: Settings, input_path: Path | None, count: int | None, tagging: bool, workdir: Path
) -> int:
    """Answers the questions, and with `tagging` also tags sample documents with a sample set."""
    events = question_events(input_path, count)
    topics = [settings.questions_topic, settings.answers_topic, settings.dead_letter_topic]
    if tagging:
        question_sets = workdir / "question-sets.yaml"
        question_sets.write_text(DEMO_QUESTION_SET, encoding="utf-8")
        settings = dataclasses.replace(
            settings,
            question_sets=question_sets,
            documents_topics=f"{DEMO_DOCUMENTS_TOPIC}=acquisitions",
        )
        topics += [DEMO_DOCUMENTS_TOPIC, settings.tags_topic]
    async with EmbeddedBroker() as broker:
        for topic in topics:
            await broker.create_topic(topic, 4)
        settings = dataclasses.replace(broker.worker_settings(settings), http_port=0)
        engine = load_engine(settings)
        metrics = WorkerMetrics()
        worker = QAWorker(settings, engine, metrics)
        await worker.start()
        try:
            listener = consume(settings, topics[1:], from_beginning=True, idle_timeout=60.0)
            sent = await produce(settings, events, settings.questions_topic)
            if tagging:
                documents = [
                    {"id": f"doc-{i}", "text": text} for i, text in enumerate(DEMO_DOCUMENTS)
                ]
                sent += await produce(settings, documents, DEMO_DOCUMENTS_TOPIC)
            print(f"sent {sent} questions to {broker.bootstrap_servers}", file=sys.stderr)
            questions = {str(event.get("id")): event.get("question") for event in events}
            received = 0
            async for topic, event in listener:
                if topic == DEMO_DOCUMENTS_TOPIC:
                    continue
                line = beside_its_question(event, questions)
                print(json.dumps(line, ensure_ascii=False), flush=True)
                received += 1
                if received == sent:
                    break
            with contextlib.suppress(Exception):
                await listener.aclose()
        finally:
            await worker.stop()
    return 0 if received == sent else 1


def beside_its_question(
    event: dict[str, object], questions: dict[str, object]
) -> dict[str, object]:
    """The event with the question it answers in front, as `question`, when it answers one of
    the demo's questions (a tags event answers a document's question set instead). Answer
    events themselves carry no question: the demo adds it so that each line reads on its own."""
    question = questions.get(str(event.get("id")))
    return event if question is None else {"question": question, **event}


def command_demo(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    settings = Settings.from_sources(args)
    if settings.model is None:
        print(f"no --model given: using the Hub model {DEFAULT_MODEL}", file=sys.stderr)
        settings = dataclasses.replace(settings, model=Path(DEFAULT_MODEL))
    with tempfile.TemporaryDirectory(prefix="qa-worker-demo-") as workdir:
        return asyncio.run(demo(settings, args.input, args.count, args.tagging, Path(workdir)))
