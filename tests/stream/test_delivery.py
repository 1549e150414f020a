"""Delivery with no broker: headers and key copied, what is retried, dead-lettered or fatal."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    kafka_errors,
)
from faust.exceptions import ProducerSendError

from tests.support.fake_stream import DeadLettering, FailingTopic, FakeMessage
from worker.errors import DeliveryError, ErrorCode
from worker.stream.delivery import Delivery, Verdict, judge
from worker.stream.envelope import (
    ENVELOPE_DESCRIPTION_BYTES,
    Envelope,
    envelope_room,
    fit_envelope,
)
from worker.stream.faust_private import InvalidRecordError
from worker.stream.outgoing import Outgoing
from worker.stream.records import header, message_headers
from worker.stream.reply_routing import REPLY_TO_HEADER, ReplyRouting

SETTINGS_OF = {"answers": "--answers-topic / QA_ANSWERS_TOPIC", "dead": "--dead-letter-topic"}


def consumed(**fields: Any) -> FakeMessage:
    """The question delivery answers here: keyed, with a header to copy to the answer."""
    defaults = {
        "key": b"k1",
        "partition": 2,
        "timestamp": 1.0,
        "headers": [("correlation-id", b"c-9")],
    }
    return FakeMessage(**{"value": b'{"id": "q1"}', **defaults, **fields})


class Topics(dict[str, FailingTopic]):
    def __missing__(self, name: str) -> FailingTopic:
        self[name] = FailingTopic(name)
        return self[name]


def dead_letter(message: Any, event_time: float, code: ErrorCode, reason: str) -> Outgoing:
    return Outgoing("dead", f"{code}: {reason}".encode(), event_time, dead_letter_reason=code)


@dataclass
class Retries:
    """Records each retry's topic, and how long delivery had been failing at that moment."""

    seen: list[tuple[str, float]] = field(default_factory=list)
    delivery: Delivery | None = None
    reply_topics_known: Any = None

    def delivery_retried(self, topic: str) -> None:
        assert self.delivery is not None
        self.seen.append((topic, self.delivery.failing_for()))

    def watch_reply_topics_known(self, count: Any) -> None:
        self.reply_topics_known = count


def delivery(topics: Topics, retries: Retries | None = None, clock: Any = None) -> DeadLettering:
    made = Delivery(
        topics.__getitem__,
        settings_of=SETTINGS_OF,
        observer=retries,
        first_backoff_s=0.001,
        max_backoff_s=0.004,
        **({} if clock is None else {"clock": clock}),
    )
    if retries is not None:
        retries.delivery = made
    return DeadLettering(made, dead_letter)


async def test_sends_with_the_original_key_and_headers() -> None:
    topics = Topics()
    outgoing = Outgoing("answers", b"answer", 0.0)
    assert await delivery(topics).deliver(outgoing, consumed()) is outgoing
    assert topics["answers"].sent == [
        {"key": b"k1", "value": b"answer", "headers": [("correlation-id", b"c-9")]}
    ]


async def test_retries_until_the_broker_acknowledges() -> None:
    topics = Topics()
    errors: list[Exception] = [KafkaConnectionError(), KafkaConnectionError()]
    topics["answers"] = FailingTopic("answers", failures=errors)
    await asyncio.wait_for(
        delivery(topics).deliver(Outgoing("answers", b"answer", 0.0), consumed()), 5.0
    )
    assert [sent["value"] for sent in topics["answers"].sent] == [b"answer"] * 3
    assert "dead" not in topics


async def test_an_answer_too_large_becomes_a_dead_letter() -> None:
    topics = Topics()
    topics["answers"] = FailingTopic("answers", failures=[MessageSizeTooLargeError()] * 2)
    delivered = await delivery(topics).deliver(Outgoing("answers", b"answer", 3.0), consumed())
    # Refused in a batch, then alone: only then is the refusal the answer's own.
    assert topics["answers"].alone == [False, True]
    [sent] = topics["dead"].sent
    assert sent["value"].startswith(b"answer_too_large: ")
    assert b"MESSAGE_SIZE_TOO_LARGE (10)" in sent["value"]
    assert sent["key"] == b"k1" and sent["headers"] == [("correlation-id", b"c-9")]
    # What was delivered is the dead letter, so the worker counts it as one, not as an answer.
    assert delivered.topic == "dead"
    assert delivered.dead_letter_reason == ErrorCode.ANSWER_TOO_LARGE


