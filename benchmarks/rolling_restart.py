"""Counts the rebalances of a rolling restart, without and with static membership.

    python -m benchmarks.rolling_restart [--workers 3] [--partitions 6] [--session-timeout-s 30]
        [--restart-delay-s 0] [--modes dynamic,static] [--model FOLDER] [--logs DIR]

Starts WORKERS `qa-worker run` processes (`python -m worker run`, settings in QA_ variables) in
one consumer group on the embedded broker (tansu), worker 0 first and the others once it holds
the partitions, and waits until they have split the questions topic. Then it restarts them one
at a time as a StatefulSet rollout does: the highest ordinal first, SIGTERM, wait for the exit
and RESTART_DELAY_S more (a pod's deletion and scheduling), start the same worker again, and go
on to the next once the new process holds partitions (a ready pod). `dynamic` runs without
instance ids, `static` gives worker N `--group-instance-id worker-N`. A restarted worker that
holds no partition after READY_TIMEOUT_S ends the rollout there ("never ready"), as a pod that
never turns ready stalls a StatefulSet's. After the last restart it waits out 1.25 session
timeouts, so a rebalance the broker would start when a stopped process's session runs out is
counted too, and then reads who holds which partition.

Counted from the workers' logs (aiokafka's "Joined group ... (generation N)", "Elected group
leader", "Revoking previously assigned partitions" and "Setting newly assigned partitions"
lines), from the first SIGTERM on:

- rebalances: the generations the group went through (a static member that rejoins in place
  keeps the generation);
- revocations and assignments of a non-empty set of partitions in the workers that were not
  the one being restarted: each is a stop of their consumption;
- which restarted workers got back exactly the partitions they had ("L" marks the one that had
  computed the group's assignment, the leader);
- at the end: partitions held by no worker or by two, which no rebalance is left to mend.

Without --model, a small random-weight BERT is built and exported first (the `export` extra);
its answers mean nothing, and nothing here needs them. No questions flow during the restarts:
tests/stream/test_static_membership.py checks that none are lost. --logs keeps the logs in DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from worker.config import Settings, settings_environment
from worker.embedded.broker import FETCH_WAIT_MS, EmbeddedBroker

QUESTIONS, ANSWERS, DEAD_LETTERS = "rr-questions", "rr-answers", "rr-dead-letters"
# The worker's text log lines begin with logging's asctime, local time to the millisecond.
_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (\S+) (.*)$")
_PARTITIONS = re.compile(
    r"^(Revoking previously assigned partitions|Setting newly assigned partitions) (.*) for group"
)
_GENERATION = re.compile(r"^Joined group '.*' \(generation (-?\d+)\)")
_LEADER = re.compile(r"^Elected group leader")
_QUESTIONS_PARTITION = re.compile(rf"topic='{QUESTIONS}', partition=(\d+)")
WAIT_TIMEOUT_S = 600.0
# A restarted worker without partitions after this long stalls the rollout, as a pod that never
# turns ready stalls a StatefulSet's.
READY_TIMEOUT_S = 300.0


@dataclasses.dataclass(frozen=True)
class GroupEvent:
    at: datetime
    kind: str  # "revoked", "assigned", "joined" (partitions empty) or "led"
    partitions: frozenset[int] = frozenset()
    generation: int = 0


@dataclasses.dataclass
class Incarnation:
    """One `qa-worker run` process of worker `ordinal`, and the log it writes."""

    ordinal: int
    log: Path
    process: subprocess.Popen[bytes]

    def events(self) -> list[GroupEvent]:
        """What its log says of the group so far."""
        found: list[GroupEvent] = []
        for line in self.log.read_text(errors="replace").splitlines():
            match = _LINE.match(line)
            if match is None or not match.group(2).startswith("aiokafka.consumer"):
                continue
            at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            message = match.group(3)
            if partitions := _PARTITIONS.match(message):
                kind = "revoked" if partitions.group(1).startswith("Revoking") else "assigned"
                numbers = frozenset(int(n) for n in _QUESTIONS_PARTITION.findall(message))
                found.append(GroupEvent(at, kind, numbers))
            elif generation := _GENERATION.match(message):
                found.append(GroupEvent(at, "joined", generation=int(generation.group(1))))
            elif _LEADER.match(message):
                found.append(GroupEvent(at, "led"))
        return found

    def holding(self) -> frozenset[int] | None:
        """The partitions of its last assignment; None before one or after a revocation."""
        moves = [event for event in self.events() if event.kind in {"revoked", "assigned"}]
        if moves and moves[-1].kind == "assigned":
            return moves[-1].partitions
        return None

    def check_running(self) -> None:
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker {self.ordinal} exited:\n{tail}")


@dataclasses.dataclass
class Outcome:
    mode: str
    rebalances: int
    others_revoked: int
    others_assigned: int
    # Per restart, in order: (ordinal, was the leader, got its own partitions back, or None
    # when it got none in time: a pod that never turns ready, where a rollout stalls).
    restarts: list[tuple[int, bool, bool | None]]
    unread: list[int]
    read_twice: list[int]
    ready_after_s: list[float]
    rollout_s: float


def start(ordinal: int, settings: Settings, logs: Path, incarnation: int) -> Incarnation:
    log = logs / f"worker-{ordinal}.{incarnation}.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=settings_environment(settings),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return Incarnation(ordinal, log, process)


def split(running: list[Incarnation], partitions: int) -> dict[int, frozenset[int]] | None:
    """Every running worker's partitions, when each holds some and together every one once."""
    held = {worker.ordinal: worker.holding() for worker in running}
    sets = [owned for owned in held.values() if owned is not None]
    covered = frozenset().union(*sets)
    if len(sets) == len(running) and sum(map(len, sets)) == partitions == len(covered):
        return {ordinal: owned for ordinal, owned in held.items() if owned is not None}
    return None


