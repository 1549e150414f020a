"""The extractive QA engine: windows, decoding and batching, with no broker involved."""

from .engine import QAEngine, Question, plan_batches
from .types import QAOptions, QAResult, Span

__all__ = ["QAEngine", "QAOptions", "QAResult", "Question", "Span", "plan_batches"]
