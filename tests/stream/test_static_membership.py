"""Static group membership (--group-instance-id, KIP-345) against the embedded broker.

Two workers share the questions topic; one is stopped and started again. With instance ids the
other keeps its partitions through the restart (no revocation, no new assignment) and the
restarted one gets its own partitions back; without them the same restart rebalances the group,
which is what the setting is for. Either way every question is answered and committed.

What tansu 0.6.0 does with static members, as these tests find it:

- A restarted follower (a member that did not compute the group's assignment) rejoins under its
  old member id, in the same generation, and is handed its old partitions: Kafka's behaviour.
- A restarted leader is told it leads and given the member list, so it computes a fresh
  assignment; tansu hands it its part and tells the other members nothing. The group is left
  with partitions read by two workers and partitions read by none, and no rebalance to mend it.
  Apache Kafka's coordinator, by its own tests, answers such a leader (JoinGroup below v9, as
  aiokafka sends) as a follower with its old assignment; that case is marked xfail (strict), to
  pass once the broker does so.
- tansu holds a static member's JoinGroup for about half the session timeout and its SyncGroup
  for 3 s (as these tests' logs show), and, by its source, a rejoining static member keeps the
  last contact time of the process it replaces until its own first heartbeat: the restart and
  those holds must fit in one session timeout, or its session runs out and the group rebalances.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from mode.types.signals import SignalHandlerT

from parity import texts
from tests.support.streaming import (
    ANSWERS,
    QUESTIONS,
    TopicWatcher,
    committed_offsets,
    create_topics,
    produce,
    question_values,
    wait_until,
    worker_settings,
)
from worker.config import Settings
from worker.embedded.broker import EmbeddedBroker
from worker.errors import ConfigError
from worker.model.loading import load_engine
from worker.observability.metrics import WorkerMetrics
from worker.stream import QAWorker

PARTITIONS = 4
# Room for the in-process restart and tansu's JoinGroup (about half of it) and SyncGroup (3 s)
# holds before the restarted member's first heartbeat (module docstring), and short enough that
# tansu's first join of the group, which it also answers after about half of it, stays near 10 s.
SESSION_TIMEOUT_S = 20.0


class GroupLog:
    """What the workers' faust apps are told about their partitions, and which of them computed
    the group's assignment (the leader), in the order it happened."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, frozenset[int]]] = []

    def watch(self, name: str, worker: QAWorker) -> None:
        # faust's signals send (app, partitions).
        def revoked(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
            self.entries.append((name, "revoked", _questions(args[0])))

        def assigned(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
            self.entries.append((name, "assigned", _questions(args[0])))

        # mypy cannot match a function to mode's receiver type (a mypy_extensions Callable).
        worker.app.on_partitions_revoked.connect(cast(SignalHandlerT, revoked))
        worker.app.on_partitions_assigned.connect(cast(SignalHandlerT, assigned))
        # aiokafka calls the assignor on the member the broker makes the leader, alone.
        assignor: Any = worker.app.assignor
        assign: Callable[..., Any] = assignor.assign

        def leading(*args: Any, **kwargs: Any) -> Any:
            self.entries.append((name, "led", frozenset()))
            return assign(*args, **kwargs)

        assignor.assign = leading

    def of(self, name: str) -> list[tuple[str, frozenset[int]]]:
        """The partition events of one worker: ("revoked" or "assigned", partitions)."""
        return [(kind, parts) for who, kind, parts in self.entries if who == name and kind != "led"]

    def holding(self, name: str) -> frozenset[int] | None:
        """The partitions of the worker's last assignment, if none was revoked since."""
        events = self.of(name)
        if events and events[-1][0] == "assigned":
            return events[-1][1]
        return None

    def leader(self) -> str:
        return [who for who, kind, _ in self.entries if kind == "led"][-1]


def _questions(partitions: Any) -> frozenset[int]:
    return frozenset(tp.partition for tp in partitions if tp.topic == QUESTIONS)


TANSU_LEADER_REASON = (
    "tansu 0.6.0 tells a restarted static leader to assign the group afresh and keeps the other "
    "members on their old assignment, so partitions end up read twice or not at all; Kafka "
    "answers it as a follower with its old assignment"
)


@pytest.mark.parametrize("instance_id", ["", ".", "..", "pod 0", "pod/0", "p" * 250])
def test_an_instance_id_kafka_would_refuse_stops_the_start(instance_id: str) -> None:
    with pytest.raises(ConfigError, match="--group-instance-id"):
        Settings.from_sources(None, {"QA_GROUP_INSTANCE_ID": instance_id})


def test_a_statefulset_pod_name_is_a_valid_instance_id() -> None:
    for instance_id in ("qa-kafka-qa-worker-0", "worker.eu_1", "p" * 249):
        settings = Settings.from_sources(None, {"QA_GROUP_INSTANCE_ID": instance_id})
        assert settings.group_instance_id == instance_id


@pytest.mark.broker
@pytest.mark.parametrize(
    ("static", "restarted_role"),
    [
        pytest.param(True, "follower", id="instance-ids-follower"),
        pytest.param(
            True,
            "leader",
            id="instance-ids-leader",
            marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=TANSU_LEADER_REASON),
        ),
        pytest.param(False, "follower", id="dynamic"),
    ],
)
async def test_a_restarted_worker_takes_its_partitions_back_without_a_rebalance(
    exported_models: dict[str, Path], static: bool, restarted_role: str
) -> None:
    model = exported_models["bert"]
    values = question_values(texts.pairs(seed=29, count=240))
    half = len(values) // 2
    group = GroupLog()
    async with EmbeddedBroker() as broker:
        await create_topics(broker, PARTITIONS)
        bootstrap = broker.bootstrap_servers
        settings: dict[str, Settings] = {
            name: worker_settings(
                bootstrap,
                model,
                session_timeout_s=SESSION_TIMEOUT_S,
                group_instance_id=name if static else None,
            )
            for name in ("worker-0", "worker-1")
        }
        workers: dict[str, QAWorker] = {}
        try:
            for name, worker_setting in settings.items():
                workers[name] = QAWorker(
                    worker_setting, load_engine(worker_setting), WorkerMetrics()
                )
                group.watch(name, workers[name])
                await workers[name].start()

            def split(names: list[str]) -> bool:
                held = [group.holding(name) for name in names]
                sets = [owned for owned in held if owned is not None]
                return len(sets) == len(names) and sum(map(len, sets)) == PARTITIONS == len(
                    frozenset().union(*sets)
                )

            await wait_until(
                lambda: split(list(workers)), timeout=120, what="the two workers to split the group"
            )
            leader = group.leader()
            (follower,) = set(workers) - {leader}
            restarted = leader if restarted_role == "leader" else follower
            (stays,) = set(workers) - {restarted}
            kept, handed_back = group.holding(stays), group.holding(restarted)
            group.entries.clear()

            async with TopicWatcher(bootstrap, [ANSWERS]) as answers:
                positions = await produce(bootstrap, values[:half])
                # Loaded before the stop, so the restart is the worker's own stop and start.
                engine = load_engine(settings[restarted])
                await workers.pop(restarted).stop()
                stopped_at = time.monotonic()
                workers[restarted] = QAWorker(settings[restarted], engine, WorkerMetrics())
                group.watch(restarted, workers[restarted])
                await workers[restarted].start()
                restart_s = time.monotonic() - stopped_at
                await wait_until(
                    lambda: group.holding(restarted) is not None,
                    timeout=120,
                    what="the restarted worker to get partitions",
                )
                if static:
                    # Checked at once: a group split any other way would never answer some.
                    assert group.holding(restarted) == handed_back
                positions += await produce(bootstrap, values[half:])
                expected = {json.loads(value)["id"] for value in values}
                await wait_until(
                    lambda: set(answers.ids()) >= expected, timeout=180, what="every answer"
                )
            if static:
                # What is asserted is that nothing happens: a broker that let the stopped
                # process's session run out would rebalance once it expired (at most a session
                # timeout after the stop) and the staying worker's next heartbeat (a quarter of
                # one later) learnt of it. So the check waits out that window first.
                window_ends = stopped_at + SESSION_TIMEOUT_S * 1.25 + 2.0
                await asyncio.sleep(max(0.0, window_ends - time.monotonic()))
            owned_at_end = {
                name: {tp.partition for tp in worker.assigned_partitions()}
                for name, worker in workers.items()
            }
            ends = dict.fromkeys(range(PARTITIONS), 0)
            for partition, offset in positions:
                ends[partition] = max(ends[partition], offset + 1)

            async def all_committed() -> bool:
                group_id = settings[stays].group_id
                return await committed_offsets(bootstrap, group_id, PARTITIONS) == ends

            await wait_until(all_committed, timeout=60, what="every offset to be committed")
        finally:
            for worker in workers.values():
                await worker.stop()

    if static:
        # The worker that stayed was told nothing: no revocation, no new assignment.
        assert group.of(stays) == [], (
            f"the restart (stop to start() returning, the join included) took {restart_s:.1f} s; "
            f"tansu 0.6.0 keeps a static member only if its first heartbeat comes within "
            f"{SESSION_TIMEOUT_S:g} s of the stopped process's last one (module docstring)"
        )
        # The restarted one was handed exactly the partitions it had, once.
        assert [event for event in group.of(restarted) if event[1]] == [("assigned", handed_back)]
        assert owned_at_end == {stays: kept, restarted: handed_back}
    else:
        # The same restart without instance ids: the stop (LeaveGroup) and the start each
        # rebalance, so the worker that stayed had its partitions revoked.
        assert ("revoked", kept) in group.of(stays)
        owned = list(owned_at_end.values())
        assert sorted(p for partitions in owned for p in partitions) == list(range(PARTITIONS))
