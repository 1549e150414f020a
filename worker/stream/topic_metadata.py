"""Asking the broker about topics without ever making it create one.

A Kafka broker with `auto.create.topics.enable` (Kafka's default; tansu always) creates a topic
that a metadata request names, unless the request says `allow_auto_topic_creation=false`
(MetadataRequest v4 and later), and aiokafka's clients send `true`. The producer asks for the
metadata of each topic it is first told to send to, then keeps asking for it with every refresh,
so one question naming `replies.anything` under an allowed reply pattern made the worker create
that topic, and keep its metadata for good.

`NonCreatingMetadataRequest` is a metadata request that says `false`;
`faust_private.install_non_creating_metadata()` makes every aiokafka client in this process (the
producer, the consumer, the broker watch) send it; `topic_refusal` asks about one topic with it,
without the producer ever tracking the topic (`faust_private.forget_topic` drops a topic from
what a client tracks, so that its metadata is not fetched again).
"""

from __future__ import annotations

from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    LeaderNotAvailableError,
    UnknownTopicOrPartitionError,
    for_code,
)
from aiokafka.protocol.metadata import MetadataRequest

__all__ = [
    "NonCreatingMetadataRequest",
    "topic_refusal",
]


class NonCreatingMetadataRequest(MetadataRequest):
    """aiokafka's MetadataRequest, saying `allow_auto_topic_creation=false` unless told.

    Brokers before Kafka 0.11 (MetadataRequest v3 and earlier) have no such field and create
    topics as their own configuration says.
    """

    def __init__(
        self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = False
    ) -> None:
        super().__init__(topics, allow_auto_topic_creation=allow_auto_topic_creation)


async def topic_refusal(client: AIOKafkaClient, topic: str) -> KafkaError | None:
    """None when the broker has `topic`; else the broker's error for it, e.g.
    UnknownTopicOrPartitionError, TopicAuthorizationFailedError or InvalidTopicError.

    One metadata request naming only `topic`, which does not let the broker create it, sent on
    the client's connection without adding the topic to what the client tracks. Raises what
    the request raises (a lost connection: retriable), and LeaderNotAvailableError for a topic
    that has no partitions yet (one being created).
    """
    node = client.get_random_node()
    if node is None:
        raise KafkaConnectionError("no broker known to ask about the topic")
    response: Any = await client.send(node, NonCreatingMetadataRequest([topic]))
    for entry in response.topics:
        # (error_code, topic, partitions) in v0; v1 and later add is_internal before partitions.
        error_code, name, partitions = entry[0], entry[1], entry[-1]
        if name != topic:
            continue
        if error_code != 0:
            error_class = for_code(error_code)
            return error_class(f"topic {topic!r}: {error_class.description}")
        if not partitions:
            raise LeaderNotAvailableError(f"topic {topic!r} has no partitions yet")
        return None
    # Brokers answer for every topic asked about; one left out is one the broker does not have.
    return UnknownTopicOrPartitionError(f"topic {topic!r}: not in the broker's answer")
