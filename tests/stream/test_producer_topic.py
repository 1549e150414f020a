"""ProducerTopic: records go to the app's producer with their key, value and headers as given."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from worker.config import Settings
from worker.stream.app import Topics, build_app


class RecordingProducer:
    """Stands in for faust's producer: keeps every send, acknowledges with the record's index."""

    def __init__(self) -> None:
        self.started = 0
        self.sent: list[tuple[Any, ...]] = []

    async def maybe_start(self) -> None:
        self.started += 1

    async def send(self, topic: str, key: Any, value: Any, **options: Any) -> asyncio.Future:
        self.sent.append((topic, key, value, options))
        acknowledged = asyncio.get_running_loop().create_future()
        acknowledged.set_result(len(self.sent) - 1)
        return acknowledged


async def test_a_send_reaches_the_producer_unchanged_and_resolves_on_its_ack(
    tmp_path: Path,
) -> None:
    app = build_app(Settings(), str(tmp_path))
    producer = RecordingProducer()
    app.producer = producer  # faust's setter: build_app takes no producer
    topics = Topics(app)
    headers = [("traceparent", b"00-01"), ("reply-to", b"r")]
    first = await topics("answers").send(key=b"k", value=b"{}", headers=headers)
    second = await topics("dead-letters").send(key=None, value=b"x", headers=[])
    assert await first == 0
    assert await second == 1
    assert producer.sent == [
        ("answers", b"k", b"{}", {"partition": None, "timestamp": None, "headers": headers}),
        ("dead-letters", None, b"x", {"partition": None, "timestamp": None, "headers": []}),
    ]
    # Started before every send, as faust's Topic.send does it: a no-op once running.
    assert producer.started == 2
    assert topics("answers") is topics("answers")
