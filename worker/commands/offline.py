"""What the offline commands share: a question file answered in chunks, the throughput line, and
the output stream."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from ..batching.layout import batch_limits
from ..config import Settings
from ..errors import EventError
from ..observability.progress import progress_bar, progress_wanted
from ..qa import QAEngine, QAOptions, QAResult, Question
from ..squad import QuestionRecord

# Questions are answered in chunks so output streams and memory stays flat on large files.
CHUNK_QUESTIONS = 512


def answer_records(
    engine: QAEngine, records: Sequence[QuestionRecord], settings: Settings, options: QAOptions
) -> Iterator[tuple[QuestionRecord, QAResult | EventError]]:
    enabled = progress_wanted(settings.progress)
    with progress_bar("answering", len(records), enabled, unit="questions") as bar:
        for offset in range(0, len(records), CHUNK_QUESTIONS):
            chunk = records[offset : offset + CHUNK_QUESTIONS]
            results = engine.answer_many(
                [Question(record.question, record.context, options) for record in chunk],
                batch_limits(settings),
            )
            yield from zip(chunk, results, strict=True)
            bar.update(len(chunk))


def report_throughput(engine: QAEngine, questions: int, seconds: float) -> None:
    stats = engine.stats
    print(
        f"answered {questions} questions ({stats.windows} windows, {stats.batches} batches) "
        f"in {seconds:.2f} s: {questions / seconds:.1f} questions/s, "
        f"{stats.windows / seconds:.1f} windows/s overall, "
        f"{stats.windows / max(stats.seconds, 1e-9):.1f} windows/s in inference, "
        f"padding ratio {stats.padding_ratio:.3f}",
        file=sys.stderr,
    )


class open_output:
    """stdout when no path is given, else a file opened for writing."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._stream: TextIO | None = None

    def __enter__(self) -> TextIO:
        if self._path is None:
            return sys.stdout
        self._stream = self._path.open("w", encoding="utf-8")
        return self._stream

    def __exit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            self._stream.close()
