"""Async micro-batching between the Kafka transport and the QA engine.

The transport awaits `MicroBatcher.answer` once per event; the batcher pools the windows of all
concurrent questions and runs them through the engine in padded batches:

    async with MicroBatcher(engine, BatchLimits(batch_size=16)) as batcher:
        answered = await batcher.answer(question, context, QAOptions(), deadline=deadline,
                                        lane=partition)

Threads: inference runs in one thread per inference stream of the engine (`engine.streams`), each
running one batch at a time on its stream; tokenizing and decoding run in two other threads, so
they overlap with inference: one for long contexts (over `LONG_CONTEXT_CHARS`) and questions of
many windows, one for the rest, so that a 100,000-character context does not hold up the short
questions' tokenizing and decoding. The event loop only does the bookkeeping below.

Admission (`budget.WorkBudget`): a question is tokenized only once the windows the batcher holds
are under its work budget, so memory follows the work in hand, not the number of questions.

Scheduling (`queue.PendingQueue`): whenever a stream is free and windows wait, the next batch is
chosen and started at once on that stream; while the streams are busy, new windows accumulate
for the batches after. Lanes (the worker's partitions) take turns, then events within a lane;
the earliest deadline goes first within the turns; a batch grows around its seed with the windows
nearest in length, within `batch_size` windows, `max_batch_tokens` padded tokens and
`max_padding`. Length grouping keeps padding low; the padding cap keeps an outlier (a 384-token
window among 100-token ones) from making a whole batch compute on padding.

Failures: when a batch of several windows fails, each of its windows runs again alone, so only
an event whose window fails alone fails, with the engine's error.

Deadlines: a question whose deadline passes while it waits fails at once (`DeadlineExceeded`),
and one whose deadline would pass before even one of its waiting windows alone could finish
fails when that window comes up to be planned: the run is estimated from the fastest rate per
padded token of the recent batches (`estimate.RunEstimate`), a lower bound, so no question that
could still make its deadline is failed for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from ..errors import DeadlineExceeded
from ..lifecycle import AsyncLifecycle
from ..observability.tracing import NO_TRACING
from ..observability.tracing_interface import Tracing
from ..qa.decode import WindowLogits
from ..qa.types import QAOptions, QAResult
from ..qa.windows import EncodedQuestion, Window
from .budget import Admission, WorkBudget
from .estimate import RunEstimate
from .plan import BatchLimits
from .priority import yield_to_event_loop
from .queue import Entry, PendingQueue

__all__ = [
    "Answered",
    "BatchObserver",
    "Engine",
    "MicroBatcher",
    "Stages",
]

# The windows questions may hold by default: about 14 KB each with a 384-token window (its tokens
# and offsets, then its logits until decoding), so some 57 MB, beyond which tokenizing waits.
DEFAULT_WORK_BUDGET = 4096
# Contexts longer than this are tokenized, and questions of more windows than this decoded, on a
# thread of their own, so that they do not hold up the short questions' turns on the other.
LONG_CONTEXT_CHARS = 10_000
LONG_DECODE_WINDOWS = 8


class BatchObserver(Protocol):
    """Told about every batch that ran, on the event loop (metrics plug in here): its windows,
    tokens and run time, and how long choosing it took the loop."""

    def on_batch(
        self, windows: int, real_tokens: int, padded_tokens: int, seconds: float, plan_s: float
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


@dataclass(eq=False)
class _Request:
    """One call to `answer` with its windows in the queue: the queue's `Owner`."""

    lane: Hashable
    event: Hashable
    deadline: float | None
    windows: list[Window]
    submitted: float
    future: asyncio.Future[list[WindowLogits]]
    unstarted: int
    entries: list[Entry[_Request]] = field(default_factory=list)
    logits: dict[int, WindowLogits] = field(default_factory=dict)
    queue_s: float = 0.0
    inference_s: float = 0.0
    queued: float = 0.0
    inferred: float = 0.0
    expiry: asyncio.TimerHandle | None = None
    trace: object | None = None


