"""docs/clients.md's librdkafka (confluent-kafka) example, run as written against a worker.

The example is taken from the page itself, so the page cannot drift from what works: it sends a
zstd-compressed question with a key and a correlation id header through librdkafka, and must
print the answer that comes back with that header.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.streaming import ANSWERS, QUESTIONS, create_topics, worker_settings
from worker.embedded.broker import EmbeddedBroker
from worker.model.loading import load_engine
from worker.observability.metrics import WorkerMetrics
from worker.stream import QAWorker

pytestmark = pytest.mark.broker

PAGE = Path(__file__).resolve().parents[2] / "docs" / "clients.md"


def python_examples() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", PAGE.read_text(encoding="utf-8"), re.S | re.M)


def test_the_page_has_one_python_example() -> None:
    (example,) = python_examples()
    assert "confluent_kafka" in example


async def test_the_confluent_kafka_example_gets_its_answer(
    export_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    (example,) = python_examples()
    script = tmp_path / "client.py"
    script.write_text(example, encoding="utf-8")
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        settings = worker_settings(broker.bootstrap_servers, export_factory("distilbert"))
        worker = QAWorker(settings, load_engine(settings), WorkerMetrics())
        await worker.start()
        try:
            client = await asyncio.create_subprocess_exec(
                sys.executable,
                str(script),
                env={
                    **os.environ,
                    "BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                    "QUESTIONS_TOPIC": QUESTIONS,
                    "ANSWERS_TOPIC": ANSWERS,
                },
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(client.communicate(), timeout=120)
        finally:
            await worker.stop()
    assert client.returncode == 0, err.decode()[-3000:]
    (line,) = out.decode().splitlines()
    # The answer came back under the question's key, found by the example's correlation id.
    match = re.fullmatch(r"key=q-1 answer='(.*)' score=(\d\.\d{3})", line)
    assert match is not None, line
    context = "Marie Curie won two Nobel Prizes, in physics and in chemistry."
    assert match[1] and match[1] in context
