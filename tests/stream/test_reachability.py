"""Whether the broker answers: start-up fails on time naming the settings, readiness follows it."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from parity import texts
from tests.support.streaming import (
    ANSWERS,
    DEAD_LETTERS,
    QUESTIONS,
    collect,
    committed_offsets,
    create_topics,
    produce,
    question_values,
    wait_until,
    worker_settings,
)
from tests.support.worker_process import readiness, worker_process
from worker.config import Settings
from worker.embedded.broker import EmbeddedBroker
from worker.embedded.process import free_port
from worker.errors import ConfigError, InputLostError
from worker.model.loading import load_engine
from worker.observability.metrics import WorkerMetrics
from worker.stream import QAWorker
from worker.stream.reachability import CONNECT_WITHIN_S, BrokerWatch

pytestmark = pytest.mark.broker


def plain_settings(bootstrap: str, **overrides: object) -> Settings:
    return dataclasses.replace(Settings(broker=bootstrap), **overrides)


async def test_the_watch_counts_how_long_the_broker_has_been_away() -> None:
    async with EmbeddedBroker() as broker:
        watch = BrokerWatch(plain_settings(broker.bootstrap_servers), interval_s=0.1)
        await watch.connect(within_s=5.0)
        watch.start()
        try:
            await asyncio.sleep(0.5)
            assert watch.unreachable_for() == 0.0
            await broker.stop()
            await wait_until(lambda: watch.unreachable_for() > 1.0, 10, "the watch to notice")
        finally:
            await watch.close()


async def connect_failure(watch: BrokerWatch) -> tuple[str, float]:
    """The ConfigError's message of `watch.connect(within_s=2.0)`, and the seconds it took."""
    started = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        await asyncio.wait_for(watch.connect(within_s=2.0), 10.0)
    took = time.monotonic() - started
    await watch.close()
    return str(raised.value), took


@pytest.mark.parametrize(
    ("protocol", "extra"),
    [
        ("SSL", {}),
        ("SASL_PLAINTEXT", {"sasl_username": "u", "sasl_password": "secret-pw"}),
    ],
)
async def test_tls_or_sasl_against_a_plaintext_listener_fails_on_time_naming_the_setting(
    protocol: str, extra: dict[str, str]
) -> None:
    async with EmbeddedBroker() as broker:
        settings = plain_settings(broker.bootstrap_servers, security_protocol=protocol, **extra)
        message, took = await connect_failure(BrokerWatch(settings, interval_s=0.1))
    assert "--security-protocol" in message and "--broker" in message and protocol in message
    assert "secret-pw" not in message
    # The bound plus at most one connection attempt's own timeout.
    assert took < 2.0 + 5.0 + 1.0


async def test_readiness_is_503_once_the_broker_is_away_longer_than_the_session(
    exported_models: dict[str, Path],
) -> None:
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        settings = worker_settings(
            broker.bootstrap_servers, exported_models["bert"], drain_timeout_s=3.0
        )
        worker = QAWorker(settings, load_engine(settings), WorkerMetrics())
        await worker.start()
        try:
            await wait_until(lambda: worker.readiness()[0], 30, "the worker to be ready")
            await broker.stop()
            await wait_until(lambda: not worker.readiness()[0], 15, "readiness to drop")
            assert "broker has not answered" in worker.readiness()[1]
        finally:
            started = time.monotonic()
            await worker.stop()
            # The drain cannot commit with no broker, and must still end on time.
            assert time.monotonic() - started < settings.drain_timeout_s + 2.0


