"""Every use the worker makes of faust's and aiokafka's private API, and why it needs each.

faust-streaming 0.15 and aiokafka 0.14 give no public way to do what each bend below does. Each
names what it touches, why the worker needs it, and what breaks if an upgrade changes it;
`tests/stream/test_faust_private.py` fails, naming the bend, when what one relies on is gone or
changed.

- Fetch wait (`FetchWaitTransport`; faust's `AIOKafkaConsumerThread._create_worker_consumer`,
  aiokafka's `AIOKafkaConsumer._fetch_max_wait_ms`): faust builds its consumer with a fixed
  fetch_max_wait_ms=1500 and no setting to change it; the override sets the attribute the
  consumer reads when it starts to `--fetch-max-wait-ms`. Kafka answers a fetch as soon as
  records arrive, but brokers that hold every fetch that long (tansu) add it to every event's
  latency. If the method is renamed the override is never called, and if the attribute is, it is
  set for nothing: fetches wait 1.5 s again.
- Records of a partition paused mid-batch (`_FetchWaitConsumer._wait_next_records`; faust's
  `Consumer._wait_next_records`): faust hands a fetched batch out record by record, keeping only
  the records of the partitions in the set this returns, and it returns its live set of active
  partitions. The worker pauses a partition from the agent that takes its records (backpressure
  by partition, docs/delivery.md), which dropped the rest of that partition's records in the
  batch with the fetch position already past them: events never answered, their offsets
  committed. The override returns the partitions as they were when fetched (kept current on a
  revocation). If faust stops returning (records, active partitions), the override breaks the
  fetch loop; if the method is renamed, paused partitions lose records again.
- A fetch loop that ends (`_FetchWaitConsumer._drain_messages`, `_new_consumer_thread` and
  `_FetchWaitConsumerThread.crash`; faust's `Consumer._drain_messages` and
  `Consumer._new_consumer_thread`, mode's `ServiceThread.crash`): faust's fetch loop logs the
  error that ends it ("Drain messages raised") and crashes its Fetcher service, which nothing
  restarts or reports, and the thread running aiokafka's consumer can die the same way: the app
  stays started and reads nothing on any partition. The overrides tell `on_fetch_failure`, and
  the worker stops: not ready, a CRITICAL line, exit 1 ("Reading never stops silently",
  docs/delivery.md). If a method is renamed its override is never called, and reading stops
  silently again.
- Waiting for acks (`_FetchWaitConsumer.wait_empty` and `abandon_unacked`; faust's
  `Consumer.wait_empty`, `_unacked_messages`, `_clean_unacked_messages`, `_wait_for_ack`): on
  every stop and revocation faust waits until each event fetched is acked, those buffered behind
  the agent too, with no time limit, and runs a full `gc.collect()` on the event loop for every
  ack it wakes for. With a few hundred events fetched the collections made a drain of 3-4 s take
  23-30 s (py-spy: 98% of the loop in that collection), past `--drain-timeout-s`; and once the
  worker's stop had run out of drain time, the agent (stopped only after that wait) acked
  nothing more, so the stop never ended, nor did closing the loop that ran it. The override
  waits without collecting, and `abandon_unacked`, called at the drain deadline, ends the wait:
  what was acked is committed, the rest read again. If the method is renamed, drains are slow
  again and a stop past its deadline never ends; if the attributes are, the override raises.
- The aiokafka producer under faust's (`aiokafka_producer`, `aiokafka_producer_if_started`;
  faust's `Producer._ensure_producer()` and `Producer._producer`): faust's producer cannot send
  a batch of one record (a refused record confirmed alone, `app.ProducerTopic.send_alone`), ask
  the broker about a topic (`app.Topics.refusal`) or stop tracking one (`app.Topics.forget`).
  If they change, those raise AttributeError: refused answers and reply topics stop the worker,
  or reply topics pushed out stay tracked.
- Committed offsets (`committed_offsets`; faust's `Consumer._committed_offset`): faust's
  consumer knows each partition's committed offset from the moment it is assigned (read from
  the group) and after every commit; its monitor has only those this process committed, so after
  a restart or a rebalance a quiet partition read 0 there: lag equal to its end offset, and
  reported stalled once `--stall-timeout-s` passed. If it changes, the lag loop raises.
- Forgetting a topic (`forget_topic`; aiokafka's `AIOKafkaClient._topics`): aiokafka has no
  public way to stop tracking one topic (`set_topics()` asks the broker for metadata at once,
  and with an empty set for every topic in the cluster). A reply topic no longer remembered is
  dropped from what the producer tracks, so its metadata holds at most `REPLY_TOPICS_KNOWN`
  reply topics however many events name (docs/delivery.md, "Reply topics"). If the set is
  renamed, forgetting raises; if the client stops reading it, the producer's metadata grows with
  every reply topic, and each new one stalls the event loop longer.
- Metadata requests that create no topic (`install_non_creating_metadata`; the module name
  `MetadataRequest` in `aiokafka.client` and `aiokafka.admin.client`): aiokafka's clients ask
  for metadata with `allow_auto_topic_creation=true`, so a question naming a reply topic made a
  broker that creates topics on request (Kafka's default, tansu always) create it, and a deleted
  topic came back. If aiokafka stops building its requests from those names, the worker creates
  topics again.
- Header keys that are not UTF-8 (`install_lenient_header_keys`; the module name
  `MemoryRecords` in `aiokafka.consumer.fetcher`): the fetcher builds its record sets from that
  name, and aiokafka's own reader raises UnicodeDecodeError on such a key, stopping the fetch
  loop. If the fetcher stops using the name, one such record stops the worker (reported, exit 1)
  instead of becoming an `invalid_event` dead letter.
- INVALID_RECORD (`InvalidRecordError`; aiokafka's `aiokafka.errors.kafka_errors`, where it
  looks up a response's error code): aiokafka 0.14 has no class for Kafka's error 87 and would
  report it as UnknownError (errno -1), losing the code: `delivery.judge` tells a record the
  broker refused by that code, resends it alone and makes it an `answer_refused` dead letter
  only when it is refused alone. A later aiokafka with its own class for 87 keeps it. If the
  table moves or is renamed, an answer refused as INVALID_RECORD is an UnknownError again, which
  no event gets past: the worker stops with a DeliveryError instead of dead-lettering it.
- faust's environment (`env={}`, passed to `faust.App` by `app.build_app`; faust's `Settings`
  argument `env`, which its documentation does not name): faust reads its own un-prefixed
  variables (BROKER_COMMIT_INTERVAL, ...) from the environment, and they win over the arguments
  the worker passes; the worker's settings come only from its own flags and QA_ variables
  (docs/configuration.md). If faust drops the argument, a stray variable reconfigures the
  worker's consumer and producer.

`app.CommitSensor` leans on faust's public `Sensor.on_commit_completed(consumer, state)` and
`Monitor.tp_committed_offsets`; the tests check those too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, cast

import aiokafka.admin.client
import aiokafka.client
import aiokafka.consumer.fetcher
import faust
from aiokafka import AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import BrokerResponseError, kafka_errors
from faust.transport.consumer import CONSUMER_WAIT_EMPTY
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, ConsumerT, ProducerT
from mode import Service

from .header_keys import LenientMemoryRecords
from .topic_metadata import NonCreatingMetadataRequest

__all__ = [
    "FetchWaitTransport",
    "InvalidRecordError",
    "abandon_unacked",
    "aiokafka_producer",
    "aiokafka_producer_if_started",
    "committed_offsets",
    "forget_topic",
    "install_non_creating_metadata",
]


class _FetchWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def crash(self, exc: BaseException) -> None:
        # The thread that runs aiokafka's consumer has died: every later fetch would wait on it
        # for ever. Reported on the worker's own loop, like an error of the fetch loop.
        report = cast(FetchWaitTransport, self.transport).on_fetch_failure
        if report is not None and not isinstance(exc, asyncio.CancelledError):
            self.parent_loop.call_soon_threadsafe(report, exc)
        await super().crash(exc)

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # The consumer reads this attribute when it starts, which happens after this returns.
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        return consumer


class _FetchWaitConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fetched_from: set[TP] = set()
        # Set by `abandon_unacked` once the worker's stop has run out of drain time.
        self._abandoning_unacked = False

    def _new_consumer_thread(self) -> _FetchWaitConsumerThread:
        return _FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _wait_next_records(self, timeout: float) -> tuple[Any, set[TP] | None]:
        # The partitions fetched from, as they were when fetched, keep every record fetched; a
        # pause stops the next fetch.
        records, active = await super()._wait_next_records(timeout)
        if active is None:
            return records, None
        self._fetched_from = set(active)
        return records, self._fetched_from

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # What faust's live set did on its own: a revoked partition's fetched records are not
        # handed out.
        self._fetched_from.difference_update(revoked)
        await super().on_partitions_revoked(revoked)

    @Service.transitions_to(CONSUMER_WAIT_EMPTY)
    async def wait_empty(self) -> None:
        # Runs on every stop and every revocation: waits for the events in flight, and those
        # fetched but not yet started, to be acked, committing as acks come.
        while self._unacked_messages and not self.should_stop and not self._abandoning_unacked:
            await self.commit()
            self._clean_unacked_messages()
            if self._unacked_messages:
                await self._wait_for_ack(timeout=1)
                self._clean_unacked_messages()
        await self.commit_and_end_transactions()

    async def _drain_messages(self, fetcher: Any) -> None:
        # Cancellation is faust's own rebalance restart.
        try:
            await super()._drain_messages(fetcher)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            report = cast(FetchWaitTransport, self.transport).on_fetch_failure
            if report is not None:
                report(error)
            raise


class FetchWaitTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport with the consumer's fetch wait taken from the settings, and
    `on_fetch_failure` told of an error that stops fetching (an unsupported codec, a record the
    client cannot parse, anything raised in faust's fetch loop)."""

    Consumer = _FetchWaitConsumer

    def __init__(
        self,
        url: Any,
        app: faust.App,
        *,
        fetch_max_wait_ms: int,
        on_fetch_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__(url, app)
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.on_fetch_failure = on_fetch_failure


def abandon_unacked(consumer: ConsumerT) -> None:
    """Ends the consumer's wait for unacked events within a second: the app's stop goes on to
    commit what was acked and stop the agents, and the rest is read again after a restart."""
    cast(_FetchWaitConsumer, consumer)._abandoning_unacked = True


def aiokafka_producer(producer: ProducerT) -> AIOKafkaProducer:
    """The aiokafka producer under faust's started `producer` (faust raises NotReady before
    it starts)."""
    return cast(AIOKafkaProducer, cast(Any, producer)._ensure_producer())


def aiokafka_producer_if_started(producer: ProducerT) -> AIOKafkaProducer | None:
    """The aiokafka producer under faust's `producer`; None before it starts."""
    client = getattr(producer, "_producer", None)
    return client if isinstance(client, AIOKafkaProducer) else None


def committed_offsets(consumer: ConsumerT) -> Mapping[TP, int | None]:
    """The group's committed offset of each partition assigned to faust's `consumer`, as read
    from the group on assignment and moved by every commit; None (or absent) when it has none."""
    return cast(FaustConsumer, consumer)._committed_offset


def forget_topic(client: AIOKafkaClient, topic: str) -> None:
    """Stops `client` asking for `topic`'s metadata; what it holds of the topic goes with the
    next refresh (which replaces the whole cluster view with the topics it asked about)."""
    client._topics.discard(topic)


def install_lenient_header_keys() -> None:
    """Makes aiokafka's fetcher (every consumer in this process) read batches leniently
    (`header_keys.LenientMemoryRecords`)."""
    aiokafka.consumer.fetcher.MemoryRecords = LenientMemoryRecords


def install_non_creating_metadata() -> None:
    """Makes every aiokafka client in this process ask for metadata without creating topics."""
    # aiokafka's client and admin client build their requests from these module names.
    aiokafka.client.MetadataRequest = NonCreatingMetadataRequest
    aiokafka.admin.client.MetadataRequest = NonCreatingMetadataRequest


class InvalidRecordError(BrokerResponseError):
    """Kafka's INVALID_RECORD: the broker refused a record it validated (a compacted topic's
    record without a key, a broker-side schema check)."""

    errno = 87
    message = "INVALID_RECORD"
    description = "This record has failed the validation on broker and hence been rejected."


# Where aiokafka looks up a response's error code; a later aiokafka with its own class keeps it.
kafka_errors.setdefault(InvalidRecordError.errno, InvalidRecordError)
