"""The faust app the worker runs on, and the topics it sends to.

faust is configured here and nowhere else: consumer group, commit interval, session timeout,
buffer sizes bounded by the in-flight limit, acks from every in-sync replica, the compression of
what it produces, and the transport with the fetch wait taken from the settings and a fetch loop
that reports the error it stops on. The worker creates no topics: faust declares none, and no
metadata request of its clients lets the broker create one (`topic_metadata`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from faust.exceptions import ProducerSendError

from ..config import Settings, describe
from ..errors import ConfigError
from ..observability.metrics import WorkerMetrics
from .envelope import MAX_REQUEST_BYTES
from .faust_private import (
    FetchWaitTransport,
    aiokafka_producer,
    aiokafka_producer_if_started,
    forget_topic,
    install_lenient_header_keys,
    install_non_creating_metadata,
)
from .topic_metadata import topic_refusal
from .transport import faust_credentials

__all__ = [
    "PRODUCER_REQUEST_TIMEOUT_S",
    "CommitSensor",
    "ProducerTopic",
    "TopicHold",
    "Topics",
    "build_app",
    "check_topic_roles",
]


def check_topic_roles(settings: Settings, question_sets: Collection[str]) -> None:
    """Raises ConfigError naming the settings when the topics cannot work together.

    A topic the worker both reads and writes feeds its own output back to it (a dead-letter
    topic that is also an input topic dead-letters one bad record for ever); answers, tags and
    dead letters sharing a topic mix records their consumers cannot tell apart; a documents
    topic named twice, or a default question set that does not exist, is a mistake every
    document would pay for.
    """
    reads: dict[str, str] = {settings.questions_topic: describe("questions_topic")}
    items = [item for item in (settings.documents_topics or "").split(",") if item.strip()]
    for item in items:
        topic, _, default_set = (part.strip() for part in item.partition("="))
        if topic in reads:
            raise ConfigError(
                f"{topic!r} is named twice as a topic to read: in {reads[topic]} and in "
                f"{describe('documents_topics')}"
            )
        reads[topic] = describe("documents_topics")
        if default_set and default_set not in question_sets:
            known = ", ".join(sorted(question_sets)) or "none"
            raise ConfigError(
                f"{describe('documents_topics')} gives {topic!r} the default question set "
                f"{default_set!r}, which {describe('question_sets')} does not have (it has: "
                f"{known})"
            )
    writes = [
        (settings.answers_topic, describe("answers_topic")),
        (settings.dead_letter_topic, describe("dead_letter_topic")),
    ]
    if items:
        writes.append((settings.tags_topic, describe("tags_topic")))
    written: dict[str, str] = {}
    for topic, setting in writes:
        if topic in reads:
            raise ConfigError(
                f"{topic!r} is both {reads[topic]} and {setting}: the worker would read its own "
                "records back; give them topics of their own"
            )
        if topic in written:
            raise ConfigError(
                f"{topic!r} is both {written[topic]} and {setting}: consumers could not tell "
                "the records apart; give them topics of their own"
            )
        written[topic] = setting


TopicHold = Callable[[str], Awaitable[None]]
"""Returns once records may be sent to the topic named (`BrokerWatch.wait_for`)."""

# How long the producer waits for a topic's metadata or a batch's acknowledgement before giving
# up on that send (delivery then retries it or dead-letters the event). faust's default, 1200 s,
# let one event naming a reply topic the broker does not have hold its partition for 20 minutes.
PRODUCER_REQUEST_TIMEOUT_S = 30.0


def build_app(
    settings: Settings,
    datadir: str,
    on_fetch_failure: Callable[[BaseException], None] | None = None,
) -> faust.App:
    """A faust app for the settings, with no agents yet; `datadir` is a writable folder, and
    `on_fetch_failure` is told of an error that stops the consumer's fetch loop."""
    # A header key that is not UTF-8 reaches the worker instead of stopping the fetcher.
    install_lenient_header_keys()
    # A question naming a reply topic must not be able to create it (nor a deleted topic come
    # back) through the metadata requests of the worker's producer and consumer.
    install_non_creating_metadata()
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{server.strip()}" for server in settings.broker.split(",")],
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=datadir,
        # /metrics, /healthz and /readyz have their own server (worker.observability.http).
        web_enabled=False,
        # The worker keeps no tables and uses no leader election.
        topic_disable_leader=True,
        # Nor does it create topics: a missing one is the operator's to create.
        topic_allow_declare=False,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 4,
        broker_request_timeout=max(90.0, settings.session_timeout_s),
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        # Static membership when set: aiokafka then sends no LeaveGroup on stop, so a restart
        # within the session timeout takes its partitions back without a rebalance.
        consumer_group_instance_id=settings.group_instance_id,
        # faust pauses fetching once an agent's buffer fills; with the in-flight bound this
        # keeps memory bounded however far behind the worker is.
        stream_buffer_maxsize=max(16, settings.max_in_flight),
        broker_max_poll_records=max(16, settings.max_in_flight),
        producer_acks=-1,
        producer_max_request_size=MAX_REQUEST_BYTES,
        producer_compression_type=(
            None if settings.compression_type == "none" else settings.compression_type
        ),
        producer_request_timeout=PRODUCER_REQUEST_TIMEOUT_S,
        # faust's own variables (BROKER_COMMIT_INTERVAL, ...) would win over these arguments:
        # it gets an empty environment (faust_private says why this bends faust).
        env={},
    )
    app.transport = FetchWaitTransport(
        app.conf.broker_consumer,
        app,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        on_fetch_failure=on_fetch_failure,
    )
    return app


