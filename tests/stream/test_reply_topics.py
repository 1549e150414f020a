"""Reply topics: asked about without being created, and what is kept of them is bounded.

The broker tests run on tansu, which creates any topic a metadata request names unless the
request says `allow_auto_topic_creation=false` (its auto-create is on and has no switch to turn
it off; each test shows first that it is on). A broker with auto-create off answers the worker's
requests as tansu does, since every request of the worker's says false.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import string
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import (
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from tests.support.fake_stream import DeadLettering, FailingTopic, FakeMessage
from tests.support.streaming import (
    ANSWERS,
    DEAD_LETTERS,
    QUESTIONS,
    TopicWatcher,
    create_topics,
    produce,
    wait_until,
    worker_settings,
)
from worker.config import Settings
from worker.embedded.broker import EmbeddedBroker
from worker.errors import ErrorCode
from worker.model.loading import load_engine
from worker.observability.metrics import WorkerMetrics
from worker.stream import QAWorker
from worker.stream.app import Topics, build_app
from worker.stream.delivery import RETRIED_REPLY_TOPIC, Delivery, TopicDirectory
from worker.stream.faust_private import aiokafka_producer, install_non_creating_metadata
from worker.stream.outgoing import Outgoing
from worker.stream.reachability import BrokerWatch
from worker.stream.reply_routing import REPLY_TOPICS_KNOWN, KnownTopics
from worker.stream.topic_metadata import NonCreatingMetadataRequest, topic_refusal

SETTINGS_OF = {ANSWERS: "--answers-topic", DEAD_LETTERS: "--dead-letter-topic"}
# Kafka's longest topic name.
MOST_TOPIC_CHARS = 249


def consumed() -> FakeMessage:
    """The question each delivery here answers."""
    return FakeMessage(b'{"id": "q1"}', timestamp=1.0)


def dead_letter(message: Any, event_time: float, code: ErrorCode, reason: str) -> Outgoing:
    value = json.dumps({"code": code.value, "reason": reason}).encode()
    return Outgoing(DEAD_LETTERS, value, event_time, dead_letter_reason=code)


def answer(topic: str) -> Outgoing:
    return Outgoing(topic, b'{"id": "q1", "answer": "Ada"}', 1.0)


# known topics, least recently used first


@pytest.mark.parametrize("capacity", [1, 2, 5])
def test_known_topics_keep_at_most_their_capacity_dropping_the_least_recently_used(
    capacity: int,
) -> None:
    known = KnownTopics(capacity)
    names = [f"t{index}" for index in range(capacity + 1)]
    # Under and at the capacity nothing falls out.
    for name in names[:capacity]:
        assert known.add(name) == []
    assert len(known) == capacity
    # The first is used again, so the second is now the least recently used.
    assert known.touch(names[0])
    expected = names[1] if capacity > 1 else names[0]
    # Over it by one, exactly one falls out.
    assert known.add(names[capacity]) == [expected]
    assert len(known) == capacity
    assert expected not in known and names[capacity] in known
    assert not known.touch(expected)


def test_known_topics_add_what_is_known_again_without_dropping_anything() -> None:
    known = KnownTopics(2)
    known.add("a")
    known.add("b")
    assert known.add("a") == []
    assert known.add("c") == ["b"]
    known.discard("a")
    known.discard("never")
    assert len(known) == 1 and "c" in known


@pytest.mark.parametrize("capacity", [0, -1])
def test_known_topics_need_room_for_one(capacity: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        KnownTopics(capacity)


def test_the_bound_is_the_documented_one() -> None:
    documented = Path(__file__).resolve().parents[2] / "docs" / "delivery.md"
    assert f"at most {REPLY_TOPICS_KNOWN:,} reply topics" in documented.read_text()


# delivery with a directory that answers for the broker


@dataclass
class FakeDirectory:
    """Topics as a broker holding `existing`; `refusals` are answered first, one per ask."""

    existing: set[str] = field(default_factory=set)
    refusals: list[KafkaError] = field(default_factory=list)
    topics: dict[str, FailingTopic] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)

    def __call__(self, name: str) -> FailingTopic:
        return self.topics.setdefault(name, FailingTopic(name))

    async def refusal(self, name: str) -> KafkaError | None:
        self.asked.append(name)
        if self.refusals:
            refusal = self.refusals.pop(0)
            if refusal.retriable and not isinstance(refusal, UnknownTopicOrPartitionError):
                raise refusal
            return refusal
        return None if name in self.existing else UnknownTopicOrPartitionError(name)

    def forget(self, name: str) -> None:
        self.forgotten.append(name)

    def sent_to(self, name: str) -> int:
        return len(self.topics[name].sent) if name in self.topics else 0


@dataclass
class Observer:
    retried: list[str] = field(default_factory=list)
    known: Any = None

    def delivery_retried(self, topic: str) -> None:
        self.retried.append(topic)

    def watch_reply_topics_known(self, count: Any) -> None:
        self.known = count


def delivery_over(
    directory: FakeDirectory, known: int = REPLY_TOPICS_KNOWN, observer: Observer | None = None
) -> DeadLettering:
    sender = Delivery(
        directory,
        settings_of=SETTINGS_OF,
        observer=observer,
        first_backoff_s=0.001,
        max_backoff_s=0.002,
        reply_topics_known=known,
    )
    return DeadLettering(sender, dead_letter)


def test_the_worker_topics_are_a_directory_and_a_bare_callable_is_not() -> None:
    assert isinstance(FakeDirectory(), TopicDirectory)
    assert not isinstance({}.__getitem__, TopicDirectory)


async def test_a_missing_reply_topic_is_a_dead_letter_and_nothing_is_sent_to_it() -> None:
    directory = FakeDirectory()
    sent = await delivery_over(directory).deliver(answer("replies.gone"), consumed())
    assert sent.dead_letter_reason is ErrorCode.REPLY_TOPIC_UNKNOWN
    reason = json.loads(sent.value)["reason"]
    assert "UNKNOWN_TOPIC_OR_PARTITION (3)" in reason and "without letting the broker" in reason
    assert directory.sent_to("replies.gone") == 0
    assert directory.sent_to(DEAD_LETTERS) == 1
    assert directory.asked == ["replies.gone"]


@pytest.mark.parametrize(
    ("refusal", "code"),
    [
        (TopicAuthorizationFailedError("replies.x"), ErrorCode.REPLY_TOPIC_UNAUTHORIZED),
        (InvalidTopicError("replies.x"), ErrorCode.INVALID_REPLY_TOPIC),
    ],
)
async def test_other_refusals_of_a_reply_topic_have_their_own_codes(
    refusal: KafkaError, code: ErrorCode
) -> None:
    directory = FakeDirectory(existing={"replies.x"}, refusals=[refusal])
    sent = await delivery_over(directory).deliver(answer("replies.x"), consumed())
    assert sent.dead_letter_reason is code
    assert directory.sent_to("replies.x") == 0


async def test_a_reply_topic_that_cannot_be_asked_about_is_retried_under_one_label() -> None:
    directory = FakeDirectory(existing={"replies.x"}, refusals=[KafkaConnectionError("away")])
    observer = Observer()
    sent = await delivery_over(directory, observer=observer).deliver(
        answer("replies.x"), consumed()
    )
    assert sent.dead_letter_reason is None
    assert directory.sent_to("replies.x") == 1
    assert observer.retried == [RETRIED_REPLY_TOPIC]
    assert directory.asked == ["replies.x", "replies.x"]


async def test_a_known_reply_topic_is_asked_about_once_and_configured_topics_never() -> None:
    directory = FakeDirectory(existing={"replies.x"})
    delivery = delivery_over(directory)
    for _ in range(3):
        assert (await delivery.deliver(answer("replies.x"), consumed())).dead_letter_reason is None
        assert (await delivery.deliver(answer(ANSWERS), consumed())).dead_letter_reason is None
    missing = await delivery.deliver(answer("replies.gone"), consumed())
    assert missing.dead_letter_reason is ErrorCode.REPLY_TOPIC_UNKNOWN
    # The dead letter itself went to a configured topic, unasked.
    assert directory.asked == ["replies.x", "replies.gone"]
    assert directory.sent_to("replies.x") == 3


@pytest.mark.parametrize("known", [1, 3, 8])
async def test_one_more_reply_topic_than_the_bound_keeps_the_bound_and_forgets_the_oldest(
    known: int,
) -> None:
    names = [f"replies.t{index}" for index in range(known + 1)]
    directory = FakeDirectory(existing=set(names))
    observer = Observer()
    delivery = delivery_over(directory, known=known, observer=observer)
    for name in names[:known]:
        await delivery.deliver(answer(name), consumed())
    # At the bound nothing is forgotten.
    assert observer.known() == known and directory.forgotten == []
    await delivery.deliver(answer(names[known]), consumed())
    assert observer.known() == known
    assert directory.forgotten == [names[0]]
    assert names[0] not in delivery.sender.reply_topics
    # Named again, it is asked about again.
    await delivery.deliver(answer(names[0]), consumed())
    assert directory.asked.count(names[0]) == 2


async def test_a_reply_topic_pushed_out_while_being_sent_to_is_forgotten_once_the_send_ends() -> (
    None
):
    directory = FakeDirectory(existing={"replies.slow", "replies.other"})
    gate = asyncio.Event()
    directory("replies.slow").gate = gate
    delivery = delivery_over(directory, known=1)
    slow = asyncio.create_task(delivery.deliver(answer("replies.slow"), consumed()))
    await wait_until(lambda: directory.sent_to("replies.slow") == 1, 5, "the slow send")
    await delivery.deliver(answer("replies.other"), consumed())
    # Forgotten now, the producer would drop the metadata the slow send still waits for.
    assert "replies.slow" not in delivery.sender.reply_topics
    assert directory.forgotten == []
    gate.set()
    assert (await slow).dead_letter_reason is None
    assert directory.forgotten == ["replies.slow"]


async def test_a_known_reply_topic_the_producer_finds_gone_is_forgotten() -> None:
    directory = FakeDirectory(existing={"replies.x"})
    delivery = delivery_over(directory)
    await delivery.deliver(answer("replies.x"), consumed())
    directory("replies.x").failures.append(UnknownTopicOrPartitionError())
    sent = await delivery.deliver(answer("replies.x"), consumed())
    assert sent.dead_letter_reason is ErrorCode.REPLY_TOPIC_UNKNOWN
    reason = json.loads(sent.value)["reason"]
    assert reason.startswith("the broker refused the record with UNKNOWN_TOPIC_OR_PARTITION")
    assert "replies.x" not in delivery.sender.reply_topics
    assert directory.forgotten == ["replies.x"]


# against the broker


async def topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def assert_auto_create_is_on(bootstrap: str) -> None:
    """A metadata request that allows it creates the topic on this broker."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        request = NonCreatingMetadataRequest(["auto-create-probe"], allow_auto_topic_creation=True)
        await client.send(client.get_random_node(), request)
    finally:
        await client.close()
    assert "auto-create-probe" in await topic_names(bootstrap)


