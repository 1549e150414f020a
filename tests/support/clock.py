"""A clock that moves only when the test moves it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FakeClock:
    """Reads `now`, which the test sets or advances."""

    now: float

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
