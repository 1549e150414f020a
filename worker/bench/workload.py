"""The questions a bench run measures on, and the windows the engine makes of them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import BenchError, EventError
from ..qa import QAEngine, QAOptions, Question
from ..qa.windows import EncodedQuestion, Window
from ..squad import QuestionRecord


@dataclass(frozen=True)
class Workload:
    """The events, and the windows of those the engine can take."""

    questions: list[Question]
    encoded: list[EncodedQuestion | EventError]
    windows: list[Window]

    @classmethod
    def encode(
        cls, engine: QAEngine, records: Sequence[QuestionRecord], options: QAOptions
    ) -> Workload:
        questions = [Question(record.question, record.context, options) for record in records]
        encoded = engine.tokenizer.encode_many([(q.question, q.context) for q in questions])
        windows = [w for item in encoded if isinstance(item, EncodedQuestion) for w in item.windows]
        if not windows:
            raise BenchError(f"the engine refused all {len(records)} questions; check the file")
        return cls(questions, encoded, windows)

    @property
    def events(self) -> int:
        return len(self.questions)

    @property
    def refused(self) -> int:
        return sum(isinstance(item, EventError) for item in self.encoded)

    @property
    def lengths(self) -> list[int]:
        return [len(window) for window in self.windows]

    @property
    def mean_tokens(self) -> float:
        return statistics.fmean(self.lengths)

    @property
    def typical_window(self) -> Window:
        median = statistics.median_low(self.lengths)
        return next(window for window in self.windows if len(window) == median)
