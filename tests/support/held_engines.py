"""Real engines wrapped so that a test holds or slows their inference: stalls it controls."""

from __future__ import annotations

import threading
import time


class GatedEngine:
    """A real engine whose inference waits until the test opens the gate: a stall it controls."""

    def __init__(self, engine: object) -> None:
        self._engine = engine
        self.gate = threading.Event()
        self.manifest = engine.manifest  # type: ignore[attr-defined]
        self.model_id = engine.model_id  # type: ignore[attr-defined]
        self.streams = engine.streams  # type: ignore[attr-defined]

    def encode(self, question: str, context: str) -> object:
        return self._engine.encode(question, context)  # type: ignore[attr-defined]

    def infer(self, windows: list, stream: int) -> list:
        assert self.gate.wait(120), "the test never opened the gate"
        return self._engine.infer(windows, stream)  # type: ignore[attr-defined]

    def decode(self, encoded: object, logits: list, options: object) -> object:
        return self._engine.decode(encoded, logits, options)  # type: ignore[attr-defined]

    def warm_up(self, limits: object) -> object:
        return self._engine.warm_up(limits)  # type: ignore[attr-defined]


class SlowEngine(GatedEngine):
    """A real engine each of whose batches takes at least `seconds`: the topic backs up behind
    the worker, and a long event keeps its partition's committed offset still while it works."""

    def __init__(self, engine: object, seconds: float) -> None:
        super().__init__(engine)
        self.seconds = seconds
        self.gate.set()

    def infer(self, windows: list, stream: int) -> list:
        time.sleep(self.seconds)  # the slowness under test, not a synchronisation
        return super().infer(windows, stream)