async def test_a_dead_letter_too_large_is_fatal_and_names_the_setting() -> None:
    topics = Topics()
    topics["dead"] = FailingTopic("dead", failures=[MessageSizeTooLargeError()] * 2)
    outgoing = Outgoing("dead", b"x", 0.0, dead_letter_reason=ErrorCode.INVALID_JSON)
    with pytest.raises(DeliveryError, match="--dead-letter-topic"):
        await delivery(topics).deliver(outgoing, consumed())
    assert topics["dead"].alone == [False, True]


ANSWER = Outgoing("answers", b"a", 0.0)
REPLY = Outgoing("replies.team-a", b"a", 0.0)
DEAD = Outgoing("dead", b"d", 0.0, dead_letter_reason=ErrorCode.INVALID_JSON)


@pytest.mark.parametrize(
    ("error", "outgoing", "expected"),
    [
        # Worth retrying wherever it happens, a dead letter included.
        (KafkaConnectionError(), ANSWER, Verdict(retry=True)),
        (NotLeaderForPartitionError(), ANSWER, Verdict(retry=True)),
        # A batch that expired unacknowledged while the broker was away.
        (KafkaTimeoutError(), ANSWER, Verdict(retry=True)),
        (KafkaConnectionError(), DEAD, Verdict(retry=True)),
        (KafkaConnectionError(), REPLY, Verdict(retry=True)),
        (UnknownTopicOrPartitionError(), DEAD, Verdict(retry=True)),
        # A configured topic the broker does not know yet may still be created.
        (UnknownTopicOrPartitionError(), ANSWER, Verdict(retry=True)),
        # Only this event's record.
        (MessageSizeTooLargeError(), ANSWER, Verdict(code=ErrorCode.ANSWER_TOO_LARGE)),
        (RecordListTooLargeError(), REPLY, Verdict(code=ErrorCode.ANSWER_TOO_LARGE)),
        (InvalidTopicError(), REPLY, Verdict(code=ErrorCode.INVALID_REPLY_TOPIC)),
        (UnknownTopicOrPartitionError(), REPLY, Verdict(code=ErrorCode.REPLY_TOPIC_UNKNOWN)),
        (
            TopicAuthorizationFailedError(),
            REPLY,
            Verdict(code=ErrorCode.REPLY_TOPIC_UNAUTHORIZED),
        ),
    ],
)
def test_judge_retries_what_may_pass_and_dead_letters_what_one_event_meets(
    error: KafkaError, outgoing: Outgoing, expected: Verdict
) -> None:
    assert judge(error, outgoing, SETTINGS_OF) == expected


@pytest.mark.parametrize(
    ("error", "outgoing", "named"),
    [
        (TopicAuthorizationFailedError(), ANSWER, "--answers-topic / QA_ANSWERS_TOPIC"),
        (InvalidTopicError(), ANSWER, "--answers-topic / QA_ANSWERS_TOPIC"),
        (TopicAuthorizationFailedError(), DEAD, "--dead-letter-topic"),
        (MessageSizeTooLargeError(), DEAD, "--dead-letter-topic"),
    ],
)
def test_judge_stops_on_what_no_event_can_get_past(
    error: KafkaError, outgoing: Outgoing, named: str
) -> None:
    verdict = judge(error, outgoing, SETTINGS_OF)
    assert not verdict.retry and verdict.code is None
    assert verdict.fatal is not None and named in verdict.fatal


async def test_an_unwritable_answers_topic_raises_naming_the_setting() -> None:
    topics = Topics()
    topics["answers"] = FailingTopic("answers", failures=[TopicAuthorizationFailedError()])
    with pytest.raises(DeliveryError, match="--answers-topic / QA_ANSWERS_TOPIC"):
        await delivery(topics).deliver(ANSWER, consumed())
    # Nothing stands in for it: no dead letter, no second try.
    assert "dead" not in topics and len(topics["answers"].sent) == 1


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (TopicAuthorizationFailedError(), ErrorCode.REPLY_TOPIC_UNAUTHORIZED),
        (UnknownTopicOrPartitionError(), ErrorCode.REPLY_TOPIC_UNKNOWN),
        (InvalidTopicError(), ErrorCode.INVALID_REPLY_TOPIC),
    ],
)
async def test_a_refused_reply_topic_makes_that_event_a_dead_letter(
    error: KafkaError, code: ErrorCode
) -> None:
    topics = Topics()
    topics["replies.team-a"] = FailingTopic("replies.team-a", failures=[faust_wrapped(error)])
    delivered = await delivery(topics).deliver(REPLY, consumed())
    [sent] = topics["dead"].sent
    assert sent["value"].startswith(f"{code}: ".encode())
    assert delivered.dead_letter_reason == code
    assert len(topics["replies.team-a"].sent) == 1


