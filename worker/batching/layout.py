"""The batch size each inference layout runs best with, and the settings' batch limits.

The backend says what it can do (its streams and threads per stream, `backends.onnx.
stream_layout`); how large a batch should be on that layout is a batching rule, kept here.
"""

from __future__ import annotations

import dataclasses

from ..backends.onnx import stream_layout
from ..config import Settings
from .plan import BatchLimits

__all__ = ["MULTI_THREAD_BATCH_SIZE", "batch_limits", "layout_batch_size"]

# Streams of several threads batch up to this many windows: the default before layouts chose it.
MULTI_THREAD_BATCH_SIZE = 16


def layout_batch_size(batch_size: int, threads_per_stream: int) -> int:
    """The batch size for the settings, where 0 means chosen for the layout.

    On one thread a window of typical length already runs its products at the kernel's rate: in
    `qa-worker bench`'s ceiling, two single-threaded streams ran 0.86-0.98 of their best batch's
    events/s at batch 1 (MobileBERT int8, six runs). A batch makes each of its windows wait for
    the last and the windows behind it for all of them, which was most of the tail at every load
    (docs/performance.md, "Tails inside the worker"). Several threads per stream need a batch's
    rows to split between them.
    """
    if batch_size:
        return batch_size
    return 1 if threads_per_stream == 1 else MULTI_THREAD_BATCH_SIZE


def batch_limits(settings: Settings) -> BatchLimits:
    """The settings' batch limits, with the batch size chosen for their layout when it is 0."""
    threads, _ = stream_layout(settings.inference_streams, settings.threads)
    chosen = layout_batch_size(settings.batch_size, threads)
    return dataclasses.replace(settings, batch_size=chosen).subset(BatchLimits)
