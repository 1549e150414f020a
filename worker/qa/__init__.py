"""The extractive QA engine: windows, decoding and batching, with no broker involved."""

from .batching import BatchLimits, plan_batches
from .engine import QAEngine, Question
from .types import QAOptions, QAResult, Span

__all__ = ["BatchLimits", "QAEngine", "QAOptions", "QAResult", "Question", "Span", "plan_batches"]
