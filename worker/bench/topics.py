"""Each worker the bench starts runs on topics and a group of its own, so no earlier run interferes.

Shared by `end_to_end` and `tracing_overhead`: the settings of such a worker, its topics made
before it starts and, on a broker the user named, deleted afterwards.
"""

from __future__ import annotations

import dataclasses
import uuid

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ..config import Settings
from ..embedded.process import free_port
from ..errors import BenchError
from ..stream.transport import aiokafka_options, create_topics

__all__ = [
    "PARTITIONS",
    "WARMUP_EVENTS",
    "bench_topics",
    "bench_worker_settings",
    "create_bench_topics",
    "delete_topics",
]

# Enough to bring the worker's session, arenas and Kafka clients to their steady state.
WARMUP_EVENTS = 16
PARTITIONS = 4


def bench_worker_settings(settings: Settings) -> Settings:
    """The worker's settings on topics and a group of its own, so no earlier run interferes."""
    run = f"qa-bench-{uuid.uuid4().hex[:8]}"
    return dataclasses.replace(
        settings,
        questions_topic=f"{run}-questions",
        answers_topic=f"{run}-answers",
        dead_letter_topic=f"{run}-dead-letters",
        group_id=run,
        question_sets=None,
        documents_topics=None,
        http_host="127.0.0.1",
        http_port=free_port(),
    )


def bench_topics(settings: Settings) -> list[str]:
    return [settings.questions_topic, settings.answers_topic, settings.dead_letter_topic]


async def create_bench_topics(settings: Settings) -> None:
    try:
        await create_topics(aiokafka_options(settings), bench_topics(settings), PARTITIONS)
    except KafkaError as error:
        raise BenchError(f"could not create topics: {error}") from None


async def delete_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**aiokafka_options(settings))
    await admin.start()
    try:
        await admin.delete_topics(bench_topics(settings))
    finally:
        await admin.close()
