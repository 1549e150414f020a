"""The first events' cost after start-up against the steady state, with and without warm-up.

    python -m benchmarks.warm_up --model /tmp/models/mobilebert \\
        --squad ../shared/data/squad-v2-dev-half.json [--events 5] [--processes 8] \\
        [--streams N --threads N]

Each run is a fresh process: it loads the model as `qa-worker run` would (the default layout
unless `--streams` or `--threads` say otherwise), calls `QAEngine.warm_up` with the batcher's
limits or not, then answers `--events` SQuAD questions one at a time through the worker's
micro-batcher, then the same questions `--replays` times more. An event's steady cost is its
median over the replays, so each first answer is compared with the same question answered warm.
Cold and warm processes alternate, `--processes` of each.

Printed per process and as the median of each kind: the warm-up's duration, then how much the
first event, and the first `--events` events together, took above their steady selves in wall
time, CPU time and minor page faults (memory touched for the first time). CPU time and page
faults are the process's own, which the load of other processes barely changes (page faults not
at all): on a shared machine, compare those.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TypedDict

from worker.batching.batcher import MicroBatcher
from worker.batching.layout import batch_limits
from worker.config import Settings
from worker.model.loading import load_engine
from worker.qa import QAOptions
from worker.squad import read_questions

MODES = ("cold", "warm")
# Wall seconds, CPU seconds, page faults.
Cost = tuple[float, float, float]


class Run(TypedDict):
    warm_up_s: float
    first: list[Cost]
    steady: list[Cost]


def median_cost(costs: list[Cost]) -> Cost:
    wall, cpu, faults = (statistics.median(cost[k] for cost in costs) for k in range(3))
    return wall, cpu, faults


def now() -> Cost:
    return (
        time.perf_counter(),
        time.process_time(),
        float(resource.getrusage(resource.RUSAGE_SELF).ru_minflt),
    )


async def measure(args: argparse.Namespace) -> Run:
    settings = Settings(model=args.model, inference_streams=args.streams, threads=args.threads)
    engine = load_engine(settings)
    limits = batch_limits(settings)
    warm_up_s = 0.0
    if args.child == "warm":
        began = time.perf_counter()
        engine.warm_up(limits)
        warm_up_s = time.perf_counter() - began
    questions = random.Random(args.seed).sample(read_questions(args.squad), args.events)
    async with MicroBatcher(engine, limits) as batcher:

        async def one_pass() -> list[Cost]:
            # Nothing else runs in the process meanwhile: its CPU time and faults are the event's.
            costs = []
            for record in questions:
                before = now()
                await batcher.answer(record.question, record.context, QAOptions())
                wall, cpu, faults = (end - start for end, start in zip(now(), before, strict=True))
                costs.append((wall, cpu, faults))
            return costs

        first = await one_pass()
        replays = [await one_pass() for _ in range(args.replays)]
    steady = [median_cost([replay[event] for replay in replays]) for event in range(len(first))]
    return {"warm_up_s": warm_up_s, "first": first, "steady": steady}


def run_process(args: argparse.Namespace, mode: str) -> Run:
    command = [sys.executable, "-m", "benchmarks.warm_up", "--child", mode]
    for name in ("model", "squad", "events", "replays", "seed", "streams", "threads"):
        command += [f"--{name}", str(getattr(args, name))]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    run: Run = json.loads(output.splitlines()[-1])
    return run


def above_steady(run: Run, events: int) -> Cost:
    """What the first `events` events took above their steady selves, summed."""
    pairs = list(zip(run["first"][:events], run["steady"][:events], strict=True))
    wall, cpu, faults = (sum(first[k] - steady[k] for first, steady in pairs) for k in range(3))
    return wall, cpu, faults


def describe(cost: Cost) -> str:
    wall, cpu, faults = cost
    return f"wall {wall * 1000:+6.0f} ms, CPU {cpu * 1000:+5.0f} ms, page faults {faults:+6.0f}"


def line(title: str, warm_up_s: float, first: Cost, all_first: Cost, events: int) -> str:
    return (
        f"{title}: warm-up {warm_up_s:4.2f} s; above steady, first event {describe(first)}; "
        f"first {events} events {describe(all_first)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--squad", type=Path, required=True)
    parser.add_argument("--events", type=int, default=5)
    parser.add_argument("--replays", type=int, default=3)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--streams", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(args))))
        return
    runs: dict[str, list[Run]] = {mode: [] for mode in MODES}
    for _ in range(args.processes):
        for mode in MODES:
            run = run_process(args, mode)
            runs[mode].append(run)
            first, all_first = above_steady(run, 1), above_steady(run, args.events)
            print(line(mode, run["warm_up_s"], first, all_first, args.events), flush=True)
    for mode, done in runs.items():
        first, all_first = (
            median_cost([above_steady(run, events) for run in done]) for events in (1, args.events)
        )
        warm_up_s = statistics.median(run["warm_up_s"] for run in done)
        title = f"median of {len(done)} {mode} processes"
        print(line(title, warm_up_s, first, all_first, args.events))


if __name__ == "__main__":
    main()