def answers_http(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
            return True
    except OSError:
        return False


async def test_run_with_ssl_against_plaintext_exits_non_zero_and_obeys_sigterm_while_starting(
    exported_models: dict[str, Path], tmp_path: Path
) -> None:
    async with EmbeddedBroker() as broker:
        base = worker_settings(
            broker.bootstrap_servers, exported_models["bert"], security_protocol="SSL"
        )
        # Left alone: a non-zero exit within the bound, with a line naming the setting.
        log = tmp_path / "alone.log"
        with worker_process(base, log) as process:
            started = time.monotonic()
            code = await asyncio.to_thread(process.wait, CONNECT_WITHIN_S + 30)
        assert code != 0
        assert time.monotonic() - started < CONNECT_WITHIN_S + 25
        assert "--security-protocol" in log.read_text()
        # SIGTERM while it is still trying: it leaves at once, non-zero.
        port = free_port()
        log = tmp_path / "sigterm.log"
        with worker_process(dataclasses.replace(base, http_port=port), log) as process:
            await wait_until(lambda: answers_http(port), 60, "the health server to answer")
            process.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            code = await asyncio.to_thread(process.wait, base.drain_timeout_s + 10)
            assert code != 0
            assert time.monotonic() - stopped < base.drain_timeout_s + 5
            assert "stopped while starting" in log.read_text()
    assert isinstance(process, subprocess.Popen)


async def test_a_configured_topic_deleted_while_running_is_missing_and_holds_its_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with EmbeddedBroker() as broker:
        await broker.create_topic("answers", 1)
        await broker.create_topic("questions", 1)
        topics = {
            "answers": "--answers-topic / QA_ANSWERS_TOPIC",
            "questions": "--questions-topic / QA_QUESTIONS_TOPIC",
        }
        watch = BrokerWatch(plain_settings(broker.bootstrap_servers), topics, interval_s=0.1)
        await watch.connect(within_s=5.0)
        watch.start()
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        await admin.start()
        try:
            await asyncio.sleep(0.5)
            assert watch.missing_topics() == {}
            await asyncio.wait_for(watch.wait_for("answers"), 1.0)
            await admin.delete_topics(["answers"])
            await wait_until(lambda: watch.missing_topics(), 10, "the watch to miss the topic")
            assert watch.missing_topics() == {"answers": topics["answers"]}
            assert any(
                r.levelname == "ERROR" and "'answers'" in r.getMessage() for r in caplog.records
            )
            held = asyncio.ensure_future(watch.wait_for("answers"))
            await asyncio.sleep(0.5)
            assert not held.done()
            await broker.create_topic("answers", 1)
            await asyncio.wait_for(held, 10)
            assert watch.missing_topics() == {}
        finally:
            await admin.close()
            await watch.close()


TOPIC_SETTINGS = {
    "answers": "--answers-topic / QA_ANSWERS_TOPIC",
    "questions": "--questions-topic / QA_QUESTIONS_TOPIC",
    "tags": "--tags-topic / QA_TAGS_TOPIC",
}


async def test_a_configured_topic_missing_at_start_up_is_waited_for_then_the_watch_connects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with EmbeddedBroker() as broker:
        await broker.create_topic("questions", 1)
        watch = BrokerWatch(plain_settings(broker.bootstrap_servers), TOPIC_SETTINGS, 0.1)
        connecting = asyncio.ensure_future(watch.connect(within_s=30.0))
        try:
            await wait_until(lambda: watch.missing_topics(), 10, "the watch to miss topics")
            assert watch.missing_topics() == {
                topic: TOPIC_SETTINGS[topic] for topic in ("answers", "tags")
            }
            assert not connecting.done()
            # The broker answers all the while: not "unreachable", whatever the topics.
            waited_until = time.monotonic() + 1.5
            while time.monotonic() < waited_until:
                assert watch.unreachable_for() < 0.5, watch.unreachable_for()
                await asyncio.sleep(0.05)
            (line,) = {
                r.getMessage() for r in caplog.records if r.levelname == "ERROR"
            }  # one cause, and one line naming every missing topic with its setting
            assert "'answers' (--answers-topic / QA_ANSWERS_TOPIC)" in line, line
            assert "'tags' (--tags-topic / QA_TAGS_TOPIC)" in line, line
            # Created one by one: the watch waits for the last.
            await broker.create_topic("answers", 1)
            await wait_until(
                lambda: set(watch.missing_topics()) == {"tags"}, 10, "answers to be found"
            )
            assert not connecting.done()
            await broker.create_topic("tags", 1)
            await asyncio.wait_for(connecting, 10)
            assert watch.missing_topics() == {}
        finally:
            connecting.cancel()
            await watch.close()


async def test_a_configured_topic_still_missing_at_the_bound_fails_naming_it_and_its_setting() -> (
    None
):
    async with EmbeddedBroker() as broker:
        await broker.create_topic("questions", 1)
        await broker.create_topic("answers", 1)
        watch = BrokerWatch(plain_settings(broker.bootstrap_servers), TOPIC_SETTINGS, 0.1)
        message, took = await connect_failure(watch)
    assert "'tags' (--tags-topic / QA_TAGS_TOPIC)" in message, message
    assert "'answers'" not in message and "'questions'" not in message, message
    assert "creates none" in message, message
    # At the bound, not before it, and within one metadata request after it.
    assert 2.0 <= took < 2.0 + 5.0 + 1.0


async def test_run_without_its_dead_letter_topic_is_not_ready_naming_it_then_exits_2_in_one_line(
    exported_models: dict[str, Path], tmp_path: Path
) -> None:
    async with EmbeddedBroker() as broker:
        await broker.create_topic(QUESTIONS, 1)
        await broker.create_topic(ANSWERS, 1)
        port = free_port()
        settings = worker_settings(
            broker.bootstrap_servers, exported_models["bert"], http_port=port
        )
        log = tmp_path / "worker.log"
        with worker_process(settings, log) as process:
            # Warming up and connecting first, then waiting for the topic, not ready.
            await wait_until(
                lambda: repr(DEAD_LETTERS) in readiness(port)[1],
                60,
                "readiness to name the missing topic",
            )
            status, reason = readiness(port)
            assert status == 503 and "--dead-letter-topic / QA_DEAD_LETTER_TOPIC" in reason, reason
            code = await asyncio.to_thread(process.wait, CONNECT_WITHIN_S + 30)
    assert code == 2
    output = log.read_text()
    assert "Traceback" not in output, output
    (failure,) = [line for line in output.splitlines() if "creates none" in line]
    assert repr(DEAD_LETTERS) in failure and "QA_DEAD_LETTER_TOPIC" in failure, failure


async def test_a_deleted_dead_letter_topic_holds_its_event_and_every_commit_behind_it(
    exported_models: dict[str, Path],
) -> None:
    good = question_values(texts.pairs(seed=41, count=2), prefix="good")
    bad = b"{not json"
    async with EmbeddedBroker() as broker:
        await create_topics(broker, partitions=1)
        server = broker.bootstrap_servers
        settings = worker_settings(server, exported_models["bert"])
        worker = QAWorker(settings, load_engine(settings), WorkerMetrics())
        await worker.start()
        admin = AIOKafkaAdminClient(bootstrap_servers=server)
        await admin.start()
        try:
            await wait_until(lambda: worker.readiness()[0], 30, "the worker to be ready")
            await admin.delete_topics([DEAD_LETTERS])
            await wait_until(lambda: not worker.readiness()[0], 10, "readiness to drop")
            assert worker.readiness()[1] == (
                f"configured topic {DEAD_LETTERS!r} (--dead-letter-topic / "
                "QA_DEAD_LETTER_TOPIC) is not in the broker's metadata"
            )
            await produce(server, [good[0], bad, good[1]])
            answered = await collect(server, [ANSWERS], 2, timeout=30)
            assert sorted(r.json()["id"] for r in answered) == ["good0", "good1"]
            # The dead letter is held at offset 1, and good1 behind it is not committed either.

            async def committed(offset: int) -> bool:
                return await committed_offsets(server, settings.group_id, 1) == {0: offset}

            await wait_until(lambda: committed(1), 10, "good0's commit")
            for _ in range(5):
                assert await committed_offsets(server, settings.group_id, 1) == {0: 1}
                await asyncio.sleep(settings.commit_interval_s)
            await broker.create_topic(DEAD_LETTERS, 1)
            (letter,) = await collect(server, [DEAD_LETTERS], 1, timeout=30)
            assert letter.json()["error"]["code"] == "invalid_json"
            await wait_until(lambda: committed(3), 10, "the commit past the dead letter")
            await wait_until(lambda: worker.readiness()[0], 10, "the worker to be ready again")
        finally:
            await admin.close()
            await worker.stop()


async def test_a_questions_topic_deleted_under_the_worker_stops_it_naming_the_offset_reset(
    exported_models: dict[str, Path],
) -> None:
    """Positions committed on the deleted log would skip records of a topic recreated under its
    name, so the worker fails loudly instead of reading on as if nothing happened."""
    async with EmbeddedBroker() as broker:
        await create_topics(broker, partitions=1)
        server = broker.bootstrap_servers
        settings = worker_settings(server, exported_models["bert"])
        fatal: list[BaseException] = []
        worker = QAWorker(settings, load_engine(settings), WorkerMetrics(), on_fatal=fatal.append)
        await worker.start()
        admin = AIOKafkaAdminClient(bootstrap_servers=server)
        await admin.start()
        try:
            await produce(server, question_values(texts.pairs(seed=43, count=3)))
            await collect(server, [ANSWERS], 3, timeout=30)
            await wait_until(lambda: worker.readiness()[0], 30, "the worker to be ready")
            await admin.delete_topics([QUESTIONS])
            await wait_until(lambda: fatal, 10, "the worker to stop")
        finally:
            await admin.close()
            await worker.stop()
    (error,) = fatal
    assert isinstance(error, InputLostError)
    assert f"the topic {QUESTIONS!r} (--questions-topic / QA_QUESTIONS_TOPIC) was deleted" in str(
        error
    )
    assert f"--group {settings.group_id} --topic {QUESTIONS} --reset-offsets" in str(error)
    ready, reason = worker.readiness()
    assert not ready and "stopping after a fatal error" in reason
