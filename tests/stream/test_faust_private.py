"""What each of the worker's uses of faust's and aiokafka's private API relies on
(`worker.stream.faust_private`, whose docstring says why each is needed).

Each test names its bend, and fails when an upgrade of faust or aiokafka removes or changes what
that bend needs: a method the worker overrides or calls (its name and parameters), an attribute
of objects built as the worker builds them (an app with the worker's settings, its consumer and
producer, never started, so no broker), or a module name that faust or aiokafka builds their
objects from.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import aiokafka.admin.client
import aiokafka.client
import aiokafka.consumer.consumer
import aiokafka.consumer.fetcher
import faust
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from faust.exceptions import NotReady
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.threads import ServiceThread

from worker.config import Settings
from worker.stream.app import build_app
from worker.stream.faust_private import (
    FetchWaitTransport,
    InvalidRecordError,
    aiokafka_producer,
    aiokafka_producer_if_started,
    committed_offsets,
    forget_topic,
    install_non_creating_metadata,
)
from worker.stream.topic_metadata import NonCreatingMetadataRequest


def parameters(method: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(method).parameters)


def names_used(function: Callable[..., Any]) -> set[str]:
    """The global and attribute names a function's own code reads or writes."""
    # mode's `Service.task` keeps the function it decorates as `fun`.
    return set(getattr(function, "fun", function).__code__.co_names)


def test_fetch_wait_bend_overrides_what_faust_still_calls() -> None:
    base = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
    assert parameters(base) == ["self", "transport"], "fetch wait bend: faust's method changed"
    assert "_create_worker_consumer" in names_used(
        faust_aiokafka.AIOKafkaConsumerThread._create_consumer
    ), "fetch wait bend: faust no longer builds its consumer with _create_worker_consumer"


async def test_fetch_wait_bend_reaches_the_fetcher_aiokafka_starts(tmp_path: Path) -> None:
    app = build_app(Settings(fetch_max_wait_ms=123), str(tmp_path))
    thread = app.consumer._thread  # type: ignore[attr-defined]
    consumer = thread._create_worker_consumer(app.transport)
    assert consumer._fetch_max_wait_ms == 123, "fetch wait bend: the attribute is not read back"
    made: dict[str, Any] = {}

    class FetcherMade(Exception):
        pass

    def fetcher(*args: Any, **options: Any) -> None:
        made.update(options)
        raise FetcherMade

    async def bootstrap() -> None:
        pass

    with (
        mock.patch.object(aiokafka.consumer.consumer, "Fetcher", fetcher),
        mock.patch.object(consumer._client, "bootstrap", bootstrap),
        pytest.raises(FetcherMade),
    ):
        await consumer.start()
    await consumer.stop()
    assert made["fetch_max_wait_ms"] == 123, (
        "fetch wait bend: aiokafka's consumer no longer starts its fetcher with _fetch_max_wait_ms"
    )


def test_fetch_failure_bend_overrides_what_faust_still_calls(tmp_path: Path) -> None:
    consumer_class = faust_consumer.Consumer
    assert parameters(consumer_class._drain_messages) == ["self", "fetcher"], (
        "fetch failure bend: faust's _drain_messages changed"
    )
    assert "_drain_messages" in names_used(faust_consumer.Fetcher._fetcher), (
        "fetch failure bend: faust's Fetcher no longer runs Consumer._drain_messages"
    )
    assert parameters(ServiceThread.crash) == ["self", "exc"], (
        "fetch failure bend: mode's ServiceThread.crash changed"
    )
    app = build_app(Settings(), str(tmp_path))
    assert isinstance(app.consumer, FetchWaitTransport.Consumer), (
        "fetch failure bend: faust no longer makes its consumer from Transport.Consumer"
    )
    assert isinstance(app.consumer._thread, faust_aiokafka.AIOKafkaConsumerThread), (  # type: ignore[attr-defined]
        "fetch failure bend: faust no longer makes its thread with _new_consumer_thread"
    )
    assert type(app.consumer._thread).crash is not ServiceThread.crash  # type: ignore[attr-defined]


def test_paused_partition_bend_overrides_what_faust_still_calls() -> None:
    base = faust_consumer.Consumer._wait_next_records
    assert parameters(base) == ["self", "timeout"], "paused partition bend: faust's method changed"
    # Tuple[Optional[RecordMap], Optional[Set[TP]]]: the records, and the partitions kept.
    _, kept = typing.get_args(inspect.signature(base).return_annotation)
    partitions, _ = typing.get_args(kept)
    assert typing.get_origin(partitions) is set and typing.get_args(partitions) == (TP,), (
        "paused partition bend: _wait_next_records no longer returns (records, partitions)"
    )
    assert "_wait_next_records" in names_used(faust_consumer.Consumer.getmany), (
        "paused partition bend: faust's getmany no longer asks _wait_next_records"
    )
    assert parameters(faust_consumer.Consumer.on_partitions_revoked) == ["self", "revoked"]


