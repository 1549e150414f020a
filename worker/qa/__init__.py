"""The extractive QA engine: windows and decoding, with no broker involved."""

from .engine import QAEngine, Question
from .types import QAOptions, QAResult, Span

__all__ = ["QAEngine", "QAOptions", "QAResult", "Question", "Span"]
