"""`qa-worker run` as a real process: kill -9 at random moments, and SIGTERM draining."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from parity import texts
from tests.support.streaming import (
    ANSWERS,
    TopicWatcher,
    committed_offsets,
    create_topics,
    kill_at_random_moments,
    produce,
    question_values,
    wait_until,
    worker_settings,
)
from tests.support.worker_process import worker_process
from worker.config import Settings
from worker.embedded.broker import EmbeddedBroker

pytestmark = pytest.mark.broker


async def restart_until_every_event_is_answered(
    settings: Settings, log: Path, answers: TopicWatcher, events: int, timeout: float
) -> int:
    """Starts the worker again, lets it run until each of `events` events has an answer, then
    stops it with SIGTERM; its exit code."""
    with worker_process(settings, log) as process:
        try:
            await wait_until(
                lambda: len(set(answers.ids())) == events,
                timeout=timeout,
                what="the restarted worker to answer every event",
            )
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=60)
    return code


async def test_kill_9_at_random_moments_loses_no_event(
    exported_models: dict[str, Path], tmp_path: Path
) -> None:
    values = question_values(texts.pairs(seed=13, count=2000))
    expected = {json.loads(v)["id"] for v in values}
    log = tmp_path / "worker.log"
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        settings = worker_settings(
            broker.bootstrap_servers, exported_models["bert"], batch_size=8, max_in_flight=64
        )
        await produce(broker.bootstrap_servers, values)
        async with TopicWatcher(broker.bootstrap_servers, [ANSWERS]) as answers:
            kills = await kill_at_random_moments(
                settings, log, answers, len(expected), most_kills=5, seed=2024
            )
            ids = answers.ids()
    assert kills >= 3, "the worker finished before it could be killed three times"
    assert set(ids) == expected
    duplicates = len(ids) - len(set(ids))
    print(f"\n{kills} kills, {len(ids)} answers, {duplicates} answered twice")


async def test_sigterm_drains_in_flight_events_and_commits_them(
    exported_models: dict[str, Path], tmp_path: Path
) -> None:
    values = question_values(texts.pairs(seed=17, count=1000))
    log = tmp_path / "worker.log"
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        settings = worker_settings(
            broker.bootstrap_servers, exported_models["bert"], batch_size=4, max_in_flight=128
        )
        positions = await produce(broker.bootstrap_servers, values)
        location = {
            json.loads(v)["id"]: position for v, position in zip(values, positions, strict=True)
        }
        async with TopicWatcher(broker.bootstrap_servers, [ANSWERS]) as answers:
            with worker_process(settings, log) as process:
                await wait_until(
                    lambda: len(answers.records) >= 100, timeout=90, what="answers to flow"
                )
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
            committed = await committed_offsets(broker.bootstrap_servers, settings.group_id, 4)
            # Everything delivered before the exit is on the topic by now; read it all.
            await wait_until(
                lambda: len(answers.records) >= sum(committed.values()),
                timeout=30,
                what="the drained answers",
            )
            drained = answers.ids()
            assert len(drained) < len(values), "the worker finished before the signal"
            below_commit = {
                event_id
                for event_id, (partition, offset) in location.items()
                if offset < committed[partition]
            }
            # Every event the worker took was answered and committed, and nothing else.
            assert set(drained) == below_commit
            assert len(drained) == len(set(drained))

            code = await restart_until_every_event_is_answered(
                settings, log, answers, len(values), timeout=300
            )
            assert code == 0
            assert len(answers.ids()) == len(values), "a drained event was answered twice"


async def test_sigterm_exits_within_the_drain_timeout_under_heavy_load(
    exported_models: dict[str, Path], tmp_path: Path
) -> None:
    drain_timeout_s = 2.0
    # Contexts at the length limit: hundreds of windows each, far more than 2 s of work.
    long_context = " ".join(texts.pairs(seed=3, count=400)[i][1] for i in range(400))[:100_000]
    values = question_values([("What is it?", long_context)] * 60)
    log = tmp_path / "worker.log"
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        settings = worker_settings(
            broker.bootstrap_servers,
            exported_models["bert"],
            batch_size=4,
            drain_timeout_s=drain_timeout_s,
        )
        await produce(broker.bootstrap_servers, values)
        async with TopicWatcher(broker.bootstrap_servers, [ANSWERS]) as answers:
            with worker_process(settings, log) as process:
                await wait_until(
                    lambda: len(answers.records) >= 1, timeout=120, what="the first answer"
                )
                signalled = time.monotonic()
                process.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(process.wait, drain_timeout_s + 20)
                took = time.monotonic() - signalled
            output = log.read_text()
            assert took < drain_timeout_s + 5, f"exit took {took:.1f} s\n{output[-3000:]}"
            # Work was left in flight: not a clean drain, and the exit code says so.
            assert code == 1, output[-3000:]
            assert "still in flight after 2 s" in output
            print(f"\nSIGTERM to exit: {took:.2f} s (drain timeout {drain_timeout_s} s)")

            await restart_until_every_event_is_answered(
                settings, log, answers, len(values), timeout=600
            )


async def test_sigterm_with_the_broker_gone_and_nothing_in_flight_says_nothing_is_lost(
    exported_models: dict[str, Path], tmp_path: Path
) -> None:
    drain_timeout_s = 2.0
    log = tmp_path / "worker.log"
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        settings = worker_settings(
            broker.bootstrap_servers, exported_models["bert"], drain_timeout_s=drain_timeout_s
        )
        await produce(broker.bootstrap_servers, question_values(texts.pairs(seed=9, count=1)))
        with worker_process(settings, log) as process:
            async with TopicWatcher(broker.bootstrap_servers, [ANSWERS]) as answers:
                await wait_until(lambda: len(answers.records) == 1, 120, "the answer")
            await broker.kill()
            process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(process.wait, drain_timeout_s + 30)
    output = log.read_text()
    # The client's own stop waits on the broker past the drain timeout: a failed stop, said as
    # such, not as events left behind.
    assert code == 1, output[-3000:]
    assert "with no event in flight: nothing is lost" in output, output[-3000:]
    assert "still in flight after" not in output
