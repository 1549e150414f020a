"""A deterministic engine without a model, whose batches a test holds and releases, and the
bounded waits of the tests that drive a MicroBatcher with it."""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import numpy as np

from tests.support.windows import token_window
from worker.batching.batcher import Answered, MicroBatcher
from worker.errors import ErrorCode, EventError
from worker.qa import QAOptions, QAResult
from worker.qa.decode import WindowLogits
from worker.qa.windows import EncodedQuestion, Window

T = TypeVar("T")

# Bounds every wait in these tests; nothing here should come close to it.
TIMEOUT = 30.0
OPTIONS = QAOptions(max_answer_len=7)


async def bounded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Waits for a state of the batcher that no event announces (windows reaching the queue)."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.001)

    await bounded(poll())


class Gate:
    """Reports each batch `infer` starts to the event loop and, while held, keeps it in `infer`."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._entered: asyncio.Queue[object] = asyncio.Queue()
        # Several streams may be held in `infer` at once; `open` must let all of them go.
        self._changed = threading.Condition()
        self._held = False
        self._permits = 0

    def enter(self, batch: object) -> None:
        """Called in an inference thread."""
        self._loop.call_soon_threadsafe(self._entered.put_nowait, batch)
        with self._changed:
            if not self._changed.wait_for(lambda: not self._held or self._permits, TIMEOUT):
                raise TimeoutError("the test never let this batch through")
            if self._held:
                self._permits -= 1

    async def next_batch(self) -> object:
        return await bounded(self._entered.get())

    def hold(self) -> None:
        with self._changed:
            self._held = True

    def step(self) -> None:
        """Lets one held batch finish."""
        with self._changed:
            self._permits += 1
            self._changed.notify()

    def open(self) -> None:
        """Lets the held batches and all later ones run."""
        with self._changed:
            self._held = False
            self._changed.notify_all()


class FakeEngine:
    """A deterministic engine without a model.

    `encode(question, context)` reads the context as window lengths ("5 12 3" gives three windows)
    and labels window i "question#i"; token ids are derived from the label. Logits are sin and
    cos of the token ids, so each window's logits are its own whatever batch it runs in. A batch
    holding a window of a question that starts with "boom" fails.
    """

    def __init__(self, streams: int = 1) -> None:
        self.gate = Gate()
        self.streams = streams
        self.batches: list[list[Window]] = []
        self.streams_used: list[int] = []
        self._labels: dict[int, str] = {}

    def encode(self, question: str, context: str) -> EncodedQuestion:
        if not context:
            raise EventError(ErrorCode.EMPTY_CONTEXT, "context cannot be empty")
        windows = []
        for index, length in enumerate(int(part) for part in context.split()):
            name = f"{question}#{index}"
            ids = (np.arange(length, dtype=np.int64) + zlib.crc32(name.encode())) % 30_000
            window = token_window(ids)
            self._labels[id(window)] = name
            windows.append(window)
        return EncodedQuestion(question, context, windows, context_sequence=1)

    def infer(self, windows: Sequence[Window], stream: int = 0) -> list[WindowLogits]:
        self.batches.append(list(windows))
        self.streams_used.append(stream)
        self.gate.enter([self.label(window) for window in windows])
        if any(self.label(window).startswith("boom") for window in windows):
            raise RuntimeError("inference failed")
        return [
            WindowLogits(
                np.sin(window.input_ids).astype(np.float32),
                np.cos(window.input_ids).astype(np.float32),
            )
            for window in windows
        ]

    def decode(
        self, encoded: EncodedQuestion, logits: Sequence[WindowLogits], options: QAOptions
    ) -> QAResult:
        assert [len(item.start) for item in logits] == [len(w) for w in encoded.windows]
        # Weighted by position, so that logits handed back in the wrong order change the answer.
        score = sum((i + 1) * float(item.start.sum()) for i, item in enumerate(logits))
        best = int(np.argmax(np.concatenate([item.end for item in logits])))
        return QAResult(
            answer=encoded.question,
            score=score,
            start=best,
            end=best + options.max_answer_len,
            is_impossible=False,
            null_score=float(sum(float(item.end.sum()) for item in logits)),
        )

    def label(self, window: Window) -> str:
        return self._labels[id(window)]

    def labels(self) -> list[list[str]]:
        return [[self.label(window) for window in batch] for batch in self.batches]


def ask(
    batcher: MicroBatcher, question: str, *lengths: int, **kwargs: float
) -> asyncio.Task[Answered]:
    context = " ".join(str(length) for length in lengths)
    return asyncio.create_task(batcher.answer(question, context, OPTIONS, **kwargs))
