"""Stand-ins for the broker side of one event's way: messages, topics that acknowledge at once
or fail first, and a batcher that answers without a model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from worker.batching.batcher import Answered
from worker.errors import ErrorCode
from worker.qa import QAOptions, QAResult
from worker.stream.delivery import Delivery
from worker.stream.outgoing import Outgoing, OutgoingRecords
from worker.stream.pipeline import EventPipeline
from worker.stream.records import IncomingMessage

DeadLetterOf = Callable[[IncomingMessage, float, ErrorCode, str], Outgoing]
"""(message, event time, code, reason) to the dead letter for that message."""


@dataclass
class FakeMessage:
    """A consumed message: what the handlers and the pipeline read of faust's."""

    value: bytes | None
    key: bytes | None = b"k"
    headers: Any = field(default_factory=list)
    topic: str = "questions"
    partition: int = 0
    offset: int = 7
    timestamp: float | None = 1_700_000_000.0


@dataclass
class Sent:
    topic: str
    key: Any
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass
class FakeTopics:
    """Topics that acknowledge every send at once and remember what was sent."""

    sent: list[Sent] = field(default_factory=list)

    def __call__(self, name: str) -> FakeTopics.Topic:
        return FakeTopics.Topic(self, name)

    @dataclass
    class Topic:
        topics: FakeTopics
        name: str

        async def send(self, *, key: Any, value: Any, headers: Any) -> asyncio.Future[object]:
            self.topics.sent.append(Sent(self.name, key, value, list(headers or ())))
            acked: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            acked.set_result(None)
            return acked

        send_alone = send


@dataclass
class FailingTopic:
    """Fails its first sends with `failures`, then acknowledges; `alone` says, per send, whether
    it went in a batch of its own. With `gate` set, each send waits for it before it is
    acknowledged."""

    name: str
    failures: list[Exception] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    alone: list[bool] = field(default_factory=list)
    gate: asyncio.Event | None = None

    async def send_alone(self, *, key: Any, value: Any, headers: Any) -> asyncio.Future[None]:
        future = await self.send(key=key, value=value, headers=headers)
        self.alone[-1] = True
        return future

    async def send(self, *, key: Any, value: Any, headers: Any) -> asyncio.Future[None]:
        self.sent.append({"key": key, "value": value, "headers": headers})
        self.alone.append(False)
        if self.gate is not None:
            await self.gate.wait()
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failures:
            acknowledged.set_exception(self.failures.pop(0))
        else:
            acknowledged.set_result(None)
        return acknowledged


class WordBatcher:
    """Answers with the context's first word, as the model would shape it; or raises `error`.
    Remembers what it was asked, and in which turns (lane, event)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.asked: list[tuple[str, str, QAOptions]] = []
        self.turns: list[tuple[Hashable, Hashable]] = []

    async def answer(
        self,
        question: str,
        context: str,
        options: QAOptions,
        deadline: float | None = None,
        lane: Hashable = None,
        event: Hashable = None,
    ) -> Answered:
        self.asked.append((question, context, options))
        self.turns.append((lane, event))
        if self.error is not None:
            raise self.error
        word = context.split()[0] if context.split() else context[:1]
        return Answered(QAResult(word, 0.9, 0, len(word), False, 0.1), 0.25, 0.01)


class DeadLettering:
    """Delivery as the event pipeline drives it (`EventPipeline.deliver_or_dead_letter`): when
    the broker refuses a record for reasons of its own, `dead_letter` builds the record that
    goes in its place."""

    def __init__(self, sender: Delivery, dead_letter: DeadLetterOf) -> None:
        self.sender = sender
        self._pipeline = EventPipeline({}, _DeadLettersBy(dead_letter), sender, group_id="tests")

    async def deliver(self, outgoing: Outgoing, message: IncomingMessage) -> Outgoing:
        """What the broker acknowledged: `outgoing`, or the dead letter that replaced it."""
        return await self._pipeline.deliver_or_dead_letter(outgoing, message)


class _DeadLettersBy(OutgoingRecords):
    """Records whose dead letters a test's own function builds."""

    def __init__(self, dead_letter: DeadLetterOf) -> None:
        super().__init__(dead_letter_topic="dead", max_json_values=100)
        self._build_dead_letter = dead_letter

    def dead_letter(
        self, message: IncomingMessage, event_time: float, code: ErrorCode, reason: str
    ) -> Outgoing:
        return self._build_dead_letter(message, event_time, code, reason)
