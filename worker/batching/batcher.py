"""Async micro-batching between the Kafka transport and the QA engine.

The transport awaits `MicroBatcher.answer` once per event; the batcher pools the windows of all
concurrent questions and runs them through the engine in padded batches:

    async with MicroBatcher(engine, BatchLimits(batch_size=16)) as batcher:
        answered = await batcher.answer(question, context, QAOptions(), deadline=deadline)

Threads: inference runs in one thread per inference stream of the engine (`engine.streams`), each
running one batch at a time on its stream; tokenizing and decoding run in one other thread so
they overlap with inference. The event loop only does the bookkeeping below, so it never blocks.
(Tokenizing the questions that queued for that thread in one `encode_many` call halved its CPU
but answered no more events/s in worker_probe A/B runs, so each question is still one call.)

Scheduling: whenever a stream is free and windows are pending, the next batch is formed from
what is pending (by `worker.qa.batching.next_batch`, the planner offline commands use too) and
started at once on that stream; while the streams are busy, new windows accumulate for the
batches after. A batch is seeded by `seed_index`: a window of an event other than the one that
seeded the last batch (events take turns, so one event with hundreds of windows cannot hold
every batch while the events behind it wait), the one with the earliest deadline, or the oldest
when none has one; after a seed that went ahead of the oldest candidate the oldest seeds next,
so the oldest pending window seeds at least every second batch, whatever the deadlines. The
batch is filled with the pending windows closest to the seed in length (earlier deadlines first
among equals), within `batch_size` windows, `max_batch_tokens` padded tokens and `max_padding`.
Length grouping keeps padding low; the padding cap keeps an outlier (a 384-token window among
100-token ones) from making a whole batch compute on padding, which costs more than running it
alone.

Deadlines: a question whose deadline passes while it waits fails at once (`DeadlineExceeded`),
and one whose deadline would pass before even its longest waiting window alone could finish
fails whenever a batch is about to start, before that batch is planned: the run is estimated
from the fastest rate per padded token of the recent batches (`RunEstimate`), a lower bound, so
no question that could still make its deadline is failed for it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from ..lifecycle import AsyncLifecycle
from ..observability.tracing import NO_TRACING
from ..observability.tracing_interface import Tracing
from ..qa.decode import WindowLogits
from ..qa.types import QAOptions, QAResult
from ..qa.windows import EncodedQuestion, Window
from .plan import BatchLimits, next_batch, seed_index

__all__ = [
    "Answered",
    "BatchObserver",
    "DeadlineExceeded",
    "Engine",
    "MicroBatcher",
    "RunEstimate",
    "Stages",
]


class BatchObserver(Protocol):
    """Told about every batch that ran, on the event loop (metrics plug in here)."""

    def on_batch(
        self, windows: int, real_tokens: int, padded_tokens: int, seconds: float
    ) -> None: ...


class Engine(Protocol):
    """What the batcher needs of `QAEngine`.

    `infer` runs one padded batch synchronously on `stream` (0 <= stream < `streams`); it may be
    called from several threads at once for distinct streams.
    """

    @property
    def streams(self) -> int: ...

    def encode(self, question: str, context: str) -> EncodedQuestion: ...

    def infer(self, windows: Sequence[Window], stream: int) -> list[WindowLogits]: ...

    def decode(
        self, encoded: EncodedQuestion, logits: Sequence[WindowLogits], options: QAOptions
    ) -> QAResult: ...


@dataclass(frozen=True)
class Stages:
    """`time.monotonic()` instants of one answer's way through the batcher, each >= the one
    before: the gaps between them say where a slow answer waited.

    `tokenize_started`, `tokenized`, `decode_started` and `decoded` are read on the tokenizer
    thread (the gap before each start is the wait for that thread), `inferred` on the inference
    thread that ran its last batch to finish, the others on the event loop (so `tokenized` to
    `queued` is the hop back to the loop).
    """

    submitted: float
    tokenize_started: float
    tokenized: float
    queued: float
    batch_started: float
    inferred: float
    decode_started: float
    decoded: float


@dataclass(frozen=True)
class Answered:
    """An answer and where its time went.

    `queue_s` runs from the call to `answer` until the batch holding its last window started
    (tokenizing included). `inference_s` is the sum of the run times of the distinct batches its
    windows ran in: engine time spent on its behalf, shared with the other windows of those
    batches. `stages` is None only from stand-ins for the batcher.
    """

    result: QAResult
    queue_s: float
    inference_s: float
    stages: Stages | None = None


class DeadlineExceeded(Exception):
    """Before all of the question's windows started inference, its deadline passed, or would
    have passed before even one of its windows alone could finish."""


# Batches whose run times the estimate keeps: enough to have run on every stream lately.
RUN_ESTIMATE_BATCHES = 32


class RunEstimate:
    """The least a batch of some padded size can take, from the batches that ran lately.

    Keeps the seconds per padded token of the last `RUN_ESTIMATE_BATCHES` batches and answers
    with the fastest of them: a batch has never run faster per token lately, so a deadline
    before `seconds(padded)` from now cannot be met. Knows nothing until a batch has run.
    """

    def __init__(self) -> None:
        self._rates: deque[float] = deque(maxlen=RUN_ESTIMATE_BATCHES)

    def ran(self, padded_tokens: int, seconds: float) -> None:
        if padded_tokens > 0:
            self._rates.append(seconds / padded_tokens)

    def seconds(self, padded_tokens: int) -> float:
        return min(self._rates) * padded_tokens if self._rates else 0.0


@dataclass(eq=False)
class _Request:
    size: int
    submitted: float
    deadline: float | None
    future: asyncio.Future[list[WindowLogits]]
    unstarted: int
    logits: dict[int, WindowLogits] = field(default_factory=dict)
    queue_s: float = 0.0
    inference_s: float = 0.0
    queued: float = 0.0
    inferred: float = 0.0
    expiry: asyncio.TimerHandle | None = None
    trace: object | None = None


@dataclass(eq=False)
class _Pending:
    request: _Request
    index: int
    window: Window
    arrived: float


class MicroBatcher(AsyncLifecycle):
    def __init__(
        self,
        engine: Engine,
        limits: BatchLimits,
        observer: BatchObserver | None = None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        if engine.streams < 1:
            raise ValueError(f"the engine must have 1 or more streams, got {engine.streams}")
        self._engine = engine
        self._limits = limits
        self._observer = observer
        self._tracing = tracing
        # Executors start their threads on first use, so building them here costs nothing. No
        # more batches than streams are ever submitted, so each runs on a thread of its own.
        self._inference = ThreadPoolExecutor(engine.streams, thread_name_prefix="qa-inference")
        self._cpu = ThreadPoolExecutor(1, thread_name_prefix="qa-tokenize")
        self._started = False
        self._accepting = False
        # Oldest first; everything here is touched on the event loop only, so needs no lock.
        self._pending: list[_Pending] = []
        # The event whose window seeded the batch last started, for taking turns, and whether
        # that seed went ahead of an older window (then the oldest seeds next).
        self._last_seed: _Request | None = None
        self._oldest_due = False
        self.run_estimate = RunEstimate()
        # Streams with no batch running, the lowest first so that a short queue reuses one.
        self._free_streams = list(range(engine.streams))
        self._wait_timer: asyncio.TimerHandle | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending_windows(self) -> int:
        """Windows waiting for a batch (not counting those running)."""
        return len(self._pending)

    @property
    def in_flight_requests(self) -> int:
        """Calls to `answer` that have not returned yet."""
        return self._in_flight

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("a MicroBatcher can be started only once")
        self._started = self._accepting = True

    async def stop(self) -> None:
        """Refuses new questions, answers all those already submitted, then ends the threads."""
        self._accepting = False
        # No more windows will come to fill a batch that is waiting for them.
        self._dispatch()
        await self._idle.wait()
        # A batch or decode whose callers were cancelled may still be running; wait for it off
        # the loop.
        await asyncio.to_thread(self._shutdown_threads)

    async def answer(
        self, question: str, context: str, options: QAOptions, deadline: float | None = None
    ) -> Answered:
        """Answers one question; `deadline` is a `time.monotonic()` instant.

        Raises `EventError` when the engine cannot take the input, `DeadlineExceeded` when the
        deadline passes before its windows start inference (those not started never run), and
        whatever `infer` raised for a batch holding one of its windows. Cancelling the caller
        withdraws its pending windows.
        """
        if not self._accepting:
            raise RuntimeError("the batcher is not accepting questions (not started, or stopping)")
        submitted = time.monotonic()
        self._in_flight += 1
        self._idle.clear()
        try:
            loop = asyncio.get_running_loop()
            with self._tracing.stage("tokenize"):
                encoded, tokenize_started, tokenized = await loop.run_in_executor(
                    self._cpu, self._encode, question, context, deadline
                )
            request = self._enqueue(encoded, submitted, deadline)
            enqueued_ns = time.time_ns()
            try:
                logits = await request.future
            except asyncio.CancelledError:
                self._withdraw(request)
                raise
            waited_ns = int((request.queue_s - (time.monotonic() - submitted)) * 1e9)
            self._tracing.interval("queue wait", enqueued_ns, time.time_ns() + waited_ns)
            with self._tracing.stage("decode"):
                result, decode_started, decoded = await loop.run_in_executor(
                    self._cpu, self._decode, encoded, logits, options
                )
            stages = Stages(
                submitted,
                tokenize_started,
                tokenized,
                request.queued,
                submitted + request.queue_s,
                request.inferred,
                decode_started,
                decoded,
            )
            return Answered(result, request.queue_s, request.inference_s, stages)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    def _encode(
        self, question: str, context: str, deadline: float | None
    ) -> tuple[EncodedQuestion, float, float]:
        """The question's windows, and when tokenizing them began and ended."""
        began = time.monotonic()
        # Questions queue for this thread; one whose deadline passed meanwhile is not worth it.
        if deadline is not None and began >= deadline:
            raise DeadlineExceeded("the deadline passed before the question was tokenized")
        encoded = self._engine.encode(question, context)
        return encoded, began, time.monotonic()

    def _decode(
        self, encoded: EncodedQuestion, logits: list[WindowLogits], options: QAOptions
    ) -> tuple[QAResult, float, float]:
        """The answer, and when decoding it began and ended."""
        began = time.monotonic()
        result = self._engine.decode(encoded, logits, options)
        return result, began, time.monotonic()

    def _enqueue(
        self, encoded: EncodedQuestion, submitted: float, deadline: float | None
    ) -> _Request:
        loop = asyncio.get_running_loop()
        size = len(encoded.windows)
        request = _Request(
            size,
            submitted,
            deadline,
            loop.create_future(),
            unstarted=size,
            trace=self._tracing.link(),
        )
        now = request.queued = time.monotonic()
        self._pending.extend(
            _Pending(request, index, window, now) for index, window in enumerate(encoded.windows)
        )
        if deadline is not None:
            # Fails the caller on time even while a long batch keeps the engine busy.
            request.expiry = loop.call_later(deadline - now, self._expire, request)
        self._dispatch()
        return request

    def _dispatch(self) -> None:
        """Starts batches on the free streams while there are batches worth starting now."""
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer = None
        while self._free_streams and self._start_batch():
            pass

    def _start_batch(self) -> bool:
        """Starts the next batch on a free stream; False when there is none to start yet."""
        now = time.monotonic()
        # The expiry timers may lag the clock a little; an expired window must never run.
        for request in {p.request for p in self._pending if _overdue(p.request, now)}:
            self._expire(request)
        batch, jumped = self._plan_in_time(now)
        if not batch:
            return False
        wait_until = self._pending[0].arrived + self._limits.max_wait_ms / 1000
        more_fit = len(batch) == len(self._pending) < self._limits.batch_size
        if self._accepting and more_fit and now < wait_until:
            self._wait_timer = asyncio.get_running_loop().call_later(
                wait_until - now, self._dispatch
            )
            return False
        self._last_seed = batch[0].request
        self._oldest_due = jumped
        chosen = set(batch)
        self._pending = [item for item in self._pending if item not in chosen]
        for item in batch:
            request = item.request
            request.unstarted -= 1
            if not request.unstarted:
                request.queue_s = now - request.submitted
                if request.expiry is not None:
                    request.expiry.cancel()
        windows = [item.window for item in batch]
        stream = self._free_streams.pop(0)
        running = asyncio.get_running_loop().run_in_executor(
            self._inference, self._infer, windows, stream
        )
        running.add_done_callback(partial(self._finished, batch, stream, time.time_ns()))
        return True

    def _plan_in_time(self, now: float) -> tuple[list[_Pending], bool]:
        """The next batch (empty when nothing is pending) and whether its seed went ahead of
        the oldest candidate, after failing the questions whose deadline would pass before even
        their longest waiting window alone could finish."""
        self._fail_doomed(now)
        if not self._pending:
            return [], False
        return self._plan()

    def _fail_doomed(self, now: float) -> None:
        """One pass over what is pending, so that many doomed questions cost the loop no more
        than one plan."""
        least: dict[_Request, float] = {}
        for item in self._pending:
            if item.request.deadline is not None:
                alone = self.run_estimate.seconds(len(item.window))
                least[item.request] = max(least.get(item.request, 0.0), alone)
        doomed = {request for request, seconds in least.items() if _late(request, now + seconds)}
        if not doomed:
            return
        self._pending = [item for item in self._pending if item.request not in doomed]
        for request in doomed:
            if request.expiry is not None:
                request.expiry.cancel()
            why = (
                f"the deadline would pass before its window could finish (it takes at least "
                f"{least[request] * 1000:.0f} ms), so it was not run"
            )
            if not request.future.done():
                request.future.set_exception(DeadlineExceeded(why))

    def _plan(self) -> tuple[list[_Pending], bool]:
        """The next batch, its seed first, and whether the seed went ahead of the oldest
        candidate."""
        pending = self._pending
        owners = [item.request for item in pending]
        deadlines = [item.request.deadline for item in pending]
        seed = seed_index(owners, self._last_seed, deadlines, self._oldest_due)
        oldest = seed_index(owners, self._last_seed)
        chosen = next_batch([len(item.window) for item in pending], self._limits, seed, deadlines)
        return [pending[index] for index in chosen], seed != oldest

    def _infer(self, windows: list[Window], stream: int) -> tuple[list[WindowLogits], float, float]:
        """The batch's logits, its run time and the `time.monotonic()` instant it ended."""
        began = time.perf_counter()
        logits = self._engine.infer(windows, stream)
        seconds = time.perf_counter() - began
        if len(logits) != len(windows):
            raise RuntimeError(f"infer returned {len(logits)} logits for {len(windows)} windows")
        return logits, seconds, time.monotonic()

    def _finished(
        self,
        batch: list[_Pending],
        stream: int,
        started_ns: int,
        done: asyncio.Future[tuple[list[WindowLogits], float, float]],
    ) -> None:
        self._free_streams.append(stream)
        self._free_streams.sort()
        requests = list(dict.fromkeys(item.request for item in batch))
        error = done.exception()
        if error is not None:
            for request in requests:
                self._fail(request, error)
            self._dispatch()
            return
        logits, seconds, ended = done.result()
        lengths = [len(item.window) for item in batch]
        self.run_estimate.ran(len(batch) * max(lengths), seconds)
        for item, window_logits in zip(batch, logits, strict=True):
            item.request.logits[item.index] = window_logits
        for request in requests:
            request.inference_s += seconds
            request.inferred = max(request.inferred, ended)
            if len(request.logits) == request.size and not request.future.done():
                request.future.set_result([request.logits[i] for i in range(request.size)])
        self._dispatch()
        # Last, so that an observer that raises cannot hold up answers or the next batch.
        links = [request.trace for request in requests if request.trace is not None]
        self._tracing.batch(
            links, len(batch), len(batch) * max(lengths), started_ns, time.time_ns()
        )
        if self._observer is not None:
            self._observer.on_batch(len(batch), sum(lengths), len(batch) * max(lengths), seconds)

    def _expire(self, request: _Request) -> None:
        self._fail(request, DeadlineExceeded("the deadline passed before inference started"))

    def _fail(self, request: _Request, error: BaseException) -> None:
        self._withdraw(request)
        if not request.future.done():
            request.future.set_exception(error)

    def _withdraw(self, request: _Request) -> None:
        if request.expiry is not None:
            request.expiry.cancel()
        self._pending = [item for item in self._pending if item.request is not request]

    def _shutdown_threads(self) -> None:
        self._cpu.shutdown()
        self._inference.shutdown()


def _overdue(request: _Request, now: float) -> bool:
    return request.deadline is not None and request.deadline <= now


def _late(request: _Request, finish: float) -> bool:
    """Whether an answer ready at `finish` would come after the request's deadline."""
    return request.deadline is not None and request.deadline < finish
