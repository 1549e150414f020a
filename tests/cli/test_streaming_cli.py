"""The streaming commands as a user runs them: demo, produce and consume; client settings."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import faust
import pytest

from parity import texts
from tests.support.streaming import QUESTIONS, create_topics
from tests.support.worker_process import run_qa_worker
from worker.commands.clients import SAMPLES
from worker.config import Settings
from worker.embedded.broker import EmbeddedBroker
from worker.errors import ConfigError
from worker.stream.transport import aiokafka_options, faust_credentials


@pytest.mark.broker
def test_demo_answers_the_built_in_samples(exported_models: dict[str, Path]) -> None:
    done = run_qa_worker(
        "demo", "--model", str(exported_models["bert"]), "--count", "12", timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == 12
    assert len({answer["id"] for answer in answers}) == 12
    samples = dict(SAMPLES)
    for answer in answers:
        assert {"answer", "score", "start", "end", "is_impossible", "answers"} <= set(answer)
        # Each line names the question it answers first, so the output reads on its own.
        assert next(iter(answer)) == "question"
        assert answer["question"] in samples


@pytest.mark.broker
async def test_produce_then_consume_round_trips_questions(tmp_path: Path) -> None:
    events = [
        {"id": f"e{i}", "question": q, "context": c, "top_k": 2}
        for i, (q, c) in enumerate(texts.pairs(seed=4, count=25))
    ]
    input_file = tmp_path / "questions.jsonl"
    input_file.write_text("\n".join(json.dumps(e, ensure_ascii=False) for e in events) + "\n")
    async with EmbeddedBroker() as broker:
        await create_topics(broker)
        server = broker.bootstrap_servers
        sent = await asyncio.to_thread(
            run_qa_worker,
            "produce",
            "--broker",
            server,
            "--input",
            str(input_file),
            "--topic",
            QUESTIONS,
            timeout=180,
        )
        assert sent.returncode == 0, sent.stderr
        received = await asyncio.to_thread(
            run_qa_worker,
            "consume",
            "--broker",
            server,
            "--topic",
            QUESTIONS,
            "--from-beginning",
            "--count",
            "25",
            "--timeout",
            "20",
            timeout=180,
        )
    assert received.returncode == 0, received.stderr
    got = sorted((json.loads(line) for line in received.stdout.splitlines()), key=lambda e: e["id"])
    assert got == sorted(events, key=lambda e: e["id"])


def test_sasl_over_tls_settings_reach_both_clients(tmp_path: Path) -> None:
    settings = Settings(
        broker="kafka-0:9093,kafka-1:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="qa",
        sasl_password="secret",
    )
    options = aiokafka_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("qa", "secret")
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"


def test_plain_sasl_without_password_says_what_is_missing() -> None:
    settings = Settings(security_protocol="SASL_PLAINTEXT", sasl_username="qa")
    with pytest.raises(ConfigError, match="QA_SASL_PASSWORD"):
        aiokafka_options(settings)


def test_tls_without_sasl_uses_the_given_ca(tmp_path: Path) -> None:
    missing_ca = tmp_path / "ca.pem"
    with pytest.raises(ConfigError, match=r"QA_SSL_CAFILE: .* does not exist"):
        aiokafka_options(Settings(security_protocol="SSL", ssl_cafile=missing_ca))
    credentials = faust_credentials(Settings(security_protocol="SSL"))
    assert isinstance(credentials, faust.SSLCredentials)
    assert aiokafka_options(Settings())["security_protocol"] == "PLAINTEXT"
    assert faust_credentials(Settings()) is None
