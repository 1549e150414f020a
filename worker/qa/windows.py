"""Question/context pairs to model windows, tokenized exactly as the reference pipeline does.

The reference (transformers 4.57.6 `QuestionAnsweringPipeline` with a fast tokenizer) encodes the
pair with truncation of the context only, `stride=doc_stride` and overflowing windows, question
first for right-padding tokenizers. Positions that may hold an answer are the context tokens and
every CLS token; everything else is masked out of the softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from ..errors import ErrorCode, EventError
from ..model.manifest import TokenizerInfo

REFERENCE_MAX_SEQ_LEN = 384
REFERENCE_MAX_STRIDE = 128


@dataclass(frozen=True, slots=True)
class Window:
    """One model input: an unpadded token sequence and the positions that may hold an answer.

    Per token it also keeps what decoding maps answers back to the context with, copied out of
    the tokenizer's Encoding: the character range (`offsets`, shape (n, 2)), the word index and
    the sequence index, -1 where the tokenizer has none. Not the Encoding itself: that also holds
    every token's text, and the first window's holds every other window again, so a question in
    flight kept about ten times the memory these arrays take.
    """

    input_ids: np.ndarray
    type_ids: np.ndarray
    candidates: np.ndarray
    offsets: np.ndarray
    word_ids: np.ndarray
    sequence_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True, slots=True)
class EncodedQuestion:
    question: str
    context: str
    windows: list[Window]
    context_sequence: int

    @property
    def tokens(self) -> int:
        return sum(len(window) for window in self.windows)


def window_geometry(
    model_max_length: int, max_seq_len: int | None, doc_stride: int | None
) -> tuple[int, int]:
    """The reference's defaults: min(model max, 384) tokens per window, min(half, 128) stride."""
    seq_len = (
        max_seq_len if max_seq_len is not None else min(model_max_length, REFERENCE_MAX_SEQ_LEN)
    )
    stride = doc_stride if doc_stride is not None else min(seq_len // 2, REFERENCE_MAX_STRIDE)
    if seq_len > model_max_length:
        raise ValueError(
            f"max_seq_len {seq_len} is longer than the model accepts ({model_max_length})"
        )
    if stride > seq_len:
        raise ValueError(f"doc_stride ({stride}) is larger than max_seq_len ({seq_len})")
    return seq_len, stride


class WindowTokenizer:
    def __init__(
        self,
        tokenizer_file: Path,
        info: TokenizerInfo,
        max_seq_len: int | None = None,
        doc_stride: int | None = None,
    ) -> None:
        self.info = info
        self.max_seq_len, self.doc_stride = window_geometry(
            info.model_max_length, max_seq_len, doc_stride
        )
        self.question_first = info.padding_side == "right"
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        # Counts tokens of one text; a second instance because truncation settings are shared
        # state and the windowing one truncates pairs only.
        self._counter = Tokenizer.from_file(str(tokenizer_file))
        self._counter.no_padding()
        self._counter.no_truncation()
        self._pair_special_tokens = self._tokenizer.num_special_tokens_to_add(is_pair=True)
        self._tokenizer.enable_truncation(
            max_length=self.max_seq_len,
            stride=self.doc_stride,
            strategy="only_second" if self.question_first else "only_first",
            direction="right",
        )

    def encode(self, question: str, context: str) -> EncodedQuestion:
        self.check(question, context)
        try:
            # A batch of one: `encode_batch` releases the GIL while it tokenizes and `encode` does
            # not, so a long context would stall every other thread, the event loop's too.
            (encoding,) = self._tokenizer.encode_batch([self._ordered(question, context)])
        except Exception as error:
            raise self._tokenization_error(error) from None
        except BaseException as error:
            # A Rust panic arrives as pyo3's PanicException, which is no Exception: it would
            # pass every handler's catch-all and stop the worker over one event's input.
            if type(error).__name__ != "PanicException":
                raise
            raise self._tokenization_error(error) from None
        return self._windows(question, context, encoding)

    def encode_many(self, pairs: Sequence[tuple[str, str]]) -> list[EncodedQuestion | EventError]:
        """Encodes many pairs in one parallel tokenizer call; a bad pair fails alone."""
        results: list[EncodedQuestion | EventError | None] = [None] * len(pairs)
        valid: list[int] = []
        for index, (question, context) in enumerate(pairs):
            try:
                self.check(question, context)
                valid.append(index)
            except EventError as error:
                results[index] = error
        try:
            encodings = self._tokenizer.encode_batch([self._ordered(*pairs[i]) for i in valid])
        except Exception:
            # One pair broke the batch call; encode one by one so only that pair fails.
            for index in valid:
                try:
                    results[index] = self.encode(*pairs[index])
                except EventError as error:
                    results[index] = error
        else:
            for index, encoding in zip(valid, encodings, strict=True):
                results[index] = self._windows(*pairs[index], encoding)
        return [result for result in results if result is not None]

    def check(self, question: str, context: str) -> None:
        """Rejects what the tokenizer cannot window, before it gets to panic over it.

        When the question leaves no more room for context than the stride, tokenizers cannot
        make overlapping windows and aborts with a Rust panic, whichever text comes first; the
        reference fails there too.
        """
        check_texts(question, context)
        question_tokens = self._count_tokens(question)
        room = self.max_seq_len - question_tokens - self._pair_special_tokens
        if room > self.doc_stride:
            return
        context_tokens = self._count_tokens(context)
        if context_tokens > room:
            raise EventError(
                ErrorCode.QUESTION_TOO_LONG,
                f"the question takes {question_tokens} of the {self.max_seq_len} tokens of a "
                f"window, leaving {max(room, 0)} for the context, not more than the stride of "
                f"{self.doc_stride}; shorten the question or raise max_seq_len",
            )

    def _count_tokens(self, text: str) -> int:
        # `encode_batch` for the GIL, as in `encode`: the text may be a whole long context.
        (encoding,) = self._counter.encode_batch([text], add_special_tokens=False)
        return len(encoding)

    def _ordered(self, question: str, context: str) -> tuple[str, str]:
        return (question, context) if self.question_first else (context, question)

    def _windows(self, question: str, context: str, encoding: Encoding) -> EncodedQuestion:
        context_sequence = 1 if self.question_first else 0
        windows = [
            self._window(part, context_sequence) for part in [encoding, *encoding.overflowing]
        ]
        return EncodedQuestion(question, context, windows, context_sequence)

    def _window(self, encoding: Encoding, context_sequence: int) -> Window:
        input_ids = np.array(encoding.ids, dtype=np.int32)
        sequence_ids = optional_ids(encoding.sequence_ids, np.int8)
        if self.question_first:
            candidates = sequence_ids == context_sequence
        else:
            # The reference masks nothing when the context comes first.
            candidates = np.ones(len(input_ids), dtype=bool)
        if self.info.cls_token_id is not None:
            candidates |= input_ids == self.info.cls_token_id
        return Window(
            input_ids=input_ids,
            type_ids=np.array(encoding.type_ids, dtype=np.int8),
            candidates=candidates,
            offsets=offsets_array(encoding.offsets),
            word_ids=optional_ids(encoding.word_ids, np.int32),
            sequence_ids=sequence_ids,
        )

    def _tokenization_error(self, error: BaseException) -> EventError:
        message = str(error)
        if "truncat" in message.lower() or "stride" in message.lower():
            return EventError(
                ErrorCode.QUESTION_TOO_LONG,
                f"the question leaves no room for the context in a {self.max_seq_len}-token "
                f"window with stride {self.doc_stride}; shorten the question or raise "
                f"max_seq_len ({message})",
            )
        return EventError(
            ErrorCode.TOKENIZATION_FAILED, f"the tokenizer rejected the input: {message}"
        )


def optional_ids(values: Sequence[int | None], dtype: type[np.integer]) -> np.ndarray:
    """`values` as an array of `dtype`, -1 for None.

    numpy reads None as NaN when it makes floats, so the list is converted in C, without a
    Python loop over its items; word and sequence indices are far below float64's exact range.
    """
    as_floats = np.array(values, dtype=np.float64)
    return np.where(np.isnan(as_floats), -1, as_floats).astype(dtype)


def offsets_array(offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Character ranges as an int32 array of shape (n, 2).

    Read as one flat stream: numpy is several times slower when it has to discover the shape
    of a list of tuples.
    """
    flat = np.fromiter(chain.from_iterable(offsets), dtype=np.int32, count=2 * len(offsets))
    return flat.reshape(len(offsets), 2)


def check_texts(question: object, context: object) -> None:
    """The reference pipeline's own checks: both texts present, neither empty."""
    for name, value, invalid, empty in (
        ("question", question, ErrorCode.INVALID_QUESTION, ErrorCode.EMPTY_QUESTION),
        ("context", context, ErrorCode.INVALID_CONTEXT, ErrorCode.EMPTY_CONTEXT),
    ):
        if not isinstance(value, str):
            raise EventError(invalid, f"{name} must be a string, got {type(value).__name__}")
        if not value:
            raise EventError(empty, f"{name} cannot be empty")
