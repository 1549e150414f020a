"""Where a phase's slow answers spent their time, from the answers' own timings.

An answer's latency, from the instant the load generator planned to send its event to the
instant its answer reached the collector, is split into consecutive parts, all on this machine's
wall clock:

- `send`: the planned instant to the question's Kafka timestamp (a late send, the producer);
- `to_worker`: the question's timestamp to the worker reading it (`timings.read_ms`: the broker,
  the fetch, faust's consumer thread and the agent's buffer);
- one part per gap between the stages of `timings.stages_ms`, named after the stage it ends at
  (`tokenize_started` is the wait for the tokenizer thread, `batch_started` the wait for a
  stream, `inferred` the batch's run, ...), and `to_produce`, the last stage to `total_ms`;
- `back`: the answer's own Kafka timestamp to its arrival (the broker and the collector's fetch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# The slowest share of a phase's answers whose parts the report gives, beside all answers'.
SLOWEST_SHARE = 0.05


@dataclass(frozen=True)
class AnswerTimes:
    """What the collector keeps of one answer: its timings and its own Kafka timestamp."""

    read_ms: float
    total_ms: float
    stages_ms: Mapping[str, float]
    produced_ms: float
    arrived_ms: float

    @classmethod
    def from_answer(
        cls, answer: Mapping[str, Any], produced_ms: float, arrived_ms: float
    ) -> AnswerTimes:
        timings = answer["timings"]
        return cls(
            read_ms=timings.get("read_ms", 0.0),
            total_ms=timings["total_ms"],
            stages_ms=timings.get("stages_ms", {}),
            produced_ms=produced_ms,
            arrived_ms=arrived_ms,
        )

    def parts(self, latency_ms: float) -> dict[str, float]:
        """The latency split into the parts the module describes; they add up to it."""
        back = self.arrived_ms - self.produced_ms
        send = latency_ms - back - self.total_ms - self.read_ms
        parts = {"send": send, "to_worker": self.read_ms}
        previous = 0.0
        for stage, at in self.stages_ms.items():
            parts[stage] = at - previous
            previous = at
        parts["to_produce"] = self.total_ms - previous
        parts["back"] = back
        return parts


def place_latencies(
    latencies_ms: Mapping[str, float], answers: Mapping[str, AnswerTimes]
) -> dict[str, Any]:
    """The mean of each part over the slowest `SLOWEST_SHARE` of the answers, and its median
    over all of them: the parts whose slowest mean stands above their median hold the tail."""
    ids = sorted(latencies_ms, key=latencies_ms.__getitem__)
    slowest = ids[-max(1, round(len(ids) * SLOWEST_SHARE)) :]
    parts = {event_id: answers[event_id].parts(latencies_ms[event_id]) for event_id in ids}
    names = list(parts[ids[-1]])
    return {
        "slowest_events": len(slowest),
        "slowest_latency_ms": float(np.mean([latencies_ms[event_id] for event_id in slowest])),
        "slowest_mean_ms": {
            name: float(np.mean([parts[event_id].get(name, 0.0) for event_id in slowest]))
            for name in names
        },
        "median_ms": {
            name: float(np.median([parts[event_id].get(name, 0.0) for event_id in ids]))
            for name in names
        },
    }
