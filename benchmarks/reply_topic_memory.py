"""What the worker keeps for each distinct reply topic it has answered on, and what a new one costs.

    python -m benchmarks.reply_topic_memory [--topics 1500] [--partitions 4] [--warm-up 100]
        [--every 250] [--known N] [--no-trace]

Starts an embedded broker and the worker's producer, then creates `--warm-up` + `--topics` reply
topics (`replies.t00000`, ...) of `--partitions` partitions each, and sends one answer to each
in turn through the worker's own send path (`build_app`'s faust producer, `Topics`, `Delivery`),
as events naming that many reply topics would. After the warm-up (which keeps one-off costs out
of the figures) and after every `--every` topics it prints, per topic: the growth of the Python
memory traced (`tracemalloc`, after `gc`) and of the resident memory (after `malloc_trim`), the
time to answer, and the longest the event loop was late; then how many topics the producer
tracks and holds metadata for, and how many delivery remembers. `--known` sets delivery's bound
(`REPLY_TOPICS_KNOWN` otherwise); `--no-trace` leaves tracemalloc off, for times and lags it
does not slow. It runs on commits from before the bound too, where nothing bounds the topics.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from worker.config import Settings
from worker.embedded.broker import EmbeddedBroker
from worker.stream.app import Topics, build_app
from worker.stream.delivery import Delivery
from worker.stream.faust_private import aiokafka_producer
from worker.stream.outgoing import Outgoing
from worker.stream.transport import create_topics

ANSWERS, DEAD_LETTERS = "answers", "dead-letters"


@dataclass
class Message:
    """A consumed question, as much of one as delivery reads."""

    key: bytes | None = b"k"
    value: bytes | None = b"{}"
    topic: str = "questions"
    partition: int = 0
    offset: int = 0
    timestamp: float | None = 0.0
    headers: Any = field(default_factory=list)


def resident_bytes(libc: ctypes.CDLL) -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def measured(libc: ctypes.CDLL) -> tuple[int, int, tracemalloc.Snapshot | None]:
    gc.collect()
    libc.malloc_trim(0)
    if not tracemalloc.is_tracing():
        return 0, resident_bytes(libc), None
    return tracemalloc.get_traced_memory()[0], resident_bytes(libc), tracemalloc.take_snapshot()


async def loop_lag(worst: list[float]) -> None:
    """Keeps in `worst[0]` the longest the event loop was late waking this task."""
    while True:
        asked = time.perf_counter()
        await asyncio.sleep(0.01)
        worst[0] = max(worst[0], time.perf_counter() - asked - 0.01)


async def run(
    topics: int, partitions: int, warm_up: int, every: int, known: int | None, trace: bool
) -> None:
    libc = ctypes.CDLL("libc.so.6")
    names = [f"replies.t{index:05d}" for index in range(warm_up + topics)]
    async with EmbeddedBroker() as broker:
        admin = {"bootstrap_servers": broker.bootstrap_servers}
        await create_topics(admin, [ANSWERS, DEAD_LETTERS], 1)
        settings = Settings(
            broker=broker.bootstrap_servers,
            answers_topic=ANSWERS,
            dead_letter_topic=DEAD_LETTERS,
            reply_topics="replies.*",
        )
        with tempfile.TemporaryDirectory() as datadir:
            app = build_app(settings, datadir)
            directory = Topics(app)
            # Before the bound existed Delivery took no such argument.
            bound = {} if known is None else {"reply_topics_known": known}
            delivery = Delivery(
                directory,
                settings_of={ANSWERS: "answers", DEAD_LETTERS: "dead letters"},
                **bound,  # type: ignore[arg-type]
            )
            message = Message()

            async def answer_on(batch: list[str]) -> int:
                refused = 0
                for name in batch:
                    refusal = await delivery.send(Outgoing(name, b'{"id": "q"}', 0.0), message)
                    refused += refusal is not None
                return refused

            # The producer starts knowing every topic there is; reply topics come later.
            await answer_on([ANSWERS])
            client = aiokafka_producer(await app.maybe_start_producer())
            assert isinstance(client, AIOKafkaProducer)
            for start in range(0, len(names), 500):
                await create_topics(admin, names[start : start + 500], partitions)
            if trace:
                tracemalloc.start(1)
            refused = await answer_on(names[:warm_up])
            traced_start, resident_start, snapshot_start = measured(libc)
            print(
                f"{topics} reply topics of {partitions} partitions after {warm_up} to warm up; "
                f"at the start {traced_start / 1e6:.2f} MB traced, {resident_start / 1e6:.1f} MB "
                "resident"
            )
            print(
                "  topics  traced B/topic  resident B/topic  ms/topic  worst loop lag ms  "
                "tracked  with metadata  known"
            )
            worst = [0.0]
            lag = asyncio.create_task(loop_lag(worst))
            traced_last, resident_last = traced_start, resident_start
            done = warm_up
            while done < len(names):
                stage = names[done : done + every]
                worst[0] = 0.0
                started = time.perf_counter()
                refused += await answer_on(stage)
                took = time.perf_counter() - started
                done += len(stage)
                traced, resident, snapshot = measured(libc)
                remembered = len(getattr(delivery, "reply_topics", ()))
                print(
                    f"  {done - warm_up:6}  {(traced - traced_last) / len(stage):14,.0f}  "
                    f"{(resident - resident_last) / len(stage):16,.0f}  "
                    f"{took / len(stage) * 1000:8.1f}  {worst[0] * 1000:17.1f}  "
                    f"{len(client.client._topics):7}  {len(client.client.cluster.topics()):13}  "
                    f"{remembered:5}"
                )
                traced_last, resident_last = traced, resident
            lag.cancel()
            await app.producer.stop()
    print(
        f"  over all {topics}: {(traced - traced_start) / topics:,.0f} B traced and "
        f"{(resident - resident_start) / topics:,.0f} B resident a topic; refused: {refused}"
    )
    if snapshot is None or snapshot_start is None:
        return
    print("  largest growth by line over all:")
    for stat in snapshot.compare_to(snapshot_start, "lineno")[:6]:
        frame = stat.traceback[0]
        print(f"    {stat.size_diff / topics:8,.0f} B a topic  {frame.filename}:{frame.lineno}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--topics", type=int, default=1500)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--warm-up", type=int, default=100)
    parser.add_argument("--every", type=int, default=250, help="report after this many topics")
    parser.add_argument("--known", type=int, help="reply topics delivery remembers, at most")
    parser.add_argument(
        "--no-trace",
        action="store_true",
        help="leave tracemalloc off, which slows allocation and so inflates the times and lags",
    )
    args = parser.parse_args()
    asyncio.run(
        run(args.topics, args.partitions, args.warm_up, args.every, args.known, not args.no_trace)
    )


if __name__ == "__main__":
    main()