@pytest.fixture
def metadata_requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every metadata request sent in this process while the test runs, as sent."""
    seen: list[Any] = []
    send = AIOKafkaConnection.send

    def spying(self: AIOKafkaConnection, request: Any, expect_response: bool = True) -> Any:
        if request.API_KEY == NonCreatingMetadataRequest.API_KEY:
            seen.append(request.prepare(self._versions))
        return send(self, request, expect_response)

    monkeypatch.setattr(AIOKafkaConnection, "send", spying)
    yield seen


@dataclass
class SendPath:
    """The worker's send path (faust producer, `Topics`, `Delivery`) on a broker."""

    app: Any
    topics: Topics
    delivery: DeadLettering

    async def send(self, topic: str) -> Outgoing:
        return await self.delivery.deliver(answer(topic), consumed())

    async def producer(self) -> AIOKafkaProducer:
        producer = aiokafka_producer(await self.app.maybe_start_producer())
        assert isinstance(producer, AIOKafkaProducer)
        return producer


@contextlib.asynccontextmanager
async def send_path(
    broker: EmbeddedBroker, tmp_path: Path, known: int = REPLY_TOPICS_KNOWN
) -> AsyncIterator[SendPath]:
    settings = Settings(
        broker=broker.bootstrap_servers,
        answers_topic=ANSWERS,
        dead_letter_topic=DEAD_LETTERS,
        reply_topics="replies.*",
    )
    app = build_app(settings, str(tmp_path))
    topics = Topics(app)
    delivery = Delivery(topics, settings_of=SETTINGS_OF, reply_topics_known=known)
    try:
        yield SendPath(app, topics, DeadLettering(delivery, dead_letter))
    finally:
        await app.producer.stop()


