"""A running `qa-worker run` process while its broker is killed with SIGKILL and comes back.

The broker keeps its data in a local S3 server (worker.embedded.local_s3), so records and committed
offsets survive the kill, as a real cluster's would. Against that storage the consumers need a
fetch wait well above the memory broker's FETCH_WAIT_MS: tansu answers a fetch when its wait
runs out, and reading batches back from S3 takes longer than 5 ms, so with the memory broker's
wait the fetches come back (nearly) empty and the worker never gets past the first records.
"""

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
    create_topics,
    produce,
    question_values,
    wait_until,
    worker_settings,
)
from tests.support.worker_process import readiness, worker_process
from worker.embedded.broker import EmbeddedBroker
from worker.embedded.local_s3 import LocalS3
from worker.embedded.process import free_port

pytestmark = pytest.mark.broker

S3_FETCH_WAIT_MS = 500


async def test_a_broker_killed_under_load_and_restarted_loses_no_event(
    exported_models: dict[str, Path], tmp_path: Path
) -> None:
    values = question_values(texts.pairs(seed=31, count=400))
    expected = {json.loads(value)["id"] for value in values}
    log = tmp_path / "worker.log"
    port = free_port()
    async with LocalS3() as s3, EmbeddedBroker(storage=s3) as broker:
        await create_topics(broker)
        settings = worker_settings(
            broker.bootstrap_servers,
            exported_models["bert"],
            http_port=port,
            drain_timeout_s=5.0,
            fetch_max_wait_ms=S3_FETCH_WAIT_MS,
        )
        with worker_process(settings, log) as process:
            await wait_until(lambda: readiness(port)[0] == 200, 60, "the worker to be ready")
            await produce(broker.bootstrap_servers, values)
            async with TopicWatcher(broker.bootstrap_servers, [ANSWERS]) as answers:
                await wait_until(lambda: len(answers.ids()) >= 50, 60, "answers before the kill")
                before = len(set(answers.ids()))
            await broker.kill()
            outage = time.monotonic()
            await wait_until(lambda: readiness(port)[0] == 503, 30, "/readyz 503 in the outage")
            noticed_s = time.monotonic() - outage
            await asyncio.sleep(2.0)  # an outage longer than the worker's session timeout
            await broker.restart()
            async with TopicWatcher(broker.bootstrap_servers, [ANSWERS]) as answers:
                await wait_until(
                    lambda: set(answers.ids()) >= expected, 180, "every event to be answered"
                )
                await wait_until(lambda: readiness(port)[0] == 200, 60, "/readyz 200 after it")
                ids = answers.ids()
            assert process.poll() is None, log.read_text()[-3000:]
            # SIGTERM while the broker is away again: out within the drain timeout and a margin.
            await broker.kill()
            await wait_until(lambda: readiness(port)[0] == 503, 30, "/readyz 503 again")
            process.send_signal(signal.SIGTERM)
            stopping = time.monotonic()
            code = await asyncio.to_thread(process.wait, settings.drain_timeout_s + 30)
            stop_s = time.monotonic() - stopping
    assert set(ids) == expected
    assert stop_s < settings.drain_timeout_s + 5.0, stop_s
    duplicates = len(ids) - len(set(ids))
    print(
        f"\n{before} answered before the kill; /readyz 503 {noticed_s:.1f} s into the outage; "
        f"{len(ids)} answers for {len(expected)} events ({duplicates} answered twice); "
        f"SIGTERM in an outage: exit {code} after {stop_s:.1f} s"
    )
