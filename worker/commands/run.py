"""`qa-worker run`: the streaming worker, with its health server, until SIGTERM or SIGINT.

A stop signal before the worker consumes anything (importing the runtime, loading the model,
connecting) ends it with one line naming the phase and exit code 128 + the signal's number; once
it consumes, SIGTERM drains (exit 0, or 1 when the drain timeout ran out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys

from .. import __version__
from ..config import Settings
from ..interrupts import entering, ignore_stop_signals, stop_line
from ..observability.logs import configure_logging

log = logging.getLogger(__name__)


async def run_worker(settings: Settings) -> int:
    """Runs until SIGTERM or SIGINT, then drains; non-zero when work was left unfinished."""
    # Imported here rather than at the top: the line saying so is written first, and a stop
    # signal during these imports (seconds on a small machine) is reported as one.
    from ..model.loading import load_engine
    from ..observability.http import HealthServer
    from ..observability.log_rate import quiet_repeats
    from ..observability.metrics import WorkerMetrics
    from ..stream import QAWorker

    quiet_repeats()
    entering(f"loading the model {settings.model}")
    engine = load_engine(settings)
    metrics = WorkerMetrics()
    stop = asyncio.Event()
    failures: list[BaseException] = []
    signalled_by: list[int] = []

    def fail(error: BaseException) -> None:
        failures.append(error)
        stop.set()

    def stop_on(signum: int) -> None:
        signalled_by.append(signum)
        stop.set()

    entering(f"warming up the model, then connecting to {settings.broker}")
    worker = QAWorker(settings, engine, metrics, on_fatal=fail)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_on, signum)
    async with HealthServer.from_settings(metrics, worker.readiness, settings):
        # SIGTERM is obeyed while starting too: faust may wait for the broker a long time.
        starting = asyncio.ensure_future(worker.start())
        signalled = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        if not starting.done():
            stopped_by = signalled_by[0] if signalled_by else int(signal.SIGTERM)
            log.error("%s", stop_line(stopped_by, "starting"))
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await worker.stop()
            return 128 + stopped_by
        starting.result()
        freeze_long_lived_objects()
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


def freeze_long_lived_objects() -> None:
    """Moves every object alive now out of the collector's generations, for good.

    Started, the worker holds some 10^5 long-lived objects (the tokenizer, the model's session,
    faust, aiokafka, the imported modules); every full collection traversed them all again, a
    pause of tens of ms under load, for objects that live as long as the process.
    Collected first so that no garbage of the start-up is frozen with them; done by the process
    and not by `QAWorker`, as the collector's state is the process's, not one worker's.
    """
    gc.collect()
    gc.freeze()


def command_run(args: argparse.Namespace) -> int:
    settings = Settings.from_sources(args)
    configure_logging(settings.log_format)
    entering(f"starting qa-worker {__version__}: importing the runtime")
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
    # Closing the loop gave the signals back to their defaults; the process is only exiting.
    ignore_stop_signals()
    return code
