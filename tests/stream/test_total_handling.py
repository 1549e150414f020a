"""Handling is total: every consumed record ends in exactly one record that fits, whatever it holds.

No broker: the worker's event pipeline is built from its settings with a batcher that answers
without a model (or the real one, on the tiny engine) and topics that record what would go out.
Cases are generated (hypothesis), and faults are injected at each stage of one record's way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from opentelemetry.sdk.trace import TracerProvider

from tests.support.fake_stream import FakeMessage, FakeTopics, Sent, WordBatcher
from worker.batching.batcher import MicroBatcher
from worker.batching.layout import batch_limits
from worker.config import Settings
from worker.errors import ErrorCode
from worker.events import contracts, encodable_text, load_schema
from worker.model.loading import load_engine
from worker.observability.log_rate import RepeatFilter
from worker.observability.metrics import WorkerMetrics
from worker.observability.tracing import NO_TRACING
from worker.observability.tracing_interface import Tracing
from worker.observability.tracing_otel import OtelTracing
from worker.qa import QAOptions
from worker.stream import handlers, pipeline
from worker.stream import outgoing as outgoing_module
from worker.stream.envelope import MAX_REQUEST_BYTES
from worker.stream.handlers import Answerer
from worker.stream.outgoing import Outgoing
from worker.stream.pipeline import EventPipeline
from worker.stream.records import ReadAt
from worker.stream.reply_routing import ReplyRouting
from worker.tagging import load_question_sets, parse_topic_sets

QUESTIONS, DOCUMENTS = "questions", "docs"
ANSWERS, TAGS, DEAD_LETTERS = "answers", "tags", "dead-letters"
# Kafka's default message.max.bytes: the largest record a broker accepts by default.
KAFKA_MESSAGE_MAX_BYTES = 1_048_588
SCHEMAS = {
    ANSWERS: Draft202012Validator(load_schema("answer")),
    TAGS: Draft202012Validator(load_schema("tags")),
    DEAD_LETTERS: Draft202012Validator(load_schema("dead-letter")),
    "replies.team": Draft202012Validator(load_schema("answer")),
}
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
_T = TypeVar("_T")


class Loop:
    """An event loop of its own in a thread, so synchronous hypothesis tests can drive async
    code that lives longer than one example (the real batcher)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, _T], timeout: float = 60.0) -> _T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def question_set_file(folder: Path) -> Path:
    path = folder / "sets.json"
    path.write_text(
        json.dumps({"deals": {"fields": {"buyer": {"question": "Who bought?"}}}}), "utf-8"
    )
    return path


@dataclass
class Subject:
    """A worker's event pipeline, and what it was built with."""

    pipeline: EventPipeline
    topics: FakeTopics
    metrics: WorkerMetrics
    tracing: Tracing
    batcher: Answerer


def build_subject(folder: Path, tracing: Tracing, batcher: Answerer | None = None) -> Subject:
    """The pipeline a worker with these settings builds, sending to fake topics; its batcher
    answers without a model unless `batcher` is given."""
    worker_settings = Settings(
        questions_topic=QUESTIONS,
        answers_topic=ANSWERS,
        dead_letter_topic=DEAD_LETTERS,
        tags_topic=TAGS,
        documents_topics=f"{DOCUMENTS}=deals",
        question_sets=question_set_file(folder),
        reply_topics="replies.*",
        max_question_chars=200,
        max_context_chars=5_000,
    )
    assert worker_settings.question_sets is not None
    metrics, topics = WorkerMetrics(), FakeTopics()
    answerer = batcher or WordBatcher()
    built = EventPipeline.from_settings(
        worker_settings,
        answerer,
        topics,
        {ANSWERS: "answers", DEAD_LETTERS: "dead letters", TAGS: "tags"},
        ("tiny", "sha-fake"),
        load_question_sets(worker_settings.question_sets, worker_settings.subset(QAOptions)),
        parse_topic_sets(worker_settings.documents_topics),
        metrics,
        tracing,
    )
    return Subject(built, topics, metrics, tracing, answerer)


async def handled(subject: Subject, message: FakeMessage) -> Outgoing:
    return await subject.pipeline.process(message, ReadAt(1_700_000_001.0, time.monotonic()))


