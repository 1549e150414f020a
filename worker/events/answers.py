"""The records the worker writes for what it answered: answer events and tags events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..qa.types import QAResult
from .contracts import DocumentEvent, QuestionEvent
from .timestamps import timestamp


def answer_event(
    event: QuestionEvent,
    result: QAResult,
    model_name: str,
    model_checksum: str,
    queue_ms: float,
    inference_ms: float,
    total_ms: float,
    worker_version: str,
    now_ms: int,
    read_ms: float | None = None,
    stages_ms: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The answer event for `event` (answer.schema.json); `model_checksum` is the manifest's.

    `read_ms` (from the record's timestamp to the worker reading it) and `stages_ms` (each
    stage's offset from the read, in order) go into `timings` when given.
    """
    # Times from a producer's clock that runs ahead of ours would come out negative.
    timings: dict[str, Any] = {
        "queue_ms": round(max(queue_ms, 0.0), 3),
        "inference_ms": round(max(inference_ms, 0.0), 3),
        "total_ms": round(max(total_ms, 0.0), 3),
    }
    if read_ms is not None:
        timings["read_ms"] = round(max(read_ms, 0.0), 3)
    if stages_ms is not None:
        timings["stages_ms"] = {name: round(max(ms, 0.0), 3) for name, ms in stages_ms.items()}
    answer: dict[str, Any] = {
        "id": event.id,
        **result.to_dict(),
        "model": {"name": model_name, "checksum": model_checksum},
        "timings": timings,
    }
    if event.metadata is not None:
        answer["metadata"] = event.metadata
    answer["worker_version"] = worker_version
    answer["answered_at"] = timestamp(now_ms)
    return answer


def tags_event(
    document: DocumentEvent,
    question_set: str,
    results: dict[str, QAResult],
    model_name: str,
    model_checksum: str,
    worker_version: str,
    now_ms: int,
) -> dict[str, Any]:
    """The tags event (tags.schema.json): one entry per field, `found` false on abstention."""
    tags = {
        name: {
            "answer": result.answer,
            "score": result.score,
            "start": result.start,
            "end": result.end,
            "found": not result.is_impossible,
        }
        for name, result in results.items()
    }
    event: dict[str, Any] = {"id": document.id, "question_set": question_set, "tags": tags}
    if document.metadata is not None:
        event["metadata"] = document.metadata
    event["model"] = {"name": model_name, "checksum": model_checksum}
    event["worker_version"] = worker_version
    event["tagged_at"] = timestamp(now_ms)
    return event
