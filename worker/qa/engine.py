"""The QA engine: tokenizes questions into windows, runs them in padded batches, decodes answers.

It needs no broker. The streaming worker drives the same three steps (`encode`, `infer`,
`decode`) from its own micro-batcher; `answer_many` drives them for offline use.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backends import InferenceBackend
from ..batching.plan import BatchLimits, plan_batches
from ..batching.streams import each_stream_takes_next
from ..config import DEFAULT_MAX_WINDOWS
from ..errors import EventError, SetupError
from ..model.manifest import (
    TOKENIZER_NAME,
    Manifest,
    Precision,
    manifest_checksum,
    verify_checksums,
)
from .decode import WindowLogits, decode
from .types import QAOptions, QAResult
from .windows import EncodedQuestion, Window, WindowTokenizer


@dataclass(slots=True)
class InferenceStats:
    """Running totals of what `infer` ran, for throughput and padding reports.

    `seconds` adds up the run time of every batch, so with several streams it can exceed the
    wall-clock time they took.
    """

    batches: int = 0
    windows: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0

    @property
    def padding_ratio(self) -> float:
        return self.padded_tokens / self.real_tokens if self.real_tokens else 1.0


@dataclass(frozen=True, slots=True)
class Question:
    question: str
    context: str
    options: QAOptions = QAOptions()


def pad_windows(windows: Sequence[Window], pad_token_id: int) -> dict[str, np.ndarray]:
    longest = max(len(window) for window in windows)
    input_ids = np.full((len(windows), longest), pad_token_id, dtype=np.int64)
    type_ids = np.zeros((len(windows), longest), dtype=np.int64)
    attention = np.zeros((len(windows), longest), dtype=np.int64)
    for row, window in enumerate(windows):
        size = len(window)
        input_ids[row, :size] = window.input_ids
        type_ids[row, :size] = window.type_ids
        attention[row, :size] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": type_ids}


class QAEngine:
    def __init__(
        self,
        tokenizer: WindowTokenizer,
        backend: InferenceBackend,
        manifest: Manifest,
        model_id: str = "",
    ) -> None:
        self.tokenizer = tokenizer
        self.backend = backend
        self.manifest = manifest
        self.model_id = model_id
        self.stats = InferenceStats()
        # Streams finish batches on their own threads; `+=` on the totals is not atomic.
        self._stats_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        folder: Path,
        *,
        precision: Precision | None = None,
        threads: int = 0,
        streams: int = 0,
        max_seq_len: int | None = None,
        doc_stride: int | None = None,
        max_windows: int = DEFAULT_MAX_WINDOWS,
    ) -> QAEngine:
        from ..backends.onnx import OnnxBackend, stream_layout

        manifest = Manifest.read(folder)
        onnx_path = manifest.onnx_path(folder, precision)
        # A changed or truncated file would otherwise load and answer differently, unnoticed.
        verify_checksums(folder, manifest, manifest.files_to_load(precision))
        tokenizer = WindowTokenizer(
            folder / TOKENIZER_NAME, manifest.tokenizer, max_seq_len, doc_stride, max_windows
        )
        backend = OnnxBackend(onnx_path, *stream_layout(streams, threads))
        return cls(tokenizer, backend, manifest, model_id=manifest_checksum(folder))

    @property
    def streams(self) -> int:
        """How many batches `infer` can run at once, each on its own stream."""
        return self.backend.streams

    def encode(self, question: str, context: str) -> EncodedQuestion:
        return self.tokenizer.encode(question, context)

    def infer(self, windows: Sequence[Window], stream: int = 0) -> list[WindowLogits]:
        """Runs one padded batch on `stream`; returns each window's logits trimmed to its length.

        Safe to call from several threads at once for distinct streams.
        """
        inputs = pad_windows(windows, self.manifest.tokenizer.pad_token_id)
        began = time.perf_counter()
        start, end = self.backend.run(inputs, stream)
        seconds = time.perf_counter() - began
        with self._stats_lock:
            self.stats.seconds += seconds
            self.stats.batches += 1
            self.stats.windows += len(windows)
            self.stats.real_tokens += sum(len(window) for window in windows)
            self.stats.padded_tokens += inputs["input_ids"].size
        return [
            WindowLogits(start[row, : len(window)], end[row, : len(window)])
            for row, window in enumerate(windows)
        ]

    def _infer_on_every_stream(self, batches: list[list[Window]]) -> list[list[WindowLogits]]:
        """Runs `batches`, in order of the result, one thread per stream taking the next one.

        With one single-threaded stream per core, one stream alone would leave the other cores
        idle: offline answering gets the same layout's throughput as the worker.
        """
        if self.streams == 1 or len(batches) < 2:
            return [self.infer(batch) for batch in batches]
        results: list[list[WindowLogits] | None] = [None] * len(batches)

        def run(index: int, stream: int) -> None:
            results[index] = self.infer(batches[index], stream)

        stream_loop = each_stream_takes_next(len(batches), run)
        with ThreadPoolExecutor(self.streams, thread_name_prefix="qa-stream") as pool:
            # list(): a stream that raised re-raises here, after the others have finished.
            list(pool.map(stream_loop, range(self.streams)))
        return [logits for logits in results if logits is not None]

    def warm_up(
        self, limits: BatchLimits, lengths: Sequence[int] = (64, 128, 256)
    ) -> list[tuple[int, int]]:
        """Runs each step of answering once on representative input, so that the first events
        do not pay the first runs' costs; returns the (windows, tokens) batch shapes each stream
        ran.

        ONNX Runtime grows its memory arenas to the largest batch it has met, touching memory
        for the first time, and the tokenizer and the decoding are slower on their first calls
        too. Every stream, all at once as under load, runs a batch of windows of each of
        `lengths` shorter than `max_seq_len` and of `max_seq_len` itself, as many windows as
        `limits` let the batcher put together at that length, so that no warm-up batch takes
        longer than the longest batch the worker will run. The windows come from the tokenizer,
        and one of the questions is then decoded.

        Raises SetupError naming the step that failed: a worker must not start with a model
        that cannot run the batches it will be given.
        """
        question = "What?"

        def encoded_of_length(length: int) -> EncodedQuestion:
            # Each more repeat of one word adds the same tokens, so two encodings tell how many
            # repeats fill `length`; the words fit in one window of at most that length. A
            # space before the first word too, or byte-level BPE would split it differently.
            def with_words(count: int) -> EncodedQuestion:
                return self.encode(question, " river" * count)

            one, two = len(with_words(1).windows[0]), len(with_words(2).windows[0])
            return with_words(max(1, 1 + (length - one) // max(1, two - one)))

        max_seq_len = self.tokenizer.max_seq_len
        wanted = sorted({length for length in lengths if length < max_seq_len} | {max_seq_len})
        try:
            questions = [encoded_of_length(length) for length in wanted]
        except Exception as error:
            raise SetupError(f"tokenizing the warm-up questions failed: {error}") from error
        batches = []
        for encoded in questions:
            window = encoded.windows[0]
            fitting = max(1, limits.max_batch_tokens // len(window))
            batches.append([window] * min(limits.batch_size, fitting))
        shapes = [(len(batch), len(batch[0])) for batch in batches]

        def run_every_batch(stream: int) -> None:
            for batch, (windows, tokens) in zip(batches, shapes, strict=True):
                try:
                    self.infer(batch, stream)
                except Exception as error:
                    raise SetupError(
                        f"the model failed to run a {windows}x{tokens} batch (windows x tokens) "
                        f"on inference stream {stream} while warming up: {error!r}"
                    ) from error

        with ThreadPoolExecutor(self.streams, thread_name_prefix="qa-warm-up") as pool:
            # list(): a stream that raised re-raises here, after the others have finished.
            list(pool.map(run_every_batch, range(self.streams)))
        shortest = questions[0]
        try:
            self.decode(shortest, self.infer(shortest.windows), QAOptions())
        except Exception as error:
            raise SetupError(f"answering the warm-up question failed: {error!r}") from error
        return shapes

    def decode(
        self, encoded: EncodedQuestion, logits: Sequence[WindowLogits], options: QAOptions
    ) -> QAResult:
        return decode(encoded, logits, options)

    def answer(self, question: str, context: str, options: QAOptions | None = None) -> QAResult:
        result = self.answer_many([Question(question, context, options or QAOptions())])[0]
        if isinstance(result, EventError):
            raise result
        return result

    def answer_many(
        self,
        questions: Sequence[Question],
        limits: BatchLimits = BatchLimits(),
    ) -> list[QAResult | EventError]:
        """Answers in input order; a question the engine cannot take yields its EventError.

        Windows are batched by the same planner as the streaming batcher's, within `limits`.
        """
        encoded = self.tokenizer.encode_many([(item.question, item.context) for item in questions])
        owners: list[tuple[int, int]] = []
        windows: list[Window] = []
        for question_index, item in enumerate(encoded):
            if isinstance(item, EncodedQuestion):
                for window_index, window in enumerate(item.windows):
                    owners.append((question_index, window_index))
                    windows.append(window)
        logits: dict[tuple[int, int], WindowLogits] = {}
        plan = plan_batches([len(w) for w in windows], limits)
        batches = self._infer_on_every_stream([[windows[index] for index in b] for b in plan])
        for batch, batch_logits in zip(plan, batches, strict=True):
            for index, window_logits in zip(batch, batch_logits, strict=True):
                logits[owners[index]] = window_logits
        results: list[QAResult | EventError] = []
        for question_index, item in enumerate(encoded):
            if isinstance(item, EventError):
                results.append(item)
                continue
            item_logits = [logits[(question_index, w)] for w in range(len(item.windows))]
            results.append(self.decode(item, item_logits, questions[question_index].options))
        return results