def check_one_fitting_record(sent: list[Sent], outgoing: Outgoing, message: FakeMessage) -> Sent:
    """The property: one record went out, on the topic reported, within the producer's limit
    with the key and headers really sent, valid against its schema, saying what it left off."""
    assert len(sent) == 1, sent
    record = sent[0]
    assert record.topic == outgoing.topic and record.value == outgoing.value
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
        record.key, record.value, list(record.headers)
    )
    assert size <= MAX_REQUEST_BYTES
    document = json.loads(record.value)
    errors = list(SCHEMAS[record.topic].iter_errors(document))
    assert not errors, errors[0].message
    assert (outgoing.dead_letter_reason is None) == (record.topic != DEAD_LETTERS)
    if outgoing.dead_letter_reason is not None:
        assert document["error"]["code"] == outgoing.dead_letter_reason.value
        assert document["source"] == {"topic": message.topic, "partition": 0, "offset": 7}
    if "key_truncated" in document:
        assert document["key_truncated"]["size"] == len(message.key or b"")
        assert message.key is not None and message.key.startswith(record.key)
    else:
        assert record.key == message.key
    incoming = {name for name, _ in message.headers}
    out = {name for name, _ in record.headers}
    if "headers_dropped" in document:
        assert document["headers_dropped"]["count"] >= 1
    else:
        # Tracing writes its own context in place of the incoming one.
        assert incoming - {"traceparent", "tracestate", "baggage"} <= out
    return record


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


@pytest.fixture(scope="module", params=["untraced", "traced"])
def fake_subject(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, loop: Loop
) -> Subject:
    tracing = NO_TRACING if request.param == "untraced" else OtelTracing(TracerProvider())

    async def build() -> Subject:
        return build_subject(tmp_path_factory.mktemp("sets"), tracing)

    return loop.run(build())


# Generated input. Texts mix control, zero-width, bidirectional and surrogate-range characters
# (JSON escapes of lone surrogates come from json.dumps with ensure_ascii).
awkward_chars = st.sampled_from(
    ["\x00", "\x1f", "\u200b", "\u200d", "\u2028", "\ufeff", "\u202e", "\ud800", "\udfff", "é"]
)
texts = st.text(st.characters() | awkward_chars, max_size=40)
visible = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
numbers = st.one_of(
    st.integers(),
    st.sampled_from([2**53, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400, 0, -1, 1_000_001]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 1.7976931348623157e308]),
)
scalars = st.none() | st.booleans() | numbers | texts
wide_json = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(texts, inner, max_size=6),
    max_leaves=30,
)


def nested(depth: int, inner: Any, kind: str) -> Any:
    for _ in range(depth):
        inner = {"a": inner} if kind == "object" else [inner]
    return inner


deep_json = st.builds(nested, st.integers(0, 400), scalars, st.sampled_from(["object", "array"]))


def dumped(document: Any, ascii_only: bool) -> bytes:
    try:
        return json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    except ValueError:  # a float json cannot write, or an integer past the digit limit
        return b"{}"


question_fields = st.fixed_dictionaries(
    {"id": visible | texts, "question": visible | texts, "context": visible | texts},
    optional={
        "metadata": wide_json | deep_json.map(lambda deep: {"deep": deep}),
        "top_k": numbers,
        "max_answer_len": numbers,
        "null_threshold": numbers,
        "deadline_ms": numbers,
        "created_at": st.sampled_from(["2024-05-01T12:00:00Z", "2024-02-30T00:00:00Z", "x"]),
        "reply_to": st.sampled_from(["replies.team", "nope", "replies.bad name!", ""]),
        "extra": wide_json,
    },
)
document_fields = st.fixed_dictionaries(
    {"id": visible | texts, "text": visible | texts},
    optional={"metadata": wide_json, "question_set": st.sampled_from(["deals", "none"])},
)


# Events the schema accepts, whose texts and metadata still carry every awkward thing.
visible_awkward = st.builds(
    lambda word, noise: word + noise, visible, texts.filter(lambda t: "\ud800" not in t)
)
metadata = st.one_of(
    wide_json,
    deep_json.map(lambda deep: {"deep": deep}),
    st.builds(lambda items: {"wide": items}, st.lists(scalars, max_size=500)),
)
valid_questions = st.fixed_dictionaries(
    {"id": visible, "question": visible_awkward, "context": visible_awkward},
    optional={
        "metadata": metadata,
        "top_k": st.integers(1, 20),
        "reply_to": st.just("replies.team"),
        "created_at": st.just("2024-05-01T12:00:00Z"),
    },
)
valid_documents = st.fixed_dictionaries(
    {"id": visible, "text": visible_awkward}, optional={"metadata": metadata}
)


def bracket_bomb(depth: int, opener: bytes) -> bytes:
    if opener == b"[":
        return b"[" * depth + b"1" + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


values = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.builds(dumped, question_fields, st.booleans()),
    st.builds(dumped, document_fields, st.booleans()),
    st.builds(dumped, wide_json, st.booleans()),
    st.builds(dumped, deep_json, st.booleans()),
    st.builds(bracket_bomb, st.integers(0, 3_000), st.sampled_from([b"[", b"{"])),
    st.builds(lambda depth: b"[" * depth, st.integers(0, 200_000)),
    # Whole values of every size up to past the limit, in characters that escape differently.
    st.builds(
        lambda size, char: b'{"id":"q","question":"?","context":"' + char * size + b'"}',
        st.integers(0, KAFKA_MESSAGE_MAX_BYTES + 10),
        st.sampled_from([b"x", b'\\"', b"\\u0000", "\u00e9".encode()]),
    ),
)
# Sizes at, just under and just over the limits that matter, and anywhere between.
big_sizes = st.one_of(
    st.integers(0, KAFKA_MESSAGE_MAX_BYTES + 100),
    st.sampled_from(
        [
            MAX_REQUEST_BYTES - 1_000,
            MAX_REQUEST_BYTES - 100,
            MAX_REQUEST_BYTES - 1,
            MAX_REQUEST_BYTES,
            MAX_REQUEST_BYTES + 1,
            1_000_100,
            KAFKA_MESSAGE_MAX_BYTES - 1,
            KAFKA_MESSAGE_MAX_BYTES,
            KAFKA_MESSAGE_MAX_BYTES + 1,
        ]
    ),
)
keys = st.one_of(st.none(), st.binary(max_size=40), st.builds(lambda n: b"k" * n, big_sizes))
header_names = st.one_of(
    st.sampled_from(["traceparent", "tracestate", "reply-to", "baggage", "id"]),
    st.text(max_size=20),
    st.builds(lambda n: "h" * n, st.integers(0, 300_000)),
)
header_values = st.one_of(
    st.none(),
    st.just(TRACEPARENT),
    st.binary(max_size=40),
    st.builds(lambda n: b"v" * n, big_sizes),
)
headers = st.lists(st.tuples(header_names, header_values), max_size=6)


def messages(
    value: st.SearchStrategy[bytes | None], topic: st.SearchStrategy[str]
) -> st.SearchStrategy[FakeMessage]:
    """Records of `value` on `topic`, with any of the keys and headers above."""
    return st.builds(FakeMessage, value=value, key=keys, headers=headers, topic=topic)


