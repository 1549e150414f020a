"""Delivery with no broker: headers and key copied, retries until acked, too-large answers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from worker.errors import ErrorCode
from worker.stream.delivery import (
    REPLY_TO_HEADER,
    Delivery,
    Outgoing,
    ReplyRouting,
    header,
    message_headers,
)


@dataclass
class FakeMessage:
    key: bytes | None = b"k1"
    value: bytes | None = b'{"id": "q1"}'
    topic: str = "questions"
    partition: int = 2
    offset: int = 7
    timestamp: float | None = 1.0
    headers: Any = field(default_factory=lambda: [("correlation-id", b"c-9")])


@dataclass
class FakeTopic:
    """Fails the first sends with the given errors, then acknowledges."""

    name: str
    failures: list[Exception] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, *, key: Any, value: Any, headers: Any) -> asyncio.Future[None]:
        self.sent.append({"key": key, "value": value, "headers": headers})
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failures:
            acknowledged.set_exception(self.failures.pop(0))
        else:
            acknowledged.set_result(None)
        return acknowledged


class Topics(dict[str, FakeTopic]):
    def __missing__(self, name: str) -> FakeTopic:
        self[name] = FakeTopic(name)
        return self[name]


def dead_letter(message: Any, event_time: float, code: ErrorCode, reason: str) -> Outgoing:
    return Outgoing("dead", f"{code}: {reason}".encode(), event_time, dead_letter_reason=code)


def delivery(topics: Topics) -> Delivery:
    return Delivery(topics.__getitem__, dead_letter, first_backoff_s=0.001, max_backoff_s=0.004)


async def test_sends_with_the_original_key_and_headers() -> None:
    topics = Topics()
    outgoing = Outgoing("answers", b"answer", 0.0)
    assert await delivery(topics).deliver(outgoing, FakeMessage()) is outgoing
    assert topics["answers"].sent == [
        {"key": b"k1", "value": b"answer", "headers": [("correlation-id", b"c-9")]}
    ]


async def test_retries_until_the_broker_acknowledges() -> None:
    topics = Topics()
    errors: list[Exception] = [KafkaConnectionError(), KafkaConnectionError()]
    topics["answers"] = FakeTopic("answers", failures=errors)
    await asyncio.wait_for(
        delivery(topics).deliver(Outgoing("answers", b"answer", 0.0), FakeMessage()), 5.0
    )
    assert [sent["value"] for sent in topics["answers"].sent] == [b"answer"] * 3
    assert "dead" not in topics


async def test_an_answer_too_large_becomes_a_dead_letter() -> None:
    topics = Topics()
    topics["answers"] = FakeTopic("answers", failures=[MessageSizeTooLargeError()])
    delivered = await delivery(topics).deliver(Outgoing("answers", b"answer", 3.0), FakeMessage())
    [sent] = topics["dead"].sent
    assert sent["value"].startswith(b"answer_too_large: ")
    assert sent["key"] == b"k1" and sent["headers"] == [("correlation-id", b"c-9")]
    # What was delivered is the dead letter, so the worker counts it as one, not as an answer.
    assert delivered.topic == "dead"
    assert delivered.dead_letter_reason == ErrorCode.ANSWER_TOO_LARGE


async def test_a_dead_letter_too_large_is_not_dead_lettered_again() -> None:
    topics = Topics()
    topics["dead"] = FakeTopic("dead", failures=[MessageSizeTooLargeError()])
    outgoing = Outgoing("dead", b"x", 0.0, dead_letter_reason=ErrorCode.INVALID_JSON)
    with pytest.raises(MessageSizeTooLargeError):
        await delivery(topics).deliver(outgoing, FakeMessage())
    assert len(topics["dead"].sent) == 1


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("reply-to", b"replies.a")], "replies.a"),
        ({"reply-to": b"replies.a"}, "replies.a"),
        ([("reply-to", b"replies.a"), ("reply-to", b"replies.b")], "replies.b"),
        ([("reply-to", None)], None),
        ([("reply-to", b"\xff")], None),
        (None, None),
    ],
)
def test_header_reads_the_last_utf8_value(headers: Any, expected: str | None) -> None:
    message = FakeMessage(headers=headers)
    assert header(message, REPLY_TO_HEADER) == expected
    assert isinstance(message_headers(message), list)


def test_reply_routing_allows_only_matching_topics() -> None:
    routing = ReplyRouting(" replies.* , audit ,")
    assert routing.allowed("replies.team-a") and routing.allowed("audit")
    assert not routing.allowed("answers") and not routing.allowed("audit.x")
    assert not ReplyRouting(None).allowed("anything")


def test_reply_to_field_wins_over_the_header() -> None:
    routing = ReplyRouting("*")
    message = FakeMessage(headers=[("reply-to", b"from-header")])
    assert routing.requested(message, "from-event") == "from-event"
    assert routing.requested(message, None) == "from-header"
    assert routing.requested(FakeMessage(), None) is None


def faust_wrapped(error: KafkaError) -> ProducerSendError:
    """What faust's producer raises for an aiokafka error: ProducerSendError from it."""
    try:
        raise ProducerSendError(f"Error while sending: {error!r}") from error
    except ProducerSendError as wrapped:
        return wrapped


async def test_a_faust_wrapped_too_large_error_still_becomes_a_dead_letter() -> None:
    topics = Topics()
    topics["answers"] = FakeTopic("answers", failures=[faust_wrapped(MessageSizeTooLargeError())])
    await delivery(topics).deliver(Outgoing("answers", b"answer", 3.0), FakeMessage())
    [sent] = topics["dead"].sent
    assert sent["value"].startswith(b"answer_too_large: ")


async def test_a_faust_wrapped_connection_error_is_retried() -> None:
    topics = Topics()
    topics["answers"] = FakeTopic("answers", failures=[faust_wrapped(KafkaConnectionError())])
    await asyncio.wait_for(
        delivery(topics).deliver(Outgoing("answers", b"answer", 0.0), FakeMessage()), 5.0
    )
    assert [sent["value"] for sent in topics["answers"].sent] == [b"answer"] * 2
