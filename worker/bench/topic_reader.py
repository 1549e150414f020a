"""What the bench reads of the worker's output topics: every record from the start, as it comes."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from ..config import Settings
from ..embedded.broker import FETCH_WAIT_MS
from ..lifecycle import AsyncLifecycle
from ..stream.transport import aiokafka_options


class TopicReader(AsyncLifecycle):
    """Reads `topics` from the earliest offset, in no consumer group, from start until stop;
    each record goes to `take` as it arrives, on the event loop.

    A fetch waits at most the embedded broker's `FETCH_WAIT_MS`, which bounds how late a record
    is read (see the latency note in `worker.bench`).
    """

    def __init__(self, settings: Settings, *topics: str) -> None:
        self._consumer = AIOKafkaConsumer(
            *topics,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=FETCH_WAIT_MS,
            **aiokafka_options(settings),
        )
        self._task: asyncio.Task[None] | None = None

    def take(self, record: ConsumerRecord[bytes, bytes]) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for record in self._consumer:
            self.take(record)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()
