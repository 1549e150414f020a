"""Several streams sharing one list of batches: each stream's thread takes the next one left.

The worker's batcher hands batches to its streams as they come; offline answering
(`QAEngine.answer_many`) and the bench's ceiling have the whole list up front, and run it with
this loop on every stream, so a fast stream is never idle while a batch waits.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

__all__ = ["each_stream_takes_next"]


def each_stream_takes_next(count: int, run: Callable[[int, int], None]) -> Callable[[int], None]:
    """The loop one stream's thread runs: `run(index, stream)` for the next of `count` indexes
    that no stream has taken yet, until none is left. Call it on one thread per stream."""
    taken = itertools.count()
    lock = threading.Lock()

    def stream_loop(stream: int) -> None:
        while True:
            with lock:
                index = next(taken)
            if index >= count:
                return
            run(index, stream)

    return stream_loop