records = st.one_of(
    messages(values, st.sampled_from([QUESTIONS, DOCUMENTS])),
    messages(st.builds(dumped, valid_questions, st.booleans()), st.just(QUESTIONS)),
    messages(st.builds(dumped, valid_documents, st.booleans()), st.just(DOCUMENTS)),
)
HYPOTHESIS = settings(
    max_examples=500,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check_handled_with_one_fitting_record(
    subject: Subject, loop: Loop, message: FakeMessage
) -> None:
    """`subject` handles `message` with one fitting record, and not as an internal error."""
    sent = subject.topics.sent
    sent.clear()
    outgoing = loop.run(handled(subject, message))
    check_one_fitting_record(sent, outgoing, message)
    # Only the worker's own faults make internal errors: none of these inputs is one.
    assert outgoing.dead_letter_reason is not ErrorCode.INTERNAL_ERROR, outgoing.value[:300]
    describe_case(message, outgoing, sent[0])


@HYPOTHESIS
@given(message=records)
def test_every_record_gets_exactly_one_fitting_record(
    fake_subject: Subject, loop: Loop, message: FakeMessage
) -> None:
    check_handled_with_one_fitting_record(fake_subject, loop, message)


def describe_case(message: FakeMessage, outgoing: Outgoing, record: Sent) -> None:
    """Labels for hypothesis's statistics, to show the draws reach every part of the space."""
    event(f"outcome: {outgoing.dead_letter_reason or record.topic}")
    largest = max(
        [
            len(message.value or b""),
            len(message.key or b""),
            *(len(v or b"") for _, v in message.headers),
        ]
    )
    event(f"largest part: {'>= 999,000 bytes' if largest >= 999_000 else '< 999,000 bytes'}")
    document = json.loads(record.value)
    event(
        f"key cut: {'key_truncated' in document}; headers dropped: {'headers_dropped' in document}"
    )


@settings(HYPOTHESIS, max_examples=100)
@given(message=records)
def test_the_real_tiny_engine_answers_generated_records_with_one_fitting_record(
    real_subject: Subject, loop: Loop, message: FakeMessage
) -> None:
    check_handled_with_one_fitting_record(real_subject, loop, message)


@pytest.fixture(scope="module")
def real_subject(
    exported_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, loop: Loop
) -> Iterator[Subject]:
    engine_settings = Settings(model=exported_models["bert"], precision="fp32")
    engine = load_engine(engine_settings)
    batcher = MicroBatcher(engine, batch_limits(engine_settings))

    async def build() -> Subject:
        await batcher.start()
        return build_subject(tmp_path_factory.mktemp("sets"), NO_TRACING, batcher)

    built = loop.run(build())
    yield built
    loop.run(batcher.stop())


def test_a_deep_or_huge_keyed_record_gets_its_dead_letter_with_what_was_left_off(
    fake_subject: Subject, loop: Loop
) -> None:
    subject, topics = fake_subject, fake_subject.topics
    deep = json.dumps(
        {"id": "deep", "question": "Who?", "context": "Ada", "metadata": nested(300, 1, "object")}
    ).encode()
    topics.sent.clear()
    message = FakeMessage(deep, b"k", [])
    outgoing = loop.run(handled(subject, message))
    letter = json.loads(check_one_fitting_record(topics.sent, outgoing, message).value)
    assert letter["error"]["code"] == "invalid_event"
    assert (
        "64 levels" in letter["error"]["message"]
        and "--max-json-depth" in letter["error"]["message"]
    )
    # A key that leaves no room for even an empty dead letter: cut, and said so.
    topics.sent.clear()
    message = FakeMessage(
        b"not json", b"k" * 1_000_100, [("traceparent", TRACEPARENT), ("big", b"v" * 5)]
    )
    outgoing = loop.run(handled(subject, message))
    record = check_one_fitting_record(topics.sent, outgoing, message)
    letter = json.loads(record.value)
    assert letter["error"]["code"] == "invalid_json"
    kept = letter["key_truncated"]["kept"]
    assert letter["key_truncated"]["size"] == 1_000_100 and 0 < kept == len(record.key)
    assert letter["headers_dropped"]["headers"] == [{"name": "big", "size": 5}]
    assert "traceparent" in {name for name, _ in record.headers}
    # An answer whose header leaves it too little room goes without that header.
    topics.sent.clear()
    good = json.dumps({"id": "ok", "question": "Who?", "context": "Ada wrote it."}).encode()
    message = FakeMessage(good, b"k", [("huge", b"v" * (MAX_REQUEST_BYTES - 100)), ("small", b"s")])
    outgoing = loop.run(handled(subject, message))
    record = check_one_fitting_record(topics.sent, outgoing, message)
    answer = json.loads(record.value)
    assert answer["id"] == "ok" and record.topic == ANSWERS
    assert answer["headers_dropped"] == {
        "count": 1,
        "size": len("huge") + MAX_REQUEST_BYTES - 100,
        "headers": [{"name": "huge", "size": MAX_REQUEST_BYTES - 100}],
    }
    assert [name for name, _ in record.headers if name != "traceparent"] == ["small"]


# Fault injection: each stage of one record's way raises, for that record alone.


class Injected(Exception):
    """An exception nothing in the worker knows about."""


@dataclass
class Fault:
    """Raises `error` from the patched callable's first call once `armed`."""

    error: BaseException
    armed: bool = False

    def wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def faulty(*args: Any, **kwargs: Any) -> Any:
            if self.armed:
                self.armed = False
                raise self.error
            return original(*args, **kwargs)

        return faulty


# stage -> (object, attribute) whose callable raises.
STAGES: dict[str, Callable[[Subject], tuple[Any, str]]] = {
    "header reading": lambda subject: (pipeline, "message_headers"),
    "metrics received": lambda subject: (subject.metrics, "event_received"),
    "trace event": lambda subject: (subject.tracing, "event"),
    "parse": lambda subject: (handlers, "parse_question"),
    "decode": lambda subject: (contracts, "decode_json"),
    "validate": lambda subject: (contracts.QUESTION, "validate"),
    "reply routing": lambda subject: (ReplyRouting, "requested"),
    "answer quality metric": lambda subject: (subject.metrics, "answer_scored"),
    "answer building": lambda subject: (handlers, "answer_event"),
    "serialization": lambda subject: (outgoing_module, "to_bytes"),
    "sizing": lambda subject: (outgoing_module, "fit_envelope"),
    "trace sizing": lambda subject: (subject.tracing, "sized_headers"),
    "trace produce": lambda subject: (subject.tracing, "produce"),
    "delivery": lambda subject: (subject.pipeline.delivery, "send"),
}
ERRORS = [
    Injected("boom\nwith a second line"),
    KeyError("missing"),
    RecursionError("maximum recursion depth exceeded"),
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    ZeroDivisionError("division by zero"),
]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("error", ERRORS, ids=lambda error: type(error).__name__)
def test_a_fault_at_any_stage_dead_letters_that_record_alone(
    fake_subject: Subject,
    loop: Loop,
    monkeypatch: pytest.MonkeyPatch,
    stage: str,
    error: Exception,
) -> None:
    subject, topics = fake_subject, fake_subject.topics
    target, name = STAGES[stage](subject)
    fault = Fault(error)
    monkeypatch.setattr(target, name, fault.wrap(getattr(target, name)))

    def event(event_id: str) -> FakeMessage:
        value = {"id": event_id, "question": "Who?", "context": f"{event_id} wrote it."}
        return FakeMessage(json.dumps(value).encode(), event_id.encode(), [("id", b"1")])

    results = []
    for event_id, armed in (("before", False), ("faulty", True), ("after", False)):
        topics.sent.clear()
        fault.armed = armed
        message = event(event_id)
        outgoing = loop.run(handled(subject, message))
        fault.armed = False
        results.append((check_one_fitting_record(topics.sent, outgoing, message), outgoing))
    (before, _), (faulty, letter), (after, _) = results
    assert [before.topic, after.topic] == [ANSWERS, ANSWERS]
    assert [json.loads(before.value)["answer"], json.loads(after.value)["answer"]] == [
        "before",
        "after",
    ]
    assert faulty.topic == DEAD_LETTERS and letter.dead_letter_reason is ErrorCode.INTERNAL_ERROR
    reported = json.loads(faulty.value)["error"]["message"]
    assert type(error).__qualname__ in reported and encodable_text(str(error)) in reported
    assert json.loads(faulty.value)["id"] == "faulty"


class Passed(logging.Handler):
    """Keeps the records its repeat filter lets through."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(RepeatFilter(interval_s=3600))
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_internal_errors_are_counted_and_logged_once_per_cause(
    fake_subject: Subject, loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject, topics = fake_subject, fake_subject.topics
    passed = Passed()
    logging.getLogger(outgoing_module.__name__).addHandler(passed)
    raised: list[Exception] = [Injected("a"), Injected("b"), KeyError("c"), Injected("d")]

    def answer_event(*args: Any, **kwargs: Any) -> Any:
        raise raised.pop(0)

    monkeypatch.setattr(handlers, "answer_event", answer_event)

    def dead_lettered() -> float:
        sample = subject.metrics.registry.get_sample_value(
            "qa_worker_events_dead_lettered_total", {"reason": "internal_error"}
        )
        return sample or 0.0

    before = dead_lettered()
    value = json.dumps({"id": "q", "question": "Who?", "context": "Ada wrote it."}).encode()
    try:
        for offset in range(4):
            loop.run(handled(subject, FakeMessage(value, b"k", [], partition=9, offset=offset)))
    finally:
        logging.getLogger(outgoing_module.__name__).removeHandler(passed)
    assert dead_lettered() - before == 4
    codes = [json.loads(sent.value)["error"]["code"] for sent in topics.sent[-4:]]
    assert codes == ["internal_error"] * 4
    causes = [
        record.getMessage() for record in passed.records if "internal_error" in record.getMessage()
    ]
    assert len(causes) == 2, causes
    assert "raised Injected" in causes[0] and "raised KeyError" in causes[1]


def test_a_dead_letter_that_cannot_be_built_becomes_a_minimal_one_that_fits(
    fake_subject: Subject, loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject, topics = fake_subject, fake_subject.topics

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise Injected("no dead letter today")

    monkeypatch.setattr(outgoing_module, "dead_letter_event", broken)
    topics.sent.clear()
    message = FakeMessage(b"not json", b"k" * 1_000_100, [("h", b"v" * 10)])
    outgoing = loop.run(handled(subject, message))
    record = check_one_fitting_record(topics.sent, outgoing, message)
    letter = json.loads(record.value)
    assert letter["error"]["code"] == "invalid_json"
    assert "its full dead letter could not be built: Injected" in letter["error"]["message"]
    assert letter["payload_size"] == len(b"not json") and letter["payload_truncated"] is True
    assert letter["key_truncated"] == {"size": 1_000_100, "kept": 0} and record.key == b""
    assert letter["headers_dropped"] == {"count": 1, "size": 11, "headers": []}
    assert [name for name, _ in record.headers if name != "traceparent"] == []
