"""The extractive QA engine: windows, decoding and batching, with no broker involved."""

from .engine import QAEngine, Question, plan_batches
from .types import InputError, QAOptions, QAResult, Span

__all__ = ["InputError", "QAEngine", "QAOptions", "QAResult", "Question", "Span", "plan_batches"]
