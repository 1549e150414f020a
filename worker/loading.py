"""The engine a command's settings name: the model folder, precision, threads and windowing."""

from __future__ import annotations

from typing import cast

from .config import Settings
from .manifest import Precision
from .qa import QAEngine


def load_engine(settings: Settings) -> QAEngine:
    """Loads `settings.model`; raises ConfigError when none is given, ModelFolderError if bad."""
    return QAEngine.load(
        settings.require_model(),
        # Settings.precision is a str so that flags and variables parse into it; their `choices`
        # admit only the Precision values.
        precision=cast(Precision | None, settings.precision),
        threads=settings.threads,
        max_seq_len=settings.max_seq_len,
        doc_stride=settings.doc_stride,
    )
