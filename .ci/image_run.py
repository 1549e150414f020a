"""Runs the worker image as the Helm chart runs it, against the embedded broker, and checks it.

The container gets what the chart's pod gets (chart_pod.py: user, read-only root, no
capabilities, memory filesystems where the chart mounts emptyDirs, the model folder read-only, the
chart's environment), on the host's network so that it reaches the broker this script starts on
loopback. It must turn ready, answer the questions sent to it, be found healthy by the image's
own HEALTHCHECK, really be locked down as asked, and exit 0 on SIGTERM after draining.

    .venv/bin/python .ci/image_run.py IMAGE MODEL_ROOT     (MODEL_ROOT/model: a prepared model)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chart_pod import podman_options

from worker.config import Settings
from worker.embedded.broker import EmbeddedBroker
from worker.embedded.process import free_port

CONTAINER = "qa-image-check-run"
READY_TIMEOUT_S = 180
ANSWER_TIMEOUT_S = 120
QUESTIONS = [
    {"id": f"q{i}", "question": question, "context": context}
    for i, (question, context) in enumerate(
        [
            ("Who wrote the novel?", "It was written by Jane Austen in 1813."),
            (
                "How tall is the tower?",
                "The Eiffel Tower was completed in 1889 and is 330 metres tall.",
            ),
            ("What is the capital?", "The capital of Australia is Canberra, not Sydney."),
            ("When did Apollo 11 land?", "Apollo 11 landed on 20 July 1969."),
        ]
    )
]
# Run inside the container, as the worker's user: each line is one thing the chart asks for.
LOCKDOWN_PROBE = r"""
import os, pathlib
text = pathlib.Path("/proc/self/status").read_text()
status = dict(line.split(":", 1) for line in text.splitlines())
assert os.getuid() == 10001 and os.getgid() == 10001, (os.getuid(), os.getgid())
assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0, status["CapBnd"]
assert status["NoNewPrivs"].strip() == "1"
for place in ("/opt/venv", "/models/model", "/etc"):
    try:
        open(os.path.join(place, "probe"), "w")
    except OSError:
        pass
    else:
        raise AssertionError(place + " is writable")
for place in ("/tmp", os.getcwd()):
    info = os.stat(place)
    try:
        pathlib.Path(place, "probe").write_text("ok")
    except OSError as error:
        raise AssertionError(f"{place} (mode {info.st_mode:o}, uid {info.st_uid}): {error}")
print("locked down: uid 10001, no capabilities or new privileges; writable: /tmp,", os.getcwd())
"""


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise SystemExit(f"podman {' '.join(args)}: rc {result.returncode}\n{result.stderr}")
    return result


def wait_ready(port: int) -> float:
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_S:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as reply:
                if reply.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        state = podman("inspect", CONTAINER, "--format", "{{.State.Status}}").stdout.strip()
        if state != "running":
            raise SystemExit(f"the worker stopped before it was ready ({state})")
        time.sleep(1)
    raise SystemExit(f"/readyz not 200 after {READY_TIMEOUT_S} s")


async def exchange(bootstrap: str, settings: Settings) -> list[dict[str, object]]:
    """Sends QUESTIONS and returns the answer events read back."""
    consumer = AIOKafkaConsumer(
        settings.answers_topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await consumer.start()
    await producer.start()
    try:
        for event in QUESTIONS:
            await producer.send_and_wait(
                settings.questions_topic, json.dumps(event).encode(), key=str(event["id"]).encode()
            )
        answers: list[dict[str, object]] = []
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            async for record in consumer:
                answers.append(json.loads(record.value or b"null"))
                if len(answers) == len(QUESTIONS):
                    return answers
        return answers
    finally:
        await producer.stop()
        await consumer.stop()


async def check(image: str, model_root: str) -> None:
    broker = EmbeddedBroker()
    await broker.start()
    try:
        tuned = broker.worker_settings(Settings())
        for topic in (tuned.questions_topic, tuned.answers_topic, tuned.dead_letter_topic):
            await broker.create_topic(topic, 2)
        port = free_port()
        # The chart's values for a run against this broker: what the embedded broker asks of a
        # worker (its short session and fetch wait), dynamic membership (tansu does not keep a
        # static member's partitions, docs/deploy.md) and the model from a read-only volume.
        values = {
            "config": {
                "broker": tuned.broker,
                "httpPort": port,
                "sessionTimeoutS": tuned.session_timeout_s,
                "fetchMaxWaitMs": tuned.fetch_max_wait_ms,
            },
            "staticMembership": {"enabled": False},
            "model": {"source": "pvc", "pvc": {"existingClaim": "models"}},
        }
        pod = podman_options(values, {"model": model_root})
        podman("rm", "--force", CONTAINER, check=False)
        podman(
            "run",
            "--detach",
            f"--name={CONTAINER}",
            "--network=host",
            *pod.options,
            image,
            *pod.args,
        )
        try:
            print(f"ready after {wait_ready(port):.1f} s")
            print(podman("exec", CONTAINER, "python", "-c", LOCKDOWN_PROBE).stdout.strip())
            answers = await exchange(tuned.broker, tuned)
            for answer in answers:
                print("answer:", json.dumps(answer)[:160])
            assert sorted(a["id"] for a in answers) == sorted(q["id"] for q in QUESTIONS), answers
            health = podman("healthcheck", "run", CONTAINER, check=False)
            assert health.returncode == 0, f"HEALTHCHECK failed: {health.stdout}{health.stderr}"
            print("HEALTHCHECK: healthy")
            # podman stop sends the image's stop signal (SIGTERM) and waits; SIGKILL only after
            # the chart's grace period, which would show as exit code 137.
            podman("stop", f"--time={pod.grace_s}", CONTAINER, timeout=pod.grace_s + 30)
            code = podman("inspect", CONTAINER, "--format", "{{.State.ExitCode}}").stdout.strip()
            print("exit code after SIGTERM:", code)
            assert code == "0", podman("logs", "--tail=20", CONTAINER).stderr
        except BaseException:
            logs = podman("logs", "--tail=40", CONTAINER, check=False)
            print(logs.stdout, logs.stderr, sep="\n", file=sys.stderr)
            raise
        finally:
            podman("rm", "--force", CONTAINER, check=False)
    finally:
        await broker.stop()


if __name__ == "__main__":
    asyncio.run(check(sys.argv[1], sys.argv[2]))
