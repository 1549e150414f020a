"""How long a batch takes at the least, from the batches that ran lately."""

from __future__ import annotations

from collections import deque

__all__ = ["RUN_ESTIMATE_BATCHES", "RunEstimate"]

# Batches whose run times the estimate keeps: enough to have run on every stream lately.
RUN_ESTIMATE_BATCHES = 32


class RunEstimate:
    """The least a batch of some padded size can take, from the batches that ran lately.

    Keeps the seconds per padded token of the last `RUN_ESTIMATE_BATCHES` batches and answers
    with the fastest of them: a batch has never run faster per token lately, so a deadline
    before `seconds(padded)` from now cannot be met. Knows nothing until a batch has run.
    """

    def __init__(self) -> None:
        self._rates: deque[float] = deque(maxlen=RUN_ESTIMATE_BATCHES)

    def ran(self, padded_tokens: int, seconds: float) -> None:
        if padded_tokens > 0:
            self._rates.append(seconds / padded_tokens)

    def seconds(self, padded_tokens: int) -> float:
        return min(self._rates) * padded_tokens if self._rates else 0.0