class ProducerTopic:
    """A topic sent to through the app's producer itself, keys and values as bytes.

    faust's `Topic.send` wraps every record in pending and future messages, runs codecs (raw
    here) and send sensors the worker reads nothing from: per answer, that cost more than the
    producer's own send. Errors come as from `Topic.send` (ProducerSendError around aiokafka's).
    """

    def __init__(self, app: faust.App, name: str, hold: TopicHold | None = None) -> None:
        self._app = app
        self.name = name
        self._hold = hold

    async def send(
        self, *, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Awaitable[object]:
        """Queues the record; the awaitable returned resolves once the broker acknowledged it.

        Waits first for `hold(name)`: while the topic is missing, nothing is sent to it.
        """
        if self._hold is not None:
            await self._hold(self.name)
        producer = await self._app.maybe_start_producer()
        return await producer.send(
            self.name, key, value, partition=None, timestamp=None, headers=headers
        )

    async def send_alone(
        self, *, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> Awaitable[object]:
        """Queues the record in a batch of its own, on the partition `send` would choose, so
        that what the broker answers about the batch is about this record alone."""
        client = await _producer_client(self._app)
        partitions = sorted(await client.partitions_for(self.name))
        available = sorted(client.client.cluster.available_partitions_for_topic(self.name))
        batch = client.create_batch()
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            raise MessageSizeTooLargeError(f"a record of {len(value or b'')} bytes")
        batch.close()
        partition = DefaultPartitioner()(key, partitions, available or partitions)
        try:
            return await client.send_batch(batch, self.name, partition=partition)
        except KafkaError as error:
            raise ProducerSendError(f"Error while sending: {error!r}") from error


async def _producer_client(app: faust.App) -> AIOKafkaProducer:
    """The aiokafka producer under the app's faust producer, started if need be."""
    # faust's own producer has no way to send a batch of one, nor to ask about a topic.
    return aiokafka_producer(await app.maybe_start_producer())


class Topics:
    """The topics the worker sends to by name, each made once until forgotten, and the ones it
    reads; a `delivery.TopicDirectory`."""

    def __init__(self, app: faust.App, hold: TopicHold | None = None) -> None:
        """`hold(name)` returns once records may be sent to topic `name` (see ProducerTopic)."""
        self._app = app
        self._hold = hold
        self._made: dict[str, ProducerTopic] = {}

    def __call__(self, name: str) -> ProducerTopic:
        if name not in self._made:
            self._made[name] = ProducerTopic(self._app, name, self._hold)
        return self._made[name]

    async def refusal(self, name: str) -> KafkaError | None:
        """None when the broker has topic `name`; else its error for it. Asked without letting
        the broker create the topic, and without the producer tracking it."""
        client = await _producer_client(self._app)
        return await topic_refusal(client.client, name)

    def forget(self, name: str) -> None:
        """Drops topic `name`'s ProducerTopic, and the producer's tracking of its metadata."""
        self._made.pop(name, None)
        # Only a producer already started can track the topic; none is started here.
        client = aiokafka_producer_if_started(self._app.producer)
        if client is not None:
            forget_topic(client.client, name)

    def subscribe(self, *names: str) -> faust.types.TopicT:
        """One topic object reading all of `names`, for an agent."""
        return self._app.topic(*names, key_serializer="raw", value_serializer="raw")


class CommitSensor(faust.Sensor):
    """Tells the metrics when a commit moved an offset.

    faust runs a commit every interval whether or not any offset moved, also while every event
    is stuck in flight; counting those would keep the commit-age gauge near zero in exactly the
    state its alert is meant to catch.
    """

    def __init__(self, metrics: WorkerMetrics, committed: Callable[[], Mapping[Any, int]]) -> None:
        """`committed` gives the committed offset of each partition (faust's monitor has it)."""
        super().__init__()
        self._metrics = metrics
        self._committed = committed
        self._last: dict[Any, int] = {}

    def on_commit_completed(self, consumer: Any, state: Any) -> None:
        offsets = dict(self._committed())
        if any(self._last.get(tp) != offset for tp, offset in offsets.items()):
            self._metrics.committed()
        self._last = offsets