@pytest.mark.broker
async def test_a_missing_reply_topic_is_not_created_and_an_existing_one_gets_its_answer(
    tmp_path: Path, metadata_requests: list[Any]
) -> None:
    async with EmbeddedBroker() as broker:
        await create_topics(broker, partitions=1)
        await assert_auto_create_is_on(broker.bootstrap_servers)
        async with send_path(broker, tmp_path) as path:
            producer = await path.producer()
            # Created once the producer runs, as reply topics are: it asks for it by name.
            await broker.create_topic("replies.here", 2)
            missing = await path.send("replies.missing")
            here = await path.send("replies.here")
            tracked = set(producer.client._topics)
        names = await topic_names(broker.bootstrap_servers)
    assert missing.dead_letter_reason is ErrorCode.REPLY_TOPIC_UNKNOWN
    assert "UNKNOWN_TOPIC_OR_PARTITION" in json.loads(missing.value)["reason"]
    assert here.dead_letter_reason is None
    assert "replies.missing" not in names and "replies.here" in names
    # The producer never asked about the missing topic, so it does not keep asking.
    assert "replies.missing" not in tracked
    assert path.delivery.sender.reply_topics.touch("replies.here")
    named = [request for request in metadata_requests if request.topics]
    assert any("replies.missing" in request.topics for request in named)
    assert all(request.API_VERSION >= 4 for request in named)
    assert not any(
        request.allow_auto_topic_creation
        for request in named
        if "auto-create-probe" not in request.topics
    )