async def test_retries_are_reported_by_topic_and_failing_time_grows_then_clears() -> None:
    ticks = iter(range(100))
    topics = Topics()
    failures: list[Exception] = [KafkaConnectionError()] * 3
    topics["answers"] = FailingTopic("answers", failures=failures)
    retries = Retries()
    sender = delivery(topics, retries, clock=lambda: float(next(ticks)))
    assert sender.sender.failing_for() == 0.0
    await asyncio.wait_for(sender.deliver(ANSWER, consumed()), 5.0)
    assert [topic for topic, _ in retries.seen] == ["answers"] * 3
    # Counted from the first failure, not reset by each retry.
    failing = [seconds for _, seconds in retries.seen]
    assert failing[0] >= 0 and failing == sorted(failing) and failing[-1] > failing[0]
    assert sender.sender.failing_for() == 0.0


async def test_failing_time_is_that_of_the_longest_retrying_delivery() -> None:
    now = [0.0]
    topics = Topics()
    release = asyncio.Event()

    class Stuck(FailingTopic):
        async def send(self, *, key: Any, value: Any, headers: Any) -> asyncio.Future[None]:
            self.sent.append({"value": value})
            if release.is_set():
                return await super().send(key=key, value=value, headers=headers)
            await asyncio.sleep(0)
            raise KafkaConnectionError()

    topics["answers"] = Stuck("answers")
    sender = delivery(topics, clock=lambda: now[0])
    first = asyncio.ensure_future(sender.deliver(ANSWER, consumed()))
    await wait_until(lambda: len(topics["answers"].sent) >= 2)
    now[0] = 10.0
    second = asyncio.ensure_future(sender.deliver(ANSWER, consumed(offset=8)))
    await wait_until(lambda: len(topics["answers"].sent) >= 4)
    now[0] = 15.0
    assert sender.sender.failing_for() == 15.0
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5.0)
    assert sender.sender.failing_for() == 0.0


async def wait_until(condition: Any, timeout_s: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout_s)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("reply-to", b"replies.a")], "replies.a"),
        ({"reply-to": b"replies.a"}, "replies.a"),
        ([("reply-to", b"replies.a"), ("reply-to", b"replies.b")], "replies.b"),
        ([("reply-to", None)], None),
        ([("reply-to", b"\xff")], "\\xff"),
        (None, None),
    ],
)
def test_header_reads_the_last_value_escaping_bytes_that_are_not_utf8(
    headers: Any, expected: str | None
) -> None:
    message = consumed(headers=headers)
    assert header(message, REPLY_TO_HEADER) == expected
    assert isinstance(message_headers(message), list)


def test_reply_routing_allows_only_matching_topics() -> None:
    routing = ReplyRouting(" replies.* , audit ,")
    assert routing.allowed("replies.team-a") and routing.allowed("audit")
    assert not routing.allowed("answers") and not routing.allowed("audit.x")
    assert not ReplyRouting(None).allowed("anything")


def test_reply_routing_never_allows_the_workers_own_input_and_dead_letter_topics() -> None:
    routing = ReplyRouting("*", reserved=["questions", "dead-letters"])
    assert routing.allowed("replies.a") and routing.allowed("answers")
    assert not routing.allowed("questions") and not routing.allowed("dead-letters")


def test_reply_to_field_wins_over_the_header() -> None:
    routing = ReplyRouting("*")
    message = consumed(headers=[("reply-to", b"from-header")])
    assert routing.requested(message, "from-event") == "from-event"
    assert routing.requested(message, None) == "from-header"
    assert routing.requested(consumed(), None) is None


def faust_wrapped(error: KafkaError) -> ProducerSendError:
    """What faust's producer raises for an aiokafka error: ProducerSendError from it."""
    try:
        raise ProducerSendError(f"Error while sending: {error!r}") from error
    except ProducerSendError as wrapped:
        return wrapped