class MicroBatcher(AsyncLifecycle):
    def __init__(
        self,
        engine: Engine,
        limits: BatchLimits,
        observer: BatchObserver | None = None,
        tracing: Tracing = NO_TRACING,
        work_budget: int = DEFAULT_WORK_BUDGET,
        run_estimate: RunEstimate | None = None,
    ) -> None:
        """`work_budget` is how many windows the questions admitted may hold at once;
        `run_estimate` tells how long a batch takes at the least, learning from each batch that
        runs (a new `RunEstimate`, which knows nothing yet, unless given)."""
        if engine.streams < 1:
            raise ValueError(f"the engine must have 1 or more streams, got {engine.streams}")
        self._engine = engine
        self._limits = limits
        self._observer = observer
        self._tracing = tracing
        self.budget = WorkBudget(work_budget)
        # Executors start their threads on first use, so building them here costs nothing. No
        # more batches than streams are ever submitted, so each runs on a thread of its own.
        # The bulk work's threads run at a lower priority, so the event loop gets a core at once;
        # the short questions' tokenizing keeps the loop's, since their answers wait on it.
        self._inference = ThreadPoolExecutor(
            engine.streams, thread_name_prefix="qa-inference", initializer=yield_to_event_loop
        )
        self._short_cpu = ThreadPoolExecutor(1, thread_name_prefix="qa-tokenize")
        self._long_cpu = ThreadPoolExecutor(
            1, thread_name_prefix="qa-tokenize-long", initializer=yield_to_event_loop
        )
        self._started = False
        self._accepting = False
        # Everything below is touched on the event loop only, so needs no lock.
        self._queue: PendingQueue[_Request] = PendingQueue()
        self._run_estimate = RunEstimate() if run_estimate is None else run_estimate
        # Streams with no batch running, the lowest first so that a short queue reuses one.
        self._free_streams = list(range(engine.streams))
        self._wait_timer: asyncio.TimerHandle | None = None
        self._in_flight = 0
        # Lanes a window of which ran since `lanes_run()` was last asked.
        self._lanes_ran: set[Hashable] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pending_windows(self) -> int:
        """Windows waiting for a batch (not counting those running)."""
        return len(self._queue)

    @property
    def held_windows(self) -> int:
        """Windows of the questions admitted: waiting, running or waiting to be decoded."""
        return self.budget.held

    def lanes_run(self) -> set[Hashable]:
        """The lanes a window of which ran since the last call: the partitions making progress."""
        ran, self._lanes_ran = self._lanes_ran, set()
        return ran

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
        self,
        question: str,
        context: str,
        options: QAOptions,
        deadline: float | None = None,
        lane: Hashable = None,
        event: Hashable = None,
    ) -> Answered:
        """Answers one question; `deadline` is a `time.monotonic()` instant.

        `lane` is what takes turns with other lanes (the worker passes the partition), and
        `event` groups the questions of one event within its lane (a document's question set);
        by default each question is an event of its own.

        Raises `EventError` when the engine cannot take the input, `DeadlineExceeded` when the
        deadline passes before its windows start inference (those not started never run), and
        whatever `infer` raised for its window run alone. Cancelling the caller withdraws its
        windows.
        """
        if not self._accepting:
            raise RuntimeError("the batcher is not accepting questions (not started, or stopping)")
        submitted = time.monotonic()
        self._in_flight += 1
        self._idle.clear()
        try:
            admission = await self._admit(lane, len(context) > LONG_CONTEXT_CHARS, deadline)
            try:
                return await self._answer_admitted(
                    question, context, options, deadline, lane, event, submitted, admission
                )
            finally:
                admission.release()
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _admit(self, lane: Hashable, long: bool, deadline: float | None) -> Admission:
        """The question's admission to the work budget, within its deadline."""
        if deadline is None:
            return await self.budget.admit(lane, kind=long)
        try:
            return await asyncio.wait_for(
                self.budget.admit(lane, kind=long), max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            raise DeadlineExceeded(
                "the deadline passed while the question waited for the work budget"
            ) from None

    async def _answer_admitted(
        self,
        question: str,
        context: str,
        options: QAOptions,
        deadline: float | None,
        lane: Hashable,
        event: Hashable,
        submitted: float,
        admission: Admission,
    ) -> Answered:
        loop = asyncio.get_running_loop()
        tokenizer = self._long_cpu if len(context) > LONG_CONTEXT_CHARS else self._short_cpu
        with self._tracing.stage("tokenize"):
            encoded, tokenize_started, tokenized = await loop.run_in_executor(
                tokenizer, self._encode, question, context, deadline
            )
        admission.size(len(encoded.windows))
        request = self._enqueue(encoded, submitted, deadline, lane, event)
        enqueued_ns = time.time_ns()
        try:
            logits = await request.future
        except asyncio.CancelledError:
            self._withdraw(request)
            raise
        waited_ns = int((request.queue_s - (time.monotonic() - submitted)) * 1e9)
        self._tracing.interval("queue wait", enqueued_ns, time.time_ns() + waited_ns)
        decoder = self._long_cpu if len(encoded.windows) > LONG_DECODE_WINDOWS else self._short_cpu
        with self._tracing.stage("decode"):
            result, decode_started, decoded = await loop.run_in_executor(
                decoder, self._decode, encoded, logits, options
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
        self,
        encoded: EncodedQuestion,
        submitted: float,
        deadline: float | None,
        lane: Hashable,
        event: Hashable,
    ) -> _Request:
        loop = asyncio.get_running_loop()
        size = len(encoded.windows)
        request = _Request(
            lane,
            event,
            deadline,
            encoded.windows,
            submitted,
            loop.create_future(),
            unstarted=size,
            trace=self._tracing.link(),
        )
        if event is None:
            request.event = request
        now = request.queued = time.monotonic()
        request.entries = self._queue.add(request, [len(window) for window in encoded.windows], now)
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
        refuse = partial(self._refuse, now)
        # Questions that can no longer make their deadline fail now, not after a wait.
        self._queue.refuse_urgent(refuse)
        oldest = self._queue.oldest_arrival()
        if oldest is None:
            return False
        wait_until = oldest + self._limits.max_wait_ms / 1000
        fills_later = len(self._queue) < self._limits.batch_size
        if self._accepting and fills_later and now < wait_until:
            self._wait_timer = asyncio.get_running_loop().call_later(
                wait_until - now, self._dispatch
            )
            return False
        batch = self._queue.next_batch(self._limits, refuse)
        if not batch:
            return False
        plan_s = time.monotonic() - now
        for entry in batch:
            request = entry.owner
            request.unstarted -= 1
            if not request.unstarted:
                request.queue_s = now - request.submitted
                if request.expiry is not None:
                    request.expiry.cancel()
        windows = [entry.owner.windows[entry.index] for entry in batch]
        stream = self._free_streams.pop(0)
        running = asyncio.get_running_loop().run_in_executor(
            self._inference, self._infer, windows, stream
        )
        running.add_done_callback(partial(self._finished, batch, stream, time.time_ns(), plan_s))
        return True

    def _refuse(self, now: float, entry: Entry[_Request]) -> bool:
        """Fails the question of a window about to be planned when its deadline has passed or
        would pass before even that window alone could finish."""
        request = entry.owner
        if request.deadline is None:
            return False
        if request.deadline <= now:
            # The expiry timer may lag the clock a little; an expired window must never run.
            self._expire(request)
            return True
        alone = self._run_estimate.seconds(entry.length)
        if request.deadline >= now + alone:
            return False
        why = (
            f"the deadline would pass before its window could finish (it takes at least "
            f"{alone * 1000:.0f} ms), so it was not run"
        )
        self._fail(request, DeadlineExceeded(why))
        return True

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
        batch: list[Entry[_Request]],
        stream: int,
        started_ns: int,
        plan_s: float,
        done: asyncio.Future[tuple[list[WindowLogits], float, float]],
    ) -> None:
        self._free_streams.append(stream)
        self._free_streams.sort()
        requests = list(dict.fromkeys(entry.owner for entry in batch))
        error = done.exception()
        if error is not None:
            self._failed(batch, error)
            self._dispatch()
            return
        logits, seconds, ended = done.result()
        lengths = [entry.length for entry in batch]
        self._run_estimate.ran(len(batch) * max(lengths), seconds)
        for entry, window_logits in zip(batch, logits, strict=True):
            entry.owner.logits[entry.index] = window_logits
        for request in requests:
            request.inference_s += seconds
            request.inferred = max(request.inferred, ended)
            self._lanes_ran.add(request.lane)
            if len(request.logits) == len(request.windows) and not request.future.done():
                request.future.set_result([request.logits[i] for i in range(len(request.windows))])
        self._dispatch()
        # Last, so that an observer that raises cannot hold up answers or the next batch.
        links = [request.trace for request in requests if request.trace is not None]
        self._tracing.batch(
            links, len(batch), len(batch) * max(lengths), started_ns, time.time_ns()
        )
        if self._observer is not None:
            padded = len(batch) * max(lengths)
            self._observer.on_batch(len(batch), sum(lengths), padded, seconds, plan_s)

    def _failed(self, batch: list[Entry[_Request]], error: BaseException) -> None:
        """A batch raised: a window that ran alone fails its question; a batch of several runs
        again one window at a time, so the one that cannot run fails alone."""
        if len(batch) == 1:
            self._fail(batch[0].owner, error)
            return
        retried = [entry for entry in batch if not entry.owner.future.done()]
        for entry in self._queue.retry_alone(retried):
            entry.owner.entries.append(entry)
            entry.owner.unstarted += 1

    def _expire(self, request: _Request) -> None:
        self._fail(request, DeadlineExceeded("the deadline passed before inference started"))

    def _fail(self, request: _Request, error: BaseException) -> None:
        self._withdraw(request)
        if not request.future.done():
            request.future.set_exception(error)

    def _withdraw(self, request: _Request) -> None:
        if request.expiry is not None:
            request.expiry.cancel()
        self._queue.withdraw(request.entries)

    def _shutdown_threads(self) -> None:
        self._short_cpu.shutdown()
        self._long_cpu.shutdown()
        self._inference.shutdown()
