"""`qa-worker bench --tracing-overhead`: events/s with tracing on at 100% sampling against off.

A second `qa-worker run` process, on topics and a group of its own, runs with `--tracing otlp`,
the `always_on` sampler, and an OTLP/HTTP receiver in the bench process on loopback that takes
every export (so span building, serialization and the HTTP posts are all paid). Pairs of rounds
of the same events alternate between the untraced worker and the traced one, each going first
in every other pair, so drift in what else the machine is doing falls on both alike; the ratio
is the median of the per-pair ratios.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
from collections.abc import Sequence

from aiohttp import web
from aiokafka import AIOKafkaProducer

from ..config import Settings
from ..embedded.process import free_port
from ..squad import QuestionRecord
from .load import LoadGenerator, phase_events, start_load
from .report import Report, note
from .topics import WARMUP_EVENTS, bench_worker_settings, create_bench_topics

__all__ = ["TRACING_ROUNDS", "OtlpSink", "measure_tracing_overhead"]

# Pairs of rounds: more than end_to_end's three, as the difference sought is a few percent.
TRACING_ROUNDS = 5


class OtlpSink:
    """An OTLP/HTTP traces endpoint on loopback that accepts and counts every export."""

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        self.endpoint = ""

    async def _export(self, request: web.Request) -> web.Response:
        self.bytes += len(await request.read())
        self.requests += 1
        # An empty ExportTraceServiceResponse is zero bytes of protobuf.
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def __aenter__(self) -> OtlpSink:
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._runner.cleanup()


async def measure_tracing_overhead(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    records: Sequence[QuestionRecord],
    untraced: LoadGenerator,
    producer: AIOKafkaProducer,
    broker_pid: int | None,
) -> Report:
    """Alternating rounds on `untraced` and on a traced worker; their events/s and ratio."""
    sink = await stack.enter_async_context(OtlpSink())
    traced_settings = dataclasses.replace(bench_worker_settings(settings), tracing="otlp")
    await create_bench_topics(traced_settings)
    environ = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    environ |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_SERVICE_NAME": "qa-bench",
    }
    note("tracing overhead: starting a traced worker (always_on, OTLP/HTTP to loopback)")
    traced = await start_load(stack, traced_settings, producer, broker_pid, environ)
    await traced.run(phase_events("traced-warmup", records, min(WARMUP_EVENTS, len(records))))
    rounds = []
    for round_ in range(1, TRACING_ROUNDS + 1):
        # Which goes first alternates too, so a machine getting busier or quieter does not
        # always favour the same side.
        order = ("untraced", "traced") if round_ % 2 else ("traced", "untraced")
        note(f"tracing overhead: {len(records)} events {order[0]}, then {order[1]} ({round_})")
        phases = {}
        for side in order:
            load = untraced if side == "untraced" else traced
            events = phase_events(f"{side}-{round_}", records, len(records))
            phases[side] = (await load.run(events))["events_per_s"]
        rounds.append({"off_events_per_s": phases["untraced"], "on_events_per_s": phases["traced"]})
    return {
        "rounds": rounds,
        "off_events_per_s": statistics.median(r["off_events_per_s"] for r in rounds),
        "on_events_per_s": statistics.median(r["on_events_per_s"] for r in rounds),
        "ratio": statistics.median(r["on_events_per_s"] / r["off_events_per_s"] for r in rounds),
        "otlp_requests": sink.requests,
        "otlp_bytes": sink.bytes,
    }
