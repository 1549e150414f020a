"""`qa-worker run`: the streaming worker, with its health server, until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from ..config import Settings
from ..model.loading import load_engine
from ..observability.http import HealthServer
from ..observability.log_rate import quiet_repeats
from ..observability.logs import configure_logging
from ..observability.metrics import WorkerMetrics
from ..stream import QAWorker

log = logging.getLogger(__name__)


async def run_worker(settings: Settings) -> int:
    """Runs until SIGTERM or SIGINT, then drains; non-zero when work was left unfinished."""
    quiet_repeats()
    engine = load_engine(settings)
    metrics = WorkerMetrics()
    stop = asyncio.Event()
    failures: list[BaseException] = []

    def fail(error: BaseException) -> None:
        failures.append(error)
        stop.set()

    worker = QAWorker(settings, engine, metrics, on_fatal=fail)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with HealthServer(metrics, worker.readiness, settings.http_host, settings.http_port):
        # SIGTERM is obeyed while starting too: faust may wait for the broker a long time.
        starting = asyncio.ensure_future(worker.start())
        signalled = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        if not starting.done():
            log.error("stopped while starting; nothing was consumed")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await worker.stop()
            return 1
        starting.result()
        log.info(
            "answering %s -> %s as group %s",
            settings.questions_topic,
            settings.answers_topic,
            settings.group_id,
        )
        await stop.wait()
        log.info("stopping: draining %d in-flight events", worker.tracker.count)
        drained = await worker.stop()
    return 0 if drained and not failures else 1


def command_run(args: argparse.Namespace) -> int:
    settings = Settings.from_sources(args)
    configure_logging(settings.log_format)
    runner = asyncio.Runner()
    code = runner.run(run_worker(settings))
    if code != 0:
        # A drain that ran out of time leaves faust's stop (and its consumer thread) running,
        # and closing the loop would wait for it; what was not committed is redelivered after a
        # restart, so nothing is lost by leaving now.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    runner.close()
    return code
