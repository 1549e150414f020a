"""The engine a command's settings name: the model folder, precision, threads and windowing."""

from __future__ import annotations

from ..config import Settings
from ..observability.progress import progress_wanted
from ..qa import QAEngine
from .cache import model_folder


def load_engine(settings: Settings) -> QAEngine:
    """Loads `settings.model`, a folder or a Hub id prepared into the model cache on first use.

    Raises ConfigError when no model is given, ModelFolderError when the folder is unusable.
    """
    folder = model_folder(
        settings.require_model(),
        settings.model_revision,
        settings.model_cache,
        progress_wanted(settings.progress),
    )
    return QAEngine.load(
        folder,
        precision=settings.precision,
        threads=settings.threads,
        streams=settings.inference_streams,
        max_seq_len=settings.max_seq_len,
        doc_stride=settings.doc_stride,
        max_windows=settings.max_windows,
    )
