"""Per-record cost of sending through faust's `Topic.send` and through `ProducerTopic.send`.

    python -m benchmarks.send_path [--records N]

Both run on one faust app whose producer is replaced by a stand-in that acknowledges at once,
so what is timed is the Python between the worker and aiokafka's send, not the broker. The two
alternate in rounds; printed are microseconds per record (best round) and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from typing import Any

from worker.config import Settings
from worker.stream.app import ProducerTopic, build_app

ROUNDS = 7


class AcknowledgingProducer:
    """Takes the place of faust's producer: every send is acknowledged straight away."""

    async def maybe_start(self) -> None:
        return None

    async def send(self, topic: str, key: Any, value: Any, **options: Any) -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def per_record_us(topic: Any, records: int) -> float:
    headers = [("traceparent", b"00-0123456789abcdef0123456789abcdef-0123456789abcdef-01")]
    began = time.perf_counter()
    for index in range(records):
        pending = await topic.send(key=b"key", value=b'{"id":"%d"}' % index, headers=headers)
        await pending
    return (time.perf_counter() - began) / records * 1e6


async def compare(records: int) -> None:
    with tempfile.TemporaryDirectory() as datadir:
        app = build_app(Settings(), datadir)
        app._producer = AcknowledgingProducer()
        variants = {
            "faust Topic.send": app.topic("answers", key_serializer="raw", value_serializer="raw"),
            "ProducerTopic.send": ProducerTopic(app, "answers"),
        }
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(ROUNDS):
            for name, topic in variants.items():
                best[name] = min(best[name], await per_record_us(topic, records))
    before, after = best.values()
    for name, us in best.items():
        print(f"{name:<20} {us:7.2f} us per record")
    print(f"ratio {after / before:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=5_000)
    asyncio.run(compare(parser.parse_args().records))


if __name__ == "__main__":
    main()