async def test_producer_bend_finds_the_aiokafka_producer_once_faust_has_one(
    tmp_path: Path,
) -> None:
    producer = build_app(Settings(), str(tmp_path)).producer
    assert aiokafka_producer_if_started(producer) is None
    with pytest.raises(NotReady):
        aiokafka_producer(producer)
    # What faust's Producer.on_start does, short of connecting.
    assert "_producer" in names_used(faust_aiokafka.Producer.on_start), (
        "producer bend: faust no longer keeps its aiokafka producer in _producer"
    )
    made = producer._producer = producer._new_producer()  # type: ignore[attr-defined]
    try:
        assert isinstance(made, AIOKafkaProducer)
        assert aiokafka_producer(producer) is made, "producer bend: _ensure_producer changed"
        assert aiokafka_producer_if_started(producer) is made, "producer bend: _producer changed"
    finally:
        await made.stop()


def test_ack_wait_bend_overrides_what_faust_waits_with_on_stop_and_revocation(
    tmp_path: Path,
) -> None:
    consumer_class = faust_consumer.Consumer
    assert parameters(consumer_class.wait_empty) == ["self"], "ack wait bend: faust's changed"
    waits = names_used(faust.App._consumer_wait_empty)
    assert "wait_empty" in waits, "ack wait bend: faust no longer waits with Consumer.wait_empty"
    for caller in (faust.App._stop_consumer, faust.App._on_partitions_revoked):
        assert "_consumer_wait_empty" in names_used(caller), (
            f"ack wait bend: faust's {caller.__name__} no longer waits for acks"
        )
    assert parameters(consumer_class._wait_for_ack) == ["self", "timeout"]
    assert parameters(consumer_class._clean_unacked_messages) == ["self"]
    assert parameters(consumer_class.commit_and_end_transactions) == ["self"]
    app = build_app(Settings(), str(tmp_path))
    assert isinstance(app.consumer, FetchWaitTransport.Consumer)
    assert len(app.consumer._unacked_messages) == 0, (  # type: ignore[attr-defined]
        "ack wait bend: faust's consumer no longer keeps _unacked_messages"
    )


def test_committed_offsets_bend_reads_what_faust_moves_on_assignment_and_commit(
    tmp_path: Path,
) -> None:
    consumer = build_app(Settings(), str(tmp_path)).consumer
    assert dict(committed_offsets(consumer)) == {}, "committed offsets bend: attribute changed"
    for moves in (faust_consumer.Consumer.perform_seek, faust_consumer.Consumer._commit_offsets):
        assert "_committed_offset" in names_used(moves), (
            f"committed offsets bend: faust's {moves.__name__} no longer moves _committed_offset"
        )


async def test_forget_topic_bend_drops_what_the_metadata_refresh_asks_for() -> None:
    client = AIOKafkaClient(bootstrap_servers="localhost:9")
    try:
        client.add_topic("replies.a")
        forget_topic(client, "replies.a")
        assert "replies.a" not in client._topics, "forget topic bend: _topics changed"
        assert "_topics" in names_used(AIOKafkaClient._md_synchronizer), (
            "forget topic bend: aiokafka's metadata refresh no longer asks for _topics"
        )
    finally:
        await client.close()


def test_non_creating_metadata_bend_replaces_what_aiokafka_builds_requests_from() -> None:
    admin = aiokafka.admin.client.AIOKafkaAdminClient
    for builds in (AIOKafkaClient._metadata_update, admin._get_cluster_metadata):
        assert "MetadataRequest" in names_used(builds), (
            f"non-creating metadata bend: {builds.__qualname__} no longer builds MetadataRequest"
        )
    install_non_creating_metadata()
    assert aiokafka.client.MetadataRequest is NonCreatingMetadataRequest
    assert aiokafka.admin.client.MetadataRequest is NonCreatingMetadataRequest


def test_lenient_header_keys_bend_replaces_what_the_fetcher_reads_batches_with() -> None:
    assert hasattr(aiokafka.consumer.fetcher, "MemoryRecords")
    assert "MemoryRecords" in names_used(aiokafka.consumer.fetcher.Fetcher._proc_fetch_request), (
        "lenient header keys bend: aiokafka's fetcher no longer reads batches with MemoryRecords"
    )


def test_invalid_record_bend_aiokafka_reports_error_87_by_its_own_class() -> None:
    # Without the registration it would be UnknownError, errno -1: the code would be lost.
    assert for_code(87) is InvalidRecordError, "INVALID_RECORD bend: error 87 is not registered"
    assert InvalidRecordError().errno == 87 and not InvalidRecordError.retriable


def test_environment_bend_faust_reads_no_variable_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_COMMIT_INTERVAL", "99")
    monkeypatch.setenv("BROKER_MAX_POLL_RECORDS", "7")
    settings = Settings(commit_interval_s=1.5, max_in_flight=64)
    conf = build_app(settings, str(tmp_path)).conf
    assert conf.broker_commit_interval == 1.5, "environment bend: faust read its own variable"
    assert conf.broker_max_poll_records == 64, "environment bend: faust read its own variable"


def test_commit_sensor_leans_on_faust_hooks_that_still_exist(tmp_path: Path) -> None:
    assert parameters(faust.Sensor.on_commit_completed) == ["self", "consumer", "state"]
    assert build_app(Settings(), str(tmp_path)).monitor.tp_committed_offsets == {}
