"""Connection settings for Kafka clients: the worker's faust app and the plain aiokafka tools.

Also faust's aiokafka transport as the worker runs it: the fetch wait from the settings, a fetch
loop and consumer thread that report the error they stop on
(`FetchWaitTransport.on_fetch_failure`), and partitions that may be paused while their records
are handed out.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import faust
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from ..client_security import client_ssl_context, sasl_login
from ..config import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The clients' TLS context (`worker.client_security`): a one-line ConfigError for any
    file it names that cannot serve."""
    return client_ssl_context(settings)


async def create_topics(
    client_options: Mapping[str, Any], topics: Sequence[str], partitions: int
) -> None:
    """Creates topics (replication factor 1); raises aiokafka's error for the first refused."""
    admin = AIOKafkaAdminClient(**client_options)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(name, partitions, 1) for name in topics])
    finally:
        await admin.close()
    # aiokafka returns per-topic failures inside the response instead of raising them.
    # Entries are (topic, error_code) or, from v1 on, (topic, error_code, error_message).
    for topic, code, *message in response.topic_errors:
        if code:
            raise for_code(code)(f"creating topic {topic!r}: {' '.join(map(str, message))}")


def faust_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    context = ssl_context(settings)
    if "SASL" in settings.security_protocol:
        username, password = sasl_login(settings)
        return faust.SASLCredentials(
            username=username,
            password=password,
            ssl_context=context,
            mechanism=settings.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments shared by AIOKafkaProducer and AIOKafkaConsumer."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.broker,
        "security_protocol": settings.security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if "SASL" in settings.security_protocol:
        username, password = sasl_login(settings)
        options.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=username,
            sasl_plain_password=password,
        )
    return options


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
        # faust 0.15 passes a fixed fetch_max_wait_ms=1500 with no setting to change it; the
        # consumer reads this attribute when it starts, which happens after this returns.
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        return consumer


class _FetchWaitConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fetched_from: set[TP] = set()

    def _new_consumer_thread(self) -> _FetchWaitConsumerThread:
        return _FetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _wait_next_records(self, timeout: float) -> tuple[Any, set[TP] | None]:
        # faust hands a fetched batch out record by record, keeping only the records of the
        # partitions in the set returned here, and it returns its live set of active partitions:
        # a partition paused while the batch is handed out (the worker pauses one from the agent
        # that takes its records) lost the rest of its records in the batch, with the fetch
        # position already past them. The partitions fetched from, as they were when fetched,
        # keep every record fetched; a pause stops the next fetch.
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

    async def _drain_messages(self, fetcher: Any) -> None:
        # faust's fetch loop logs the error that ends it ("Drain messages raised") and crashes
        # its Fetcher service, which nothing restarts or reports: the app stays "started" and
        # reads nothing on any partition. Cancellation is faust's own rebalance restart.
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