@pytest.mark.broker
async def test_a_reply_topic_deleted_after_its_answer_is_not_brought_back_by_the_producer(
    tmp_path: Path,
) -> None:
    async with EmbeddedBroker() as broker:
        await create_topics(broker, partitions=1)
        async with send_path(broker, tmp_path) as path:
            producer = await path.producer()
            await broker.create_topic("replies.brief", 1)
            assert (await path.send("replies.brief")).dead_letter_reason is None
            admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
            await admin.start()
            try:
                await admin.delete_topics(["replies.brief"])
            finally:
                await admin.close()
            # The producer still tracks it and asks for its metadata with every refresh.
            assert "replies.brief" in producer.client._topics
            assert await producer.client.force_metadata_update()
            assert "replies.brief" not in producer.client.cluster.topics()
        assert "replies.brief" not in await topic_names(broker.bootstrap_servers)


@pytest.mark.broker
async def test_the_broker_watch_asks_for_every_topic_without_naming_any(
    metadata_requests: list[Any],
) -> None:
    async with EmbeddedBroker() as broker:
        await create_topics(broker, partitions=1)
        watch = BrokerWatch(
            Settings(broker=broker.bootstrap_servers), {ANSWERS: "--answers-topic"}, 0.05
        )
        before = len(metadata_requests)
        await watch.connect(within_s=10.0)
        watch.start()
        try:
            # Its bootstrap, then three checks.
            await wait_until(lambda: len(metadata_requests) >= before + 4, 10, "the checks")
        finally:
            await watch.close()
        assert await topic_names(broker.bootstrap_servers) == {QUESTIONS, ANSWERS, DEAD_LETTERS}
    # A request naming no topic (null: all of them, or none at bootstrap) can create none.
    assert all(not request.topics for request in metadata_requests)


@pytest.mark.broker
@pytest.mark.parametrize("known", [2, 5])
async def test_one_more_reply_topic_than_the_bound_leaves_the_producer_tracking_the_bound(
    tmp_path: Path, known: int
) -> None:
    names = [f"replies.t{index}" for index in range(known + 1)]
    async with EmbeddedBroker() as broker:
        await create_topics(broker, partitions=1)
        async with send_path(broker, tmp_path, known=known) as path:
            producer = await path.producer()
            for name in names:
                # Created after the producer started, as reply topics are: it tracks each one
                # it is asked to send to.
                await broker.create_topic(name, 1)
                assert (await path.send(name)).dead_letter_reason is None
            tracked = set(producer.client._topics) & set(names)
            await producer.client.force_metadata_update()
            with_metadata = set(producer.client.cluster.topics()) & set(names)
    assert len(path.delivery.sender.reply_topics) == known
    assert tracked == set(names[1:])
    assert with_metadata == set(names[1:])
    assert set(path.topics._made) & set(names) == set(names[1:])


