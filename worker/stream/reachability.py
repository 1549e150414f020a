"""Whether the broker answers: a connection check at start-up, and a watch while running.

faust keeps its readiness to itself and retries a lost or refused connection for ever, quietly
when TLS or SASL do not match the listener. A client of our own, with the same connection
settings, asks the broker for metadata once a second: at start-up it must succeed within a bound
(else the settings are wrong, and the error names them), and while running the time since it
last succeeded tells readiness how long the broker has been unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

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
    """Asks the broker for metadata every `interval_s`; `unreachable_for()` since it last could."""

    def __init__(
        self,
        settings: Settings,
        interval_s: float = CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._interval_s = interval_s
        self._clock = clock
        self._client: AIOKafkaClient | None = None
        self._last_answer = clock()
        self._task: asyncio.Task[None] | None = None

    async def connect(self, within_s: float) -> None:
        """Returns once the broker answers; after `within_s`, raises ConfigError naming settings."""
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
            return
        raise ConfigError(
            f"could not connect to the broker at {settings.broker} with security protocol "
            f"{settings.security_protocol} within {within_s:g} s ({error!r}); check "
            f"{describe('broker')} and {describe('security_protocol')} (and the TLS or SASL "
            "settings) against the broker's listener"
        )

    def start(self) -> None:
        """Starts the periodic check; `connect()` must have succeeded."""
        if self._task is None and self._client is not None:
            self._task = asyncio.create_task(self._watch(self._client))

    def unreachable_for(self) -> float:
        """Seconds since the broker last answered; 0 while it answers."""
        return max(0.0, self._clock() - self._last_answer - self._interval_s)

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
            await asyncio.sleep(self._interval_s)
