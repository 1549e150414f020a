"""Whether the broker answers: a connection check at start-up, and a watch while running.

faust keeps its readiness to itself and retries a lost or refused connection for ever, quietly
when TLS or SASL do not match the listener. A client of our own, with the same connection
settings, asks the broker for metadata once a second: at start-up it must succeed within a bound
(else the settings are wrong, and the error names them), and while running the time since it
last succeeded tells readiness how long the broker has been unreachable.

The same metadata says whether the configured topics still exist. A topic the watch has seen and
then no longer finds (deleted while the worker runs) is missing: the worker is not ready, naming the
topic and its setting, an ERROR line says so (at most once per 10 s, see
`worker.observability.log_rate`), and `wait_for` holds every record bound for it, so nothing is
committed past a record that was not delivered (some brokers, tansu among them, acknowledge writes
to a deleted topic and drop them). For a topic it writes the worker does not exit: once the topic is
back, what was held is sent and it carries on. A topic it reads that goes missing stops the worker
(`QAWorker`): the group's positions on the deleted log would skip records of a topic recreated under
its name.
The worker creates no topic (`worker.stream.topic_metadata`), so every configured topic must
exist before it starts: `connect` waits for them within the same bound as for the broker, not
ready and naming each missing topic and its setting in an ERROR line, then gives up with a
ConfigError that names them. The watch's requests name no topic (they ask for all of them), so
they never create one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from ..config import Settings, describe
from ..errors import ConfigError
from .transport import aiokafka_options

__all__ = ["CONNECT_WITHIN_S", "BrokerWatch"]

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
# At start-up the broker must answer within this (or the session timeout, if longer): long
# enough for a broker starting beside the worker, short enough that a wrong setting shows.
CONNECT_WITHIN_S = 30.0
# One metadata request or connection attempt waits at most this long.
REQUEST_TIMEOUT_S = 5.0


class BrokerWatch:
    """Asks the broker for metadata every `interval_s`; `unreachable_for()` since it last could,
    and `missing_topics()` of `topics` (each topic mapped to the setting that names it)."""

    def __init__(
        self,
        settings: Settings,
        topics: Mapping[str, str] | None = None,
        interval_s: float = CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._topics = dict(topics or {})
        self._missing: dict[str, str] = {}
        self._interval_s = interval_s
        self._clock = clock
        self._client: AIOKafkaClient | None = None
        self._last_answer = clock()
        self._task: asyncio.Task[None] | None = None

    async def connect(self, within_s: float) -> None:
        """Returns once the broker answers and has every configured topic; after `within_s`,
        raises ConfigError naming the settings, or the topics still missing."""
        settings = self._settings
        options = aiokafka_options(settings)
        deadline = self._clock() + within_s
        error: BaseException | None = None
        while self._clock() < deadline:
            client = AIOKafkaClient(
                request_timeout_ms=int(min(REQUEST_TIMEOUT_S, within_s) * 1000), **options
            )
            try:
                await client.bootstrap()
            except KafkaError as failed:
                error = failed
                await client.close()
                await asyncio.sleep(min(self._interval_s, max(0.0, deadline - self._clock())))
                continue
            self._client = client
            self._last_answer = self._clock()
            try:
                await self._await_topics(client, deadline, within_s)
            except BaseException:
                await self.close()
                raise
            return
        raise ConfigError(
            f"could not connect to the broker at {settings.broker} with security protocol "
            f"{settings.security_protocol} within {within_s:g} s ({error!r}); check "
            f"{describe('broker')} and {describe('security_protocol')} (and the TLS or SASL "
            "settings) against the broker's listener"
        )

    async def _await_topics(self, client: AIOKafkaClient, deadline: float, within_s: float) -> None:
        """Returns once the metadata has every configured topic; they are missing meanwhile."""
        while True:
            self._check_topics(client.cluster.topics(), starting=True)
            if not self._missing:
                return
            if self._clock() >= deadline:
                raise ConfigError(
                    f"the broker at {self._settings.broker} has no topic "
                    f"{self.describe_missing()} after {within_s:g} s; the worker "
                    "creates none, so create them before starting it (docs/delivery.md), or "
                    "correct the settings"
                )
            await asyncio.sleep(min(self._interval_s, max(0.0, deadline - self._clock())))
            with contextlib.suppress(KafkaError):
                if await client.force_metadata_update():
                    self._last_answer = self._clock()

    def start(self) -> None:
        """Starts the periodic check; `connect()` must have succeeded."""
        if self._task is None and self._client is not None:
            self._task = asyncio.create_task(self._watch(self._client))

    def unreachable_for(self) -> float:
        """Seconds since the broker last answered; 0 while it answers."""
        return max(0.0, self._clock() - self._last_answer - self._interval_s)

    def missing_topics(self) -> dict[str, str]:
        """Configured topics not in the broker's last metadata, with their settings."""
        return dict(self._missing)

    def describe_missing(self) -> str:
        """The missing topics, each with its setting: `'a' (--x / QA_X), 'b' (--y / QA_Y)`."""
        return ", ".join(f"{topic!r} ({setting})" for topic, setting in self._missing.items())

    async def wait_for(self, topic: str) -> None:
        """Returns at once unless `topic` is missing; then once the metadata has it again."""
        while topic in self._missing:
            await asyncio.sleep(self._interval_s)

    def _check_topics(self, present: set[str], starting: bool = False) -> None:
        self._missing = {
            topic: setting for topic, setting in self._topics.items() if topic not in present
        }
        if not self._missing:
            return
        # One line names them all: the repeat filter keeps one line per message template.
        named = self.describe_missing()
        if starting:
            log.error(
                "the broker has no topic %s; the worker creates no topics, and waits for them, "
                "not ready",
                named,
            )
        else:
            log.error(
                "topic %s is no longer in the broker's metadata; not ready, and records for it "
                "are held until it exists again",
                named,
            )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _watch(self, client: AIOKafkaClient) -> None:
        while True:
            try:
                answered = await client.force_metadata_update()
            except KafkaError:
                answered = False
            if answered:
                self._last_answer = self._clock()
                self._check_topics(client.cluster.topics())
            await asyncio.sleep(self._interval_s)