def generated_reply_topics(seed: int, count: int) -> list[str]:
    """Names within `replies.*`: Kafka's whole alphabet, up to its longest name, case apart;
    none two that Kafka would take for one ('.' and '_' collide in its metric names)."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "._-"
    room = MOST_TOPIC_CHARS - len("replies.")
    lengths = [0, 1, room - 1, room] + [rng.randint(1, 60) for _ in range(count - 4)]
    names: dict[str, str] = {}
    for length in lengths:
        name = "replies." + "".join(rng.choice(alphabet) for _ in range(length))
        names.setdefault(name.replace(".", "_"), name)
    return list(names.values())


@pytest.mark.broker
async def test_generated_reply_topic_names_are_answered_when_they_exist_and_never_created(
    tmp_path: Path,
) -> None:
    rng = random.Random(29)
    names = generated_reply_topics(seed=29, count=24)
    existing = {name for name in names if rng.random() < 0.5} | {names[-1]}
    async with EmbeddedBroker() as broker:
        await create_topics(broker, partitions=1)
        for name in existing:
            await broker.create_topic(name, 1)
        async with send_path(broker, tmp_path) as path:
            results = {name: (await path.send(name)).dead_letter_reason for name in names}
        after = await topic_names(broker.bootstrap_servers)
    assert {name for name, code in results.items() if code is None} == existing
    assert all(
        code is ErrorCode.REPLY_TOPIC_UNKNOWN
        for name, code in results.items()
        if name not in existing
    )
    assert after & set(names) == existing
    assert max(len(name) for name in existing | set(names)) == MOST_TOPIC_CHARS


@pytest.mark.broker
async def test_a_reply_topic_one_over_the_longest_name_is_invalid_at_the_broker() -> None:
    install_non_creating_metadata()
    async with EmbeddedBroker() as broker:
        client = AIOKafkaClient(bootstrap_servers=broker.bootstrap_servers)
        await client.bootstrap()
        try:
            longest = "replies." + "x" * (MOST_TOPIC_CHARS - len("replies."))
            await broker.create_topic(longest, 1)
            assert await topic_refusal(client, longest) is None
            refusal = await topic_refusal(client, longest + "x")
        finally:
            await client.close()
    assert isinstance(refusal, InvalidTopicError)


@pytest.mark.broker
async def test_the_worker_dead_letters_a_question_naming_a_missing_reply_topic(
    export_factory: Any, tmp_path: Path
) -> None:
    question = {"question": "Who wrote it?", "context": "It was written by Ada."}
    values = [
        json.dumps({"id": "missing", **question, "reply_to": "replies.missing"}).encode(),
        json.dumps({"id": "here", **question, "reply_to": "replies.here"}).encode(),
    ]
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        await broker.create_topic("replies.here", 1)
        await assert_auto_create_is_on(broker.bootstrap_servers)
        settings = worker_settings(
            broker.bootstrap_servers, export_factory("bert"), reply_topics="replies.*"
        )
        metrics = WorkerMetrics()
        worker = QAWorker(settings, load_engine(settings), metrics)
        await worker.start()
        try:
            async with TopicWatcher(
                broker.bootstrap_servers, [DEAD_LETTERS, "replies.here"]
            ) as output:
                await produce(broker.bootstrap_servers, values)
                await wait_until(lambda: len(output.records) == 2, 60, "both records")
                scraped = metrics.render().decode()
        finally:
            await worker.stop()
        names = await topic_names(broker.bootstrap_servers)
    where = {record.topic: record.json() for record in output.records}
    assert where["replies.here"]["id"] == "here"
    letter = where[DEAD_LETTERS]
    assert letter["error"]["code"] == "reply_topic_unknown"
    assert "replies.missing" in letter["error"]["message"]
    assert "replies.missing" not in names
    assert "qa_worker_reply_topics_known 1.0" in scraped