async def until_split(running: list[Incarnation], partitions: int) -> dict[int, frozenset[int]]:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while time.monotonic() < deadline:
        for worker in running:
            worker.check_running()
        if (found := split(running, partitions)) is not None:
            return found
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the group did not split the partitions within {WAIT_TIMEOUT_S:.0f} s")


async def until_holding(worker: Incarnation, timeout: float) -> frozenset[int] | None:
    """The worker's partitions once it holds some; None when it got none within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.check_running()
        if held := worker.holding():
            return held
        await asyncio.sleep(0.2)
    return None


def stop(worker: Incarnation) -> None:
    """SIGTERM, and the exit: 0 once running, 143 (128 + SIGTERM) during start-up."""
    worker.process.send_signal(signal.SIGTERM)
    worker.process.wait(timeout=120)


def leader(every: list[Incarnation]) -> int:
    """The ordinal of the worker that computed the group's latest assignment."""
    led = [(e.at, worker.ordinal) for worker in every for e in worker.events() if e.kind == "led"]
    return max(led)[1]


async def rolling_restart(mode: str, args: argparse.Namespace, model: Path, logs: Path) -> Outcome:
    logs = logs / mode
    logs.mkdir(parents=True, exist_ok=True)
    async with EmbeddedBroker() as broker:
        for topic in (QUESTIONS, ANSWERS, DEAD_LETTERS):
            await broker.create_topic(topic, args.partitions)

        def settings_of(ordinal: int) -> Settings:
            return Settings(
                model=model,
                broker=broker.bootstrap_servers,
                questions_topic=QUESTIONS,
                answers_topic=ANSWERS,
                dead_letter_topic=DEAD_LETTERS,
                group_id=f"rolling-{mode}",
                group_instance_id=f"worker-{ordinal}" if mode == "static" else None,
                session_timeout_s=args.session_timeout_s,
                fetch_max_wait_ms=FETCH_WAIT_MS,
                http_host="127.0.0.1",
                http_port=0,
                inference_streams=1,
                threads=1,
            )

        # One worker first, then the others: the group is past its first generation when the
        # rollout begins. tansu numbers the first one 0, and aiokafka sends no LeaveGroup from
        # generation 0, which would make the first restart unlike the others.
        running = [start(0, settings_of(0), logs, 0)]
        every: list[Incarnation] = list(running)
        try:
            await until_split(running, args.partitions)
            running += [start(n, settings_of(n), logs, 0) for n in range(1, args.workers)]
            every = list(running)
            before = await until_split(running, args.partitions)
            began, began_monotonic = datetime.now(), time.monotonic()
            ready_after: list[float] = []
            restarts: list[tuple[int, bool, bool | None]] = []
            # Which worker was being restarted, and from when to when (others' events count).
            restarting: list[tuple[int, datetime, datetime]] = []
            for ordinal in reversed(range(args.workers)):
                old = next(worker for worker in running if worker.ordinal == ordinal)
                was_leader = leader(every) == ordinal
                stopped_at, stopped_wall = time.monotonic(), datetime.now()
                stop(old)
                running.remove(old)
                await asyncio.sleep(args.restart_delay_s)
                new = start(ordinal, settings_of(ordinal), logs, 1)
                running.append(new)
                every.append(new)
                held = await until_holding(new, READY_TIMEOUT_S)
                restarting.append((ordinal, stopped_wall, datetime.now()))
                if held is None:
                    restarts.append((ordinal, was_leader, None))
                    break
                ready_after.append(time.monotonic() - stopped_at)
                restarts.append((ordinal, was_leader, held == before[ordinal]))
            # A broker that let a stopped process's session run out rebalances once it expires,
            # which the others learn at their next heartbeat: wait that long.
            await asyncio.sleep(args.session_timeout_s * 1.25 + 2.0)
            for worker in running:
                worker.check_running()
            holders = collections.Counter(
                partition for worker in running for partition in worker.holding() or ()
            )
            rollout_s = time.monotonic() - began_monotonic
        finally:
            for worker in running:
                if worker.process.poll() is None:
                    stop(worker)

    events = [(worker, event) for worker in every for event in worker.events()]
    generations_before = [e.generation for _, e in events if e.kind == "joined" and e.at < began]
    generations_after = [e.generation for _, e in events if e.kind == "joined" and e.at >= began]
    others = collections.Counter(
        event.kind
        for worker, event in events
        if event.at >= began
        and event.partitions
        and not any(
            worker.ordinal == ordinal and start_at <= event.at <= end_at
            for ordinal, start_at, end_at in restarting
        )
    )
    return Outcome(
        mode=mode,
        rebalances=max(generations_after, default=0) - max(generations_before, default=0),
        others_revoked=others["revoked"],
        others_assigned=others["assigned"],
        restarts=restarts,
        unread=[p for p in range(args.partitions) if holders[p] == 0],
        read_twice=[p for p in range(args.partitions) if holders[p] > 1],
        ready_after_s=ready_after,
        rollout_s=rollout_s,
    )


