"""The worker against a real (embedded) broker: answers, dead letters, metrics, backpressure."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from parity import texts
from tests.support.held_engines import SlowEngine
from tests.support.streaming import (
    ANSWERS,
    DEAD_LETTERS,
    TopicWatcher,
    collect,
    committed_offsets,
    create_topics,
    produce,
    question_values,
    wait_for_commits,
    wait_until,
    worker_settings,
)
from worker.embedded.broker import FETCH_WAIT_MS, EmbeddedBroker
from worker.model.loading import load_engine
from worker.observability.http import HealthServer
from worker.observability.metrics import WorkerMetrics
from worker.stream import QAWorker

pytestmark = pytest.mark.broker

STREAM_PARTITIONS = 4


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


async def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """/metrics as {sample name: {sorted labels: value}}; fetched off the loop serving it."""
    text = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def test_answers_through_the_broker_equal_offline_answers(
    exported_models: dict[str, Path], tmp_path: Path
) -> None:
    model = exported_models["bert"]
    pairs = texts.pairs(seed=21, count=500)
    values = question_values(pairs)
    input_file = tmp_path / "questions.jsonl"
    input_file.write_bytes(b"\n".join(values) + b"\n")
    offline = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "answer",
            "--model",
            str(model),
            "--precision",
            "fp32",
            "--top-k",
            "2",
            "--input",
            str(input_file),
        ],
        capture_output=True,
        check=True,
    )
    expected = {line["id"]: line for line in map(json.loads, offline.stdout.splitlines())}

    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        settings = worker_settings(broker.bootstrap_servers, model, top_k=2)
        metrics = WorkerMetrics()
        worker = QAWorker(settings, load_engine(settings), metrics)
        async with HealthServer(metrics, worker.readiness, "127.0.0.1", 0) as server:
            await worker.start()
            # A second start is a no-op, not a second consumer.
            await worker.start()
            try:
                # faust hard-codes 1500 ms; the setting must reach the fetcher aiokafka started.
                fetcher = worker.app.consumer._thread._consumer._fetcher
                assert fetcher._fetch_max_wait_ms == settings.fetch_max_wait_ms == FETCH_WAIT_MS
                keys = [f"key-{i}".encode() for i in range(len(values))]
                headers = [[("correlation-id", f"corr-{i}".encode())] for i in range(len(values))]
                await produce(broker.bootstrap_servers, values, keys, headers)
                records = await collect(broker.bootstrap_servers, [ANSWERS], 500, timeout=300)

                async def caught_up() -> bool:
                    lags = (await scrape(server.port)).get("qa_worker_consumer_lag_messages")
                    return bool(lags) and not any(lags.values())

                await wait_until(caught_up, timeout=30, what="consumer lag to reach zero")
                samples = await scrape(server.port)
                readiness = json.loads(
                    await asyncio.to_thread(fetch, f"http://127.0.0.1:{server.port}/readyz")
                )
            finally:
                # A signal and a `finally` may both stop the worker: both get the one drain.
                stopping = asyncio.gather(worker.stop(), worker.stop())
                await asyncio.sleep(0)  # one turn of the loop: the drain has begun, not ended
                during_drain = worker.readiness()
                drains = await stopping
            assert drains == [True, True]
            assert during_drain == (False, "stopping: draining in-flight events")
            assert await worker.stop() is True

    assert readiness["ready"] is True
    assert len(records) == 500
    for record in records:
        answer = record.json()
        index = int(answer["id"][1:])
        assert record.key == f"key-{index}".encode()
        assert ("correlation-id", f"corr-{index}".encode()) in record.headers
        offline_answer = expected[answer["id"]]
        assert [(a["answer"], a["start"], a["end"]) for a in answer["answers"]] == [
            (a["answer"], a["start"], a["end"]) for a in offline_answer["answers"]
        ]
        assert answer["score"] == pytest.approx(offline_answer["score"], abs=1e-5)
        assert answer["model"]["checksum"] == worker.engine.model_id
        # inference_ms adds up the event's batches, which may run at once on several streams, so
        # it may exceed total_ms; the wait until its last batch started may not.
        assert answer["timings"]["inference_ms"] > 0
        assert answer["timings"]["total_ms"] >= answer["timings"]["queue_ms"]
        stages = list(answer["timings"]["stages_ms"].values())
        assert len(stages) == 8 and stages == sorted(stages)

    def one(name: str, **labels: str) -> float:
        return samples[name][tuple(sorted(labels.items()))]

    assert one("qa_worker_events_received_total", topic="questions") == 500
    assert one("qa_worker_events_answered_total") == 500
    assert one("qa_worker_end_to_end_latency_seconds_count") == 500
    assert one("qa_worker_queue_wait_seconds_count") == 500
    # How many batches the windows needed depends on how fast events arrive against how fast
    # this tiny model answers them; batching itself is tested in test_batcher.py.
    batches = one("qa_worker_inference_seconds_count")
    windows = one("qa_worker_batch_size_windows_sum")
    assert windows >= 500
    assert 0 < batches <= windows
    assert one("qa_worker_in_flight_events") == 0
    assert 1.0 <= one("qa_worker_padding_ratio") < 2.0
    assert one("qa_worker_seconds_since_last_commit") < 30
    assert sum(samples["qa_worker_model_info"].values()) == 1
    assert one("qa_worker_ready") == 1
    assert set(samples["qa_worker_consumer_lag_messages"]) == {
        (("partition", str(p)), ("topic", "questions")) for p in range(4)
    }


async def test_bad_input_is_dead_lettered_while_the_rest_is_answered(
    exported_models: dict[str, Path],
) -> None:
    model = exported_models["bert"]
    good = question_values(texts.pairs(seed=5, count=6), prefix="good")
    bad = {
        "invalid_json": b"{not json",
        "invalid_utf8": b'{"id": "x", "question": "\xff\xfe"}',
        "invalid_event": json.dumps({"id": "no-context", "question": "q?"}).encode(),
        # Zero-width characters only: the model would "answer" them.
        "empty_question": json.dumps(
            {"id": "e", "question": "\u200b\u200b\u200d", "context": "c"}
        ).encode(),
        "empty_context": json.dumps(
            {"id": "ec", "question": "q?", "context": "\u200b \u2060"}
        ).encode(),
        "question_too_large": json.dumps(
            {"id": "long-q", "question": "why " * 100, "context": "c"}
        ).encode(),
        "context_too_large": json.dumps(
            {"id": "long-c", "question": "q?", "context": "word " * 1000}
        ).encode(),
        "deadline_exceeded": json.dumps(
            {
                "id": "late",
                "question": "q?",
                "context": "c",
                "created_at": "2020-01-01T00:00:00Z",
                "deadline_ms": 1000,
            }
        ).encode(),
    }
    wrong_type = json.dumps({"id": "t", "question": "q?", "context": "c", "top_k": "3"}).encode()
    values = [good[0], *bad.values(), good[1], wrong_type, *good[2:]]
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        settings = worker_settings(
            broker.bootstrap_servers, model, max_question_chars=200, max_context_chars=2000
        )
        worker = QAWorker(settings, load_engine(settings), WorkerMetrics())
        await worker.start()
        try:
            await produce(broker.bootstrap_servers, values, topic="questions")
            records = await collect(
                broker.bootstrap_servers, [ANSWERS, DEAD_LETTERS], len(values), timeout=60
            )
            await wait_until(
                lambda: committed_offsets(broker.bootstrap_servers, settings.group_id, 4),
                timeout=10,
                what="a commit",
            )
        finally:
            await worker.stop()
    answers = {r.json()["id"] for r in records if r.topic == ANSWERS}
    assert answers == {json.loads(v)["id"] for v in good}
    letters = [r.json() for r in records if r.topic == DEAD_LETTERS]
    by_code = {letter["error"]["code"]: letter for letter in letters}
    assert set(by_code) == set(bad) | {"invalid_event"}
    assert len(letters) == len(bad) + 1
    assert by_code["invalid_utf8"]["payload_encoding"] == "base64"
    assert by_code["invalid_json"]["payload"] == "{not json"
    type_letter = next(letter for letter in letters if letter.get("id") == "t")
    assert "top_k" in type_letter["error"]["message"]
    for letter in letters:
        assert letter["source"]["topic"] == "questions"
        assert letter["error"]["message"]


async def test_two_workers_share_partitions_and_one_takes_over(
    exported_models: dict[str, Path],
) -> None:
    model = exported_models["bert"]
    values = question_values(texts.pairs(seed=8, count=300))
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        settings = worker_settings(broker.bootstrap_servers, model)
        first = QAWorker(settings, load_engine(settings), WorkerMetrics())
        second = QAWorker(settings, load_engine(settings), WorkerMetrics())
        await first.start()
        await second.start()
        stopped_second = False
        try:
            await wait_until(
                lambda: first.assigned_partitions() and second.assigned_partitions(),
                timeout=30,
                what="both workers to own partitions",
            )
            owned = {tp.partition for tp in first.assigned_partitions()}
            assert owned.isdisjoint(tp.partition for tp in second.assigned_partitions())
            await produce(broker.bootstrap_servers, values[:150])
            await second.stop()
            stopped_second = True
            await wait_until(
                lambda: len(first.assigned_partitions()) == 4,
                timeout=30,
                what="the first worker to take over every partition",
            )
            async with TopicWatcher(broker.bootstrap_servers, [ANSWERS]) as answers:
                await produce(broker.bootstrap_servers, values[150:])
                expected = {json.loads(v)["id"] for v in values}
                await wait_until(
                    lambda: set(answers.ids()) >= expected, timeout=120, what="every answer"
                )
                answered = answers.ids()
        finally:
            await first.stop()
            if not stopped_second:
                await second.stop()
    assert set(answered) == expected
    # At least once: an event answered but not yet committed when its partition moved may be
    # answered again by its new owner, never more of them than were in flight.
    assert len(answered) - len(expected) <= settings.max_in_flight


async def test_backpressure_bounds_memory_and_in_flight_events(
    exported_models: dict[str, Path], tmp_path: Path
) -> None:
    model = exported_models["bert"]
    context = texts.context(random.Random(1), 150)
    # 10 kB of metadata each: buffering the 10,000 waiting events would take over 100 MB.
    blob = {"blob": "x" * 10_000}
    backlog = tmp_path / "backlog.jsonl"
    backlog.write_text(
        "\n".join(
            json.dumps({"id": f"b{i}", "question": "Why?", "context": context, "metadata": blob})
            for i in range(10_000)
        )
    )
    async with EmbeddedBroker() as broker:
        await create_topics(broker, STREAM_PARTITIONS)
        settings = worker_settings(broker.bootstrap_servers, model, max_in_flight=32)
        worker = QAWorker(settings, SlowEngine(load_engine(settings), 0.05), WorkerMetrics())
        process = psutil.Process()

        def answered() -> float:
            return worker.metrics.registry.get_sample_value("qa_worker_events_answered_total")

        def fetched() -> int:
            return sum(worker.app.monitor.tp_read_offsets.values())

        await worker.start()
        try:
            # Warm up first, so threads and arenas exist before memory is measured.
            await produce(broker.bootstrap_servers, question_values(texts.pairs(3, 64), "w"))
            await wait_until(lambda: answered() >= 64, timeout=60, what="the warm-up")
            baseline = process.memory_info().rss
            # Produced by another process, so its buffers are not counted here.
            await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "worker",
                    "produce",
                    "--broker",
                    broker.bootstrap_servers,
                    "--topic",
                    "questions",
                    "--input",
                    str(backlog),
                ],
                check=True,
                capture_output=True,
            )
            peak_rss, peak_answering, peak_held, peak_ahead = baseline, 0, 0, 0
            for _ in range(40):
                peak_rss = max(peak_rss, process.memory_info().rss)
                peak_answering = max(peak_answering, worker.tracker.answering)
                peak_held = max(peak_held, worker.tracker.count)
                peak_ahead = max(peak_ahead, fetched() - answered())
                await asyncio.sleep(0.05)  # the sampling period of the observation
            done = answered()
        finally:
            await worker.stop()
    assert 0 < peak_answering <= settings.max_in_flight
    assert done < 5_000, "the slow engine should have left most events waiting"
    # Taken from Kafka but not answered: those being answered, and per partition what it had
    # fetched before it was paused for its share (up to faust's stream buffer, whose size the
    # worker sets to max(16, max_in_flight)), waiting as read.
    fetched_ahead = STREAM_PARTITIONS * max(16, settings.max_in_flight)
    assert peak_held <= settings.max_in_flight + fetched_ahead
    assert peak_ahead <= settings.max_in_flight + fetched_ahead
    assert peak_rss - baseline < 40 * 1024 * 1024


async def test_a_stop_out_of_drain_time_commits_only_answered_events_and_its_loop_closes(
    exported_models: dict[str, Path],
) -> None:
    """A worker stopped with a backlog still flowing, past its drain time, leaves what it did not
    answer uncommitted, to be read again, and its event loop still closes at once after the stop.
    (faust's stop waits for the ack of every event fetched, but stops its agent only after that
    wait, so the events buffered behind the agent were never acked, and closing the loop waited
    for that stop for ever.)"""
    model = exported_models["bert"]
    values = question_values(texts.pairs(seed=4, count=400), prefix="b")
    async with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        await create_topics(broker, STREAM_PARTITIONS)
        stored = await produce(bootstrap, values)
        settings = worker_settings(bootstrap, model, max_in_flight=32, drain_timeout_s=0.5)

        async def answer_some_then_stop() -> bool:
            worker = QAWorker(settings, SlowEngine(load_engine(settings), 0.05), WorkerMetrics())
            await worker.start()
            try:
                await wait_until(
                    lambda: (
                        worker.metrics.registry.get_sample_value("qa_worker_events_answered_total")
                        >= 20
                    ),
                    60,
                    "20 events answered",
                )
            finally:
                drained = await worker.stop()
            return drained

        outcome: list[bool] = []
        # On a loop of its own, which closes as soon as the stop returns.
        runner = threading.Thread(
            target=lambda: outcome.append(asyncio.run(answer_some_then_stop())), daemon=True
        )
        runner.start()
        await asyncio.to_thread(runner.join, 240)
        assert outcome, "the worker's event loop did not close after its stop"
        committed = await committed_offsets(bootstrap, settings.group_id, STREAM_PARTITIONS)
        answers = await collect(bootstrap, [ANSWERS], len(values), timeout=10)
    assert outcome == [False], "the backlog should have outlasted the drain time"
    answered = {record.json()["id"] for record in answers}
    committed_ids = {
        json.loads(value)["id"]
        for value, (partition, offset) in zip(values, stored, strict=True)
        if offset < committed[partition]
    }
    assert committed_ids <= answered
    assert len(answered) < len(values)


async def test_events_too_large_to_echo_get_one_dead_letter_each_and_stop_nothing(
    exported_models: dict[str, Path],
) -> None:
    model = exported_models["bert"]
    good = question_values(texts.pairs(seed=9, count=40), prefix="good")
    huge = {
        "lorem": ({"context": "lorem ipsum " * 83_333}, "context_too_large"),
        "quotes": ({"context": '"' * 300_000}, "context_too_large"),
        "metadata": ({"context": "c d", "metadata": {"m": "x" * 1_000_000}}, "answer_too_large"),
        "reply": ({"context": "c d", "reply_to": "replies.bad name!"}, "invalid_reply_topic"),
    }
    bad = [
        json.dumps({"id": name, "question": "what?", **fields}).encode()
        for name, (fields, _) in huge.items()
    ]
    # Each huge event sits among valid ones, on every partition the keys spread them over.
    values = [*good[:10], bad[0], *good[10:20], bad[1], *good[20:30], bad[2], bad[3], *good[30:]]
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        settings = worker_settings(broker.bootstrap_servers, model, reply_topics="replies.*")
        worker = QAWorker(settings, load_engine(settings), WorkerMetrics())
        await worker.start()
        try:
            stored = await produce(broker.bootstrap_servers, values, topic="questions")
            records = await collect(
                broker.bootstrap_servers, [ANSWERS, DEAD_LETTERS], len(values), timeout=60
            )
            await wait_for_commits(broker.bootstrap_servers, settings.group_id, stored, 30)
        finally:
            await worker.stop()
    answers = [r.json()["id"] for r in records if r.topic == ANSWERS]
    assert sorted(answers) == sorted(json.loads(v)["id"] for v in good)
    letters = {r.json()["id"]: r for r in records if r.topic == DEAD_LETTERS}
    assert len([r for r in records if r.topic == DEAD_LETTERS]) == len(huge)
    for name, (_, code) in huge.items():
        letter = letters[name].json()
        assert letter["error"]["code"] == code, letter["error"]
        assert letter["source"]["topic"] == "questions"
    for name in ("lorem", "quotes", "metadata"):
        letter = letters[name].json()
        assert letter["payload_truncated"] is True
        assert letter["payload_size"] == len(bad[list(huge).index(name)])


async def test_deep_values_and_keys_or_headers_near_the_limit_stop_nothing(
    exported_models: dict[str, Path],
) -> None:
    model = exported_models["bert"]
    good = question_values(texts.pairs(seed=11, count=40), prefix="good")
    deep: object = "leaf"
    for _ in range(300):
        deep = {"m": deep}
    valid = {"question": "what?", "context": "c d"}
    bad = {
        "deep": (json.dumps({"id": "deep", **valid, "metadata": deep}).encode(), None, None),
        "big-key": (json.dumps({"id": "big-key", **valid}).encode(), b"k" * 1_000_100, None),
        "big-key-unreadable": (b"not json", b"u" * 1_000_100, None),
        "big-header": (
            json.dumps({"id": "big-header", **valid}).encode(),
            b"h",
            [("blob", b"b" * 999_800), ("small", b"s")],
        ),
    }
    values = [*good[:10], *(value for value, _, _ in bad.values()), *good[10:]]
    keys = [None] * 10 + [key for _, key, _ in bad.values()] + [None] * 30
    headers = [[]] * 10 + [header or [] for _, _, header in bad.values()] + [[]] * 30
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        settings = worker_settings(broker.bootstrap_servers, model)
        worker = QAWorker(settings, load_engine(settings), WorkerMetrics())
        await worker.start()
        try:
            stored = await produce(
                broker.bootstrap_servers, values, keys=keys, headers=headers, topic="questions"
            )
            records = await collect(
                broker.bootstrap_servers, [ANSWERS, DEAD_LETTERS], len(values), timeout=60
            )
            await wait_for_commits(broker.bootstrap_servers, settings.group_id, stored, 30)
            assert worker.readiness()[0], worker.readiness()
        finally:
            await worker.stop()
    answers = {r.json()["id"]: r for r in records if r.topic == ANSWERS}
    assert sorted(answers) == sorted(
        [*(json.loads(v)["id"] for v in good), "big-key", "big-header"]
    )
    cut = answers["big-key"]
    assert cut.json()["key_truncated"] == {"size": 1_000_100, "kept": len(cut.key)}
    assert 0 < len(cut.key) < 1_000_000 and set(cut.key) == {ord("k")}
    dropped = answers["big-header"]
    assert dropped.json()["headers_dropped"]["headers"] == [{"name": "blob", "size": 999_800}]
    assert dict(dropped.headers) == {"small": b"s"} and dropped.key == b"h"
    letters = [r.json() for r in records if r.topic == DEAD_LETTERS]
    assert len(letters) == 2
    by_code = {letter["error"]["code"]: letter for letter in letters}
    assert by_code["invalid_event"]["id"] == "deep"
    assert "64 levels" in by_code["invalid_event"]["error"]["message"]
    assert by_code["invalid_json"]["key_truncated"]["size"] == 1_000_100
    assert by_code["invalid_json"]["payload"] == "not json"
