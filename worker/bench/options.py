"""The bench's own options, beside the worker's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchOptions:
    """What to measure on, beside the worker's own settings: the `bench` flags."""

    squad: Path
    events: int
    sweep_events: int
    # None: an embedded broker; no reference run; the manifest's source checkpoint.
    broker: str | None
    reference_python: Path | None
    reference_model: str | None
    # Also measure a traced worker against the untraced one (tracing_overhead.py).
    tracing_overhead: bool
    # Also run contexts at the limit beside one-window questions (heavy_mix.py).
    heavy_mix: bool = False
    # How long the worker is watched with nothing to do, for its idle CPU.
    idle_seconds: float = 30.0