def build_model(folder: Path) -> Path:
    from parity.models import build_checkpoint
    from worker.model.export import export_model

    checkpoint = build_checkpoint("bert", folder / "checkpoint")
    export_model(str(checkpoint), folder / "model")
    return folder / "model"


def report(args: argparse.Namespace, outcomes: list[Outcome]) -> None:
    print(
        f"{args.workers} workers, {args.partitions} partitions, session timeout "
        f"{args.session_timeout_s:g} s, {args.restart_delay_s:g} s between a worker's exit and "
        "its new start; tansu 0.6.0 (embedded broker); restarted one at a time, highest first"
    )
    header = (
        "mode      rebalances  revoked in others  assigned in others  own partitions back"
        "  at the end                 ready after restart (s)  rollout (s)"
    )
    print(header)
    for o in outcomes:
        back = " ".join(
            f"{ordinal}{'L' if was_leader else ''}:"
            + {True: "yes", False: "no", None: "never ready"}[own]
            for ordinal, was_leader, own in o.restarts
        )
        end = "every partition once"
        if o.unread or o.read_twice:
            end = f"unread {o.unread}, twice {o.read_twice}"
        ready = ", ".join(f"{s:.1f}" for s in o.ready_after_s)
        print(
            f"{o.mode:<8}  {o.rebalances:>10}  {o.others_revoked:>17}  {o.others_assigned:>18}"
            f"  {back:<19}  {end:<25}  {ready:>23}  {o.rollout_s:>11.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--session-timeout-s", type=float, default=30.0)
    parser.add_argument(
        "--restart-delay-s",
        type=float,
        default=0.0,
        help="pause between a worker's exit and its new start (a pod's deletion and scheduling)",
    )
    parser.add_argument("--modes", default="dynamic,static")
    parser.add_argument("--model", type=Path, help="a prepared model folder; default: a tiny one")
    parser.add_argument("--logs", type=Path, help="keep the workers' logs in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rolling-restart-") as scratch:
        model = args.model or build_model(Path(scratch))
        logs = args.logs or Path(scratch) / "logs"
        outcomes = [
            asyncio.run(rolling_restart(mode.strip(), args, model, logs))
            for mode in args.modes.split(",")
        ]
    report(args, outcomes)


if __name__ == "__main__":
    main()
