"""Public value types of the QA engine: per-question options, and answers."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import check_least_values


@dataclass(frozen=True)
class QAOptions:
    """How one question is answered; the defaults are the reference pipeline's.

    `null_threshold` goes beyond the reference: when set, the null score is always computed and
    the best span is returned only if its score exceeds the null score by more than the threshold.
    """

    top_k: int = 1
    max_answer_len: int = 15
    handle_impossible_answer: bool = False
    null_threshold: float | None = None
    align_to_words: bool = True

    def __post_init__(self) -> None:
        # A question set's fields build options without Settings; the rules are the settings'.
        check_least_values(self)

    @property
    def ranks_null(self) -> bool:
        return self.handle_impossible_answer or self.null_threshold is not None


@dataclass(frozen=True)
class Span:
    """One candidate answer: `context[start:end] == answer`; the null answer is empty at 0..0."""

    answer: str
    score: float
    start: int
    end: int

    def to_dict(self) -> dict[str, object]:
        return {"answer": self.answer, "score": self.score, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class QAResult:
    """The answer to one question.

    `answers` is the reference pipeline's top-k list (with the null answer when it ranks); the top
    fields repeat its first item, except that `null_threshold` may turn it into an abstention.
    `best_span` is the best non-null answer, whether or not it was given (for threshold tuning).
    """

    answer: str
    score: float
    start: int
    end: int
    is_impossible: bool
    null_score: float
    answers: list[Span] = field(default_factory=list)
    best_span: Span | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "answer": self.answer,
            "score": self.score,
            "start": self.start,
            "end": self.end,
            "is_impossible": self.is_impossible,
            "null_score": self.null_score,
            "answers": [span.to_dict() for span in self.answers],
        }
