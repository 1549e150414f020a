"""Refusals that one record meets, from a real broker: tansu's schema check refuses one answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parity import texts
from tests.support.streaming import (
    ANSWERS,
    DEAD_LETTERS,
    collect,
    create_topics,
    produce,
    question_values,
    worker_settings,
)
from worker.embedded.broker import EmbeddedBroker
from worker.model.loading import load_engine
from worker.observability.metrics import WorkerMetrics
from worker.stream import QAWorker

pytestmark = pytest.mark.broker

# The answers topic's schema: tansu validates {"key": ..., "value": ...} of every record.
REFUSING_SCHEMA = {
    "type": "object",
    "properties": {
        "value": {
            "type": "object",
            "properties": {"id": {"type": "string", "not": {"pattern": "^refused-"}}},
        }
    },
}


async def test_an_answer_the_broker_refuses_becomes_its_dead_letter_and_nothing_else_stops(
    exported_models: dict[str, Path], tmp_path: Path
) -> None:
    registry = tmp_path / "schemas"
    registry.mkdir()
    (registry / f"{ANSWERS}.json").write_text(json.dumps(REFUSING_SCHEMA))
    good = question_values(texts.pairs(seed=8, count=40), prefix="good")
    later = question_values(texts.pairs(seed=9, count=5), prefix="later")
    refused = json.dumps(
        {"id": "refused-1", "question": "When?", "context": "It opened in 1889."}
    ).encode()
    async with EmbeddedBroker(schema_registry=registry) as broker:
        # One partition: the refused answer goes out in the same batches as its neighbours'.
        await create_topics(broker, partitions=1)
        settings = worker_settings(broker.bootstrap_servers, exported_models["bert"])
        metrics = WorkerMetrics()
        worker = QAWorker(settings, load_engine(settings), metrics)
        await worker.start()
        try:
            await produce(broker.bootstrap_servers, [*good[:20], refused, *good[20:]])
            records = await collect(broker.bootstrap_servers, [ANSWERS, DEAD_LETTERS], 41, 120)
            # Still consuming after the refusal.
            await produce(broker.bootstrap_servers, later)
            records = await collect(broker.bootstrap_servers, [ANSWERS, DEAD_LETTERS], 46, 120)
            assert worker.readiness() == (True, "model loaded, partitions assigned")
        finally:
            assert await worker.stop()
    answered = sorted(record.json()["id"] for record in records if record.topic == ANSWERS)
    assert answered == sorted(json.loads(value)["id"] for value in [*good, *later])
    [letter] = [record.json() for record in records if record.topic == DEAD_LETTERS]
    assert letter["id"] == "refused-1"
    assert letter["error"]["code"] == "answer_refused"
    assert "INVALID_RECORD (87)" in letter["error"]["message"]
    assert letter["source"]["offset"] == 20