async def test_a_faust_wrapped_too_large_error_still_becomes_a_dead_letter() -> None:
    topics = Topics()
    topics["answers"] = FailingTopic(
        "answers", failures=[faust_wrapped(MessageSizeTooLargeError())] * 2
    )
    await delivery(topics).deliver(Outgoing("answers", b"answer", 3.0), consumed())
    [sent] = topics["dead"].sent
    assert sent["value"].startswith(b"answer_too_large: ")


async def test_a_faust_wrapped_connection_error_is_retried() -> None:
    topics = Topics()
    topics["answers"] = FailingTopic("answers", failures=[faust_wrapped(KafkaConnectionError())])
    await asyncio.wait_for(
        delivery(topics).deliver(Outgoing("answers", b"answer", 0.0), consumed()), 5.0
    )
    assert [sent["value"] for sent in topics["answers"].sent] == [b"answer"] * 2


async def test_sends_with_the_envelope_key_and_headers_when_it_has_one() -> None:
    topics = Topics()
    envelope = Envelope(
        b"k", [("small", b"s")], key_size=2, dropped=(("big", 9),), dropped_bytes=12
    )
    outgoing = Outgoing("answers", b"answer", 0.0, envelope=envelope)
    message = consumed(key=b"k1", headers=[("big", b"b" * 9), ("small", b"s")])
    assert await delivery(topics).deliver(outgoing, message) is outgoing
    assert topics["answers"].sent == [
        {"key": b"k", "value": b"answer", "headers": [("small", b"s")]}
    ]


TRACEPARENT = ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


