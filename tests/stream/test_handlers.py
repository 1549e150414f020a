"""Handlers with no faust and no model: a message in, the record that answers it out."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from opentelemetry.sdk.trace import TracerProvider

from tests.support.fake_stream import FakeMessage, WordBatcher
from tests.support.windows import token_window
from worker.batching.batcher import MicroBatcher
from worker.batching.plan import BatchLimits
from worker.config import Settings
from worker.errors import DeadlineExceeded, ErrorCode, EventError
from worker.observability.tracing import NO_TRACING
from worker.observability.tracing_interface import Tracing
from worker.observability.tracing_otel import OtelTracing
from worker.qa import QAOptions, QAResult
from worker.qa.decode import WindowLogits
from worker.qa.windows import EncodedQuestion, Window
from worker.stream.envelope import MAX_REQUEST_BYTES, value_room
from worker.stream.handlers import EventHandlers
from worker.stream.outgoing import Outgoing, OutgoingRecords
from worker.stream.records import ReadAt
from worker.tagging import QuestionSet, TagField


def consumed(value: bytes | None, **fields: Any) -> FakeMessage:
    """A message read at offset 42 of partition 1 of qa-questions, which the answers name."""
    return FakeMessage(value, **{"topic": "qa-questions", "partition": 1, "offset": 42, **fields})


SETS = {
    "deals": QuestionSet(
        "deals",
        (
            TagField("buyer", "Who bought?", QAOptions()),
            TagField("price", "How much?", QAOptions()),
        ),
    )
}


def handlers(
    batcher: WordBatcher, tracing: Tracing | None = None, **settings: Any
) -> EventHandlers:
    given = Settings(**settings)
    records = OutgoingRecords(given.dead_letter_topic, given.max_json_values, tracing or NO_TRACING)
    topic_sets = {"docs": None, "deals-in": "deals"}
    return EventHandlers(given, batcher, records, "model-a", "sha-1", SETS, topic_sets)


def read_at(wall: float) -> ReadAt:
    """A read at `wall` on the wall clock, now on the monotonic one."""
    return ReadAt(wall, time.monotonic())


# Read at the epoch: the messages' own timestamps are what the records carry.
EPOCH = read_at(0.0)


def question(**fields: Any) -> bytes:
    return json.dumps(
        {"id": "q1", "question": "Who?", "context": "Ada wrote it.", **fields}
    ).encode()


async def test_a_question_becomes_an_answer_on_the_answers_topic() -> None:
    batcher = WordBatcher()
    outgoing = await handlers(batcher, top_k=2).answer_question(consumed(question()), EPOCH)
    assert outgoing.topic == "qa-answers" and outgoing.dead_letter_reason is None
    answer = json.loads(outgoing.value)
    assert (answer["id"], answer["answer"], answer["model"]) == (
        "q1",
        "Ada",
        {"name": "model-a", "checksum": "sha-1"},
    )
    assert outgoing.queue_s == 0.25 and outgoing.event_time == 1_700_000_000.0
    assert batcher.asked == [("Who?", "Ada wrote it.", QAOptions(top_k=2))]


class WordEngine:
    """A model-free engine for a real MicroBatcher: a window per word of the context, answered
    with the first word."""

    streams = 1

    def encode(self, question: str, context: str) -> EncodedQuestion:
        windows = [
            token_window(ids)
            for ids in (np.arange(len(word) + 2, dtype=np.int64) for word in context.split())
        ]
        return EncodedQuestion(question, context, windows, context_sequence=1)

    def infer(self, windows: Sequence[Window], stream: int) -> list[WindowLogits]:
        zeros = [np.zeros(len(window), dtype=np.float32) for window in windows]
        return [WindowLogits(item, item) for item in zeros]

    def decode(
        self, encoded: EncodedQuestion, logits: Sequence[WindowLogits], options: QAOptions
    ) -> QAResult:
        word = encoded.context.split()[0]
        return QAResult(word, 0.9, 0, len(word), False, 0.1)


STAGES = [
    "parsed",
    "tokenize_started",
    "tokenized",
    "queued",
    "batch_started",
    "inferred",
    "decode_started",
    "decoded",
]


async def test_an_answer_through_the_batcher_carries_its_stages_in_order() -> None:
    sent_at = time.time() - 0.5
    async with MicroBatcher(WordEngine(), BatchLimits(batch_size=2)) as batcher:
        answerer = handlers(batcher)  # type: ignore[arg-type]
        messages = [
            consumed(question(id=f"q{i}", context="Ada wrote it " * i), timestamp=sent_at)
            for i in range(1, 6)
        ]
        received = time.time()
        outgoing = await asyncio.gather(
            *(answerer.answer_question(m, read_at(received)) for m in messages)
        )
    for record in outgoing:
        assert record.dead_letter_reason is None
        answer = json.loads(record.value)
        assert answer["answer"] == "Ada"
        timings = answer["timings"]
        stages = timings["stages_ms"]
        assert list(stages) == STAGES
        offsets = list(stages.values())
        assert offsets == sorted(offsets) and offsets[0] >= 0
        # The answer is made after its last stage, on a clock that may differ by rounding.
        assert offsets[-1] <= timings["total_ms"] + 1
        assert timings["read_ms"] == pytest.approx((received - sent_at) * 1000, abs=1)
        # Queue wait runs from the call to the batcher to the start of the event's last batch.
        waited = stages["batch_started"] - timings["queue_ms"]
        assert stages["parsed"] - 1 <= waited <= stages["tokenize_started"] + 1


async def test_an_unreadable_message_is_dead_lettered_with_its_source() -> None:
    batcher = WordBatcher()
    outgoing = await handlers(batcher).answer_question(consumed(b"{not json"), EPOCH)
    assert outgoing.topic == "qa-dead-letters"
    assert outgoing.dead_letter_reason is ErrorCode.INVALID_JSON
    record = json.loads(outgoing.value)
    assert record["error"]["code"] == "invalid_json"
    assert record["source"] == {"topic": "qa-questions", "partition": 1, "offset": 42}
    assert batcher.asked == []


async def test_a_refused_reply_topic_is_dead_lettered_before_inference() -> None:
    batcher = WordBatcher()
    message = consumed(question(reply_to="other"))
    outgoing = await handlers(batcher, reply_topics="replies.*").answer_question(message, EPOCH)
    assert outgoing.dead_letter_reason is ErrorCode.REPLY_TOPIC_NOT_ALLOWED
    assert "replies.*" in json.loads(outgoing.value)["error"]["message"]
    assert batcher.asked == []


async def test_an_allowed_reply_topic_receives_the_answer() -> None:
    message = consumed(question(), headers=[("reply-to", b"replies.me")])
    outgoing = await handlers(WordBatcher(), reply_topics="replies.*").answer_question(
        message, EPOCH
    )
    assert outgoing.topic == "replies.me" and outgoing.dead_letter_reason is None


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (DeadlineExceeded("late"), ErrorCode.DEADLINE_EXCEEDED),
        (EventError(ErrorCode.QUESTION_TOO_LONG, "no room"), ErrorCode.QUESTION_TOO_LONG),
        (RuntimeError("onnx broke"), ErrorCode.INFERENCE_FAILED),
    ],
)
async def test_failures_while_answering_are_dead_lettered(
    error: Exception, code: ErrorCode
) -> None:
    message = consumed(question(deadline_ms=1000))
    outgoing = await handlers(WordBatcher(error)).answer_question(message, EPOCH)
    assert outgoing.dead_letter_reason is code
    assert json.loads(outgoing.value)["error"]["code"] == code.value


async def test_a_document_is_tagged_with_its_topics_default_set() -> None:
    batcher = WordBatcher()
    document = json.dumps({"id": "d1", "text": "Acme paid 5."}).encode()
    outgoing = await handlers(batcher).tag_document(consumed(document, topic="deals-in"), EPOCH)
    assert outgoing.topic == "qa-tags"
    tags = json.loads(outgoing.value)
    assert tags["question_set"] == "deals" and set(tags["tags"]) == {"buyer", "price"}
    assert [asked[0] for asked in batcher.asked] == ["Who bought?", "How much?"]
    # The set's questions take their partition's turns as one event.
    (lane, event), (other_lane, other_event) = batcher.turns
    assert lane == other_lane == ("deals-in", 1)
    assert event is other_event is not None


async def test_questions_take_the_turns_of_their_partition_each_as_an_event_of_its_own() -> None:
    batcher = WordBatcher()
    for partition in (0, 3, 3):
        message = consumed(question(), topic="qa-questions", partition=partition)
        outgoing = await handlers(batcher).answer_question(message, EPOCH)
        assert outgoing.topic == "qa-answers"
    assert batcher.turns == [(("qa-questions", 0), None), *[(("qa-questions", 3), None)] * 2]


@pytest.mark.parametrize(
    ("topic", "fields", "code"),
    [
        ("docs", {}, ErrorCode.MISSING_QUESTION_SET),
        ("docs", {"question_set": "nope"}, ErrorCode.UNKNOWN_QUESTION_SET),
    ],
)
async def test_a_document_without_a_usable_set_is_dead_lettered(
    topic: str, fields: dict[str, str], code: ErrorCode
) -> None:
    document = json.dumps({"id": "d1", "text": "Acme paid 5.", **fields}).encode()
    outgoing = await handlers(WordBatcher()).tag_document(consumed(document, topic=topic), EPOCH)
    assert outgoing.dead_letter_reason is code and outgoing.topic == "qa-dead-letters"


async def answer_with_metadata(metadata_text: str) -> tuple[Outgoing, int]:
    message = consumed(question(metadata={"note": metadata_text}))
    return await handlers(WordBatcher()).answer_question(message, EPOCH), value_room(message)


@pytest.mark.parametrize("char", ["x", '"'], ids=["plain", "escaped"])
async def test_an_answer_too_large_to_send_is_an_answer_too_large_dead_letter(char: str) -> None:
    # Each '"' is two bytes once JSON-escaped.
    per_char = len(json.dumps(char)) - 2
    probe, room = await answer_with_metadata("")
    # Timings vary in width, so aim a few bytes inside the limit and check both sides of it.
    fitting = (room - len(probe.value) - 16) // per_char
    outgoing, _ = await answer_with_metadata(char * fitting)
    assert outgoing.dead_letter_reason is None and len(outgoing.value) <= room
    over = (room - len(probe.value) + 16) // per_char + 1
    outgoing, _ = await answer_with_metadata(char * over)
    assert outgoing.dead_letter_reason is ErrorCode.ANSWER_TOO_LARGE
    assert outgoing.topic == "qa-dead-letters" and len(outgoing.value) <= room
    letter = json.loads(outgoing.value)
    assert letter["payload_truncated"] is True
    assert "maximum request size" in letter["error"]["message"]


async def test_a_record_with_large_key_and_headers_leaves_less_room() -> None:
    plain = consumed(question())
    heavy = consumed(question(), key=b"k" * 1000, headers=[("trace", b"t" * 2000)])
    assert value_room(plain) - value_room(heavy) >= 3000
    assert value_room(heavy) < MAX_REQUEST_BYTES - 3000


@pytest.mark.parametrize(
    "context",
    ["lorem ipsum " * 83_333, '"' * 300_000],
    ids=["1MB-context", "300k-quotes"],
)
async def test_a_huge_event_gets_a_dead_letter_that_fits(context: str) -> None:
    message = consumed(question(context=context))
    outgoing = await handlers(WordBatcher()).answer_question(message, EPOCH)
    assert outgoing.dead_letter_reason is ErrorCode.CONTEXT_TOO_LARGE
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
        message.key, outgoing.value, list(message.headers)
    )
    assert size <= MAX_REQUEST_BYTES
    letter = json.loads(outgoing.value)
    assert (letter["id"], letter["payload_size"]) == ("q1", len(message.value))
    assert letter["payload_truncated"] is True


@pytest.mark.parametrize(
    ("settings", "metadata", "held"),
    [
        ({}, {"a": [{}] * 290_000}, 290_006),
        ({"max_json_values": 25}, {"a": [0] * 20}, 26),
    ],
    ids=["880kB-of-empty-objects", "configured-limit"],
)
async def test_an_event_of_too_many_values_is_an_invalid_event_dead_letter(
    settings: dict[str, Any], metadata: dict[str, Any], held: int
) -> None:
    batcher = WordBatcher()
    outgoing = await handlers(batcher, **settings).answer_question(
        consumed(question(metadata=metadata)), EPOCH
    )
    assert outgoing.dead_letter_reason is ErrorCode.INVALID_EVENT
    assert outgoing.topic == "qa-dead-letters" and batcher.asked == []
    letter = json.loads(outgoing.value)
    limit = settings.get("max_json_values", Settings().max_json_values)
    assert letter["error"]["message"].startswith(
        f"the value holds {held} JSON values, over the limit of {limit} (--max-json-values"
    )
    # Its id would take decoding the event the limit refuses.
    assert "id" not in letter


async def test_an_event_at_the_configured_value_limit_is_answered() -> None:
    message = consumed(question(metadata={"a": [0] * 19}))  # 25 values
    outgoing = await handlers(WordBatcher(), max_json_values=25).answer_question(message, EPOCH)
    assert outgoing.dead_letter_reason is None and outgoing.topic == "qa-answers"


TRACESTATE = ("tracestate", b"vendor=" + b"v" * 200)
# Incoming trace headers, and the bytes records are then sized under what they could be: a
# tracestate with no traceparent is counted, though it is dropped on the way out.
INCOMING_TRACE_HEADERS = {
    "untraced": ([], 0),
    "traced": (
        [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), TRACESTATE],
        0,
    ),
    "only-tracestate": ([TRACESTATE], 220),
}


def sent_size(
    tracing: OtelTracing,
    message: FakeMessage,
    value: bytes,
    kept: list[tuple[str, bytes]] | None = None,
) -> int:
    """The size aiokafka checks for `value` sent with the headers tracing gives it (for the
    message's headers, or the `kept` ones)."""
    with tracing.event(message, list(message.headers), "group"), tracing.produce("qa-answers"):
        headers = tracing.outgoing_headers(list(message.headers) if kept is None else kept)
    if kept is not None:
        # Delivery sends no header the envelope dropped, though tracing writes it anew.
        dropped = {name for name, _ in message.headers} - {name for name, _ in kept}
        headers = [(name, value) for name, value in headers if name not in dropped]
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(message.key, value, list(headers))


@pytest.mark.parametrize(
    ("incoming", "reserved"), INCOMING_TRACE_HEADERS.values(), ids=INCOMING_TRACE_HEADERS
)
async def test_records_leave_room_for_the_trace_headers_tracing_adds(
    incoming: list[tuple[str, bytes]], reserved: int
) -> None:
    tracing = OtelTracing(TracerProvider())
    traced = handlers(WordBatcher(), tracing)
    # A dead letter is cut to fill its room; the producer span's traceparent must still fit.
    huge = consumed(question(context="lorem ipsum " * 83_333), headers=incoming)
    letter = await traced.answer_question(huge, EPOCH)
    assert letter.dead_letter_reason is ErrorCode.CONTEXT_TOO_LARGE
    limit = MAX_REQUEST_BYTES
    assert limit - 64 - reserved < sent_size(tracing, huge, letter.value) <= limit

    def with_metadata(text: str) -> FakeMessage:
        return consumed(question(metadata={"note": text}), headers=incoming)

    probe = await traced.answer_question(with_metadata(""), EPOCH)
    room = MAX_REQUEST_BYTES - sent_size(tracing, with_metadata(""), probe.value)
    # Timings vary in width, so aim a few bytes inside the limit and check both sides of it.
    fitting = with_metadata("x" * (room - reserved - 16))
    answer = await traced.answer_question(fitting, EPOCH)
    assert answer.dead_letter_reason is None
    assert sent_size(tracing, fitting, answer.value) <= MAX_REQUEST_BYTES
    over_message = with_metadata("x" * (room - reserved + 16))
    over = await traced.answer_question(over_message, EPOCH)
    droppable = [(name, len(value)) for name, value in incoming if name != "traceparent"]
    if droppable:
        # The incoming tracestate is what leaves too little room: the answer goes without it.
        assert over.dead_letter_reason is None and over.envelope is not None
        assert json.loads(over.value)["headers_dropped"]["headers"] == [
            {"name": name, "size": size} for name, size in droppable
        ]
        assert sent_size(tracing, over_message, over.value, over.envelope.headers) <= limit
    else:
        assert over.dead_letter_reason is ErrorCode.ANSWER_TOO_LARGE
    far_over = await traced.answer_question(with_metadata("x" * (room + 1_000)), EPOCH)
    assert far_over.dead_letter_reason is ErrorCode.ANSWER_TOO_LARGE


@pytest.mark.parametrize("reply_to", ["replies.bad name!", "replies." + "x" * 250, ".."])
async def test_an_invalid_reply_topic_is_dead_lettered_before_inference(reply_to: str) -> None:
    batcher = WordBatcher()
    message = consumed(question(reply_to=reply_to))
    outgoing = await handlers(batcher, reply_topics="*").answer_question(message, EPOCH)
    assert outgoing.dead_letter_reason is ErrorCode.INVALID_REPLY_TOPIC
    assert "not a valid Kafka topic name" in json.loads(outgoing.value)["error"]["message"]
    assert batcher.asked == []


async def test_a_reply_to_header_that_is_not_utf8_is_an_invalid_reply_topic() -> None:
    batcher = WordBatcher()
    message = consumed(question(), headers=[("reply-to", b"replies.\xff")])
    outgoing = await handlers(batcher, reply_topics="*").answer_question(message, EPOCH)
    assert outgoing.dead_letter_reason is ErrorCode.INVALID_REPLY_TOPIC
    assert "replies.\\\\xff" in json.loads(outgoing.value)["error"]["message"]
    assert batcher.asked == []


@pytest.mark.parametrize("reply_to", ["qa-questions", "docs", "deals-in", "qa-dead-letters"])
async def test_no_pattern_lets_an_answer_go_to_a_topic_the_worker_reads_or_dead_letters_to(
    reply_to: str,
) -> None:
    batcher = WordBatcher()
    message = consumed(question(reply_to=reply_to))
    outgoing = await handlers(batcher, reply_topics="*").answer_question(message, EPOCH)
    assert outgoing.dead_letter_reason is ErrorCode.REPLY_TOPIC_NOT_ALLOWED
    assert (
        "a topic the worker reads or dead-letters to"
        in json.loads(outgoing.value)["error"]["message"]
    )
    assert batcher.asked == []