def room_with(key: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    return envelope_room(key, headers)


@pytest.mark.parametrize("offset", [-1, 0, 1], ids=["just-under", "at", "just-over"])
def test_the_envelope_is_kept_while_the_value_fits_and_shrinks_just_past_it(offset: int) -> None:
    message = consumed(key=b"k" * 500, headers=[("a", b"a" * 300), TRACEPARENT])
    needed = room_with(message.key, message.headers) + offset
    envelope = fit_envelope(message, needed)
    if offset <= 0:
        assert envelope is None
    else:
        # The smallest step that makes room: the one header that is not traceparent.
        assert envelope is not None and envelope.key == message.key
        assert envelope.headers == [TRACEPARENT] and envelope.dropped == (("a", 300),)
        assert room_with(envelope.key, envelope.headers) >= needed


def test_headers_go_largest_first_then_the_key_is_cut_then_traceparent_goes() -> None:
    headers = [("small", b"s" * 10), TRACEPARENT, ("large", b"l" * 400_000), ("mid", b"m" * 1000)]
    message = consumed(key=b"k" * 600_000, headers=headers)
    # Room for the value only once "large" is gone.
    needed = room_with(message.key, [TRACEPARENT, ("mid", b"m" * 1000), ("small", b"s" * 10)])
    envelope = fit_envelope(message, needed)
    assert envelope is not None and [name for name, _ in envelope.dropped] == ["large"]
    # Room only with the key cut: every header but traceparent goes first.
    needed = room_with(b"k" * 300_000, [TRACEPARENT])
    envelope = fit_envelope(message, needed)
    assert envelope is not None
    assert [name for name, _ in envelope.dropped] == ["large", "mid", "small"]
    assert envelope.headers == [TRACEPARENT] and envelope.key_size == 600_000
    assert envelope.key is not None and 299_000 < len(envelope.key) <= 300_000
    assert room_with(envelope.key, envelope.headers) >= needed
    described = envelope.described()
    assert described["key_truncated"] == {"size": 600_000, "kept": len(envelope.key)}
    assert described["headers_dropped"]["count"] == 3
    # Room only with no key and no headers at all.
    needed = room_with(b"", [])
    envelope = fit_envelope(message, needed)
    assert envelope is not None and envelope.headers == [] and envelope.key == b""
    assert [name for name, _ in envelope.dropped][-1] == "traceparent"


def test_a_description_names_at_most_sixteen_headers_in_short_names() -> None:
    headers = [(f"h{index}" + "x" * 100, b"v" * (index + 1)) for index in range(40)]
    message = consumed(key=None, headers=headers)
    envelope = fit_envelope(message, room_with(None, []))
    assert envelope is not None
    listed = envelope.described()["headers_dropped"]
    assert listed["count"] == 40 and len(listed["headers"]) == 16
    assert listed["headers"][0] == {"name": ("h39" + "x" * 100)[:64], "size": 40}


def test_the_largest_description_stays_within_its_reserve() -> None:
    names = [chr(1 + index) * 100 for index in range(20)]
    message = consumed(key=b"k" * 2_000_000, headers=[(name, b"v" * 1_100_000) for name in names])
    envelope = fit_envelope(message, room_with(b"", []))
    assert envelope is not None
    described = json.dumps(envelope.described(), ensure_ascii=False).encode()
    assert len(described) <= ENVELOPE_DESCRIPTION_BYTES


RECORD_REFUSALS = [
    (InvalidRecordError(), ErrorCode.ANSWER_REFUSED),
    (CorruptRecordException(), ErrorCode.ANSWER_REFUSED),
    (MessageSizeTooLargeError(), ErrorCode.ANSWER_TOO_LARGE),
    (RecordListTooLargeError(), ErrorCode.ANSWER_TOO_LARGE),
]


@pytest.mark.parametrize(("error", "code"), RECORD_REFUSALS)
@pytest.mark.parametrize("outgoing", [ANSWER, REPLY], ids=["answers", "reply topic"])
def test_judge_confirms_a_record_refusal_alone_before_dead_lettering(
    error: KafkaError, code: ErrorCode, outgoing: Outgoing
) -> None:
    assert judge(error, outgoing, SETTINGS_OF, sent_alone=False) == Verdict(resend_alone=True)
    assert judge(error, outgoing, SETTINGS_OF, sent_alone=True) == Verdict(code=code)
    # A dead letter refused alone has nothing to stand in for it.
    assert judge(error, DEAD, SETTINGS_OF, sent_alone=False) == Verdict(resend_alone=True)
    fatal = judge(error, DEAD, SETTINGS_OF, sent_alone=True).fatal
    assert fatal is not None and "--dead-letter-topic" in fatal


BROKER_ERRORS = sorted(kafka_errors.items())


@pytest.mark.parametrize(
    ("errno", "error_type"), BROKER_ERRORS, ids=[str(e) for e, _ in BROKER_ERRORS]
)
def test_every_broker_error_on_the_answers_topic_is_retried_refused_alone_or_fatal(
    errno: int, error_type: type[KafkaError]
) -> None:
    error = error_type()
    refusal = dict((type(e).errno, c) for e, c in RECORD_REFUSALS).get(errno)
    verdict = judge(error, ANSWER, SETTINGS_OF)
    if refusal is not None:
        assert verdict == Verdict(code=refusal)
    elif error.retriable:
        assert verdict == Verdict(retry=True)
    else:
        # Topic-level and client errors every answer would meet stop the worker.
        assert verdict.fatal is not None and "--answers-topic" in verdict.fatal
        assert verdict.code is None and not verdict.retry
    assert judge(error, DEAD, SETTINGS_OF).code is None


async def test_an_answer_refused_with_another_in_its_batch_is_delivered_when_sent_alone() -> None:
    topics = Topics()
    topics["answers"] = FailingTopic("answers", failures=[faust_wrapped(InvalidRecordError())])
    delivered = await delivery(topics).deliver(ANSWER, consumed())
    assert delivered is ANSWER
    assert topics["answers"].alone == [False, True]
    assert "dead" not in topics


@pytest.mark.parametrize(("error", "code"), RECORD_REFUSALS)
async def test_an_answer_refused_alone_becomes_a_dead_letter_naming_the_broker_error(
    error: KafkaError, code: ErrorCode
) -> None:
    topics = Topics()
    topics["answers"] = FailingTopic("answers", failures=[faust_wrapped(error)] * 2)
    delivered = await delivery(topics).deliver(ANSWER, consumed())
    assert delivered.dead_letter_reason == code
    [sent] = topics["dead"].sent
    assert sent["value"].startswith(f"{code}: ".encode())
    assert f"{error.message} ({error.errno})".encode() in sent["value"]
    # The dead letter goes out in the usual way: only the refused record is sent alone.
    assert topics["dead"].alone == [False]


async def test_a_dead_letter_refused_as_invalid_alone_is_fatal() -> None:
    topics = Topics()
    topics["answers"] = FailingTopic("answers", failures=[InvalidRecordError()] * 2)
    topics["dead"] = FailingTopic("dead", failures=[InvalidRecordError()] * 2)
    with pytest.raises(DeliveryError, match="--dead-letter-topic"):
        await delivery(topics).deliver(ANSWER, consumed())
    assert topics["dead"].alone == [False, True]
