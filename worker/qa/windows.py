"""Question/context pairs to model windows, tokenized exactly as the reference pipeline does.

The reference (transformers 4.57.6 `QuestionAnsweringPipeline` with a fast tokenizer) encodes the
pair with truncation of the context only, `stride=doc_stride` and overflowing windows, question
first for right-padding tokenizers; `WindowTokenizer` makes the same windows from one untruncated
encoding of the pair. Positions that may hold an answer are the context tokens and every CLS
token; everything else is masked out of the softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import chain
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from ..config import DEFAULT_MAX_WINDOWS, describe
from ..errors import ConfigError, ErrorCode, EventError
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
        raise ConfigError(
            f"{describe('max_seq_len')} is {seq_len}, longer than the model accepts "
            f"({model_max_length} tokens)"
        )
    if stride > seq_len:
        raise ConfigError(
            f"{describe('doc_stride')} is {stride}, larger than {describe('max_seq_len')} "
            f"({seq_len})"
        )
    return seq_len, stride


class WindowTokenizer:
    """Makes a pair's windows exactly as tokenizers' truncation with a stride and overflowing
    windows does, from one encoding of the whole pair.

    tokenizers would make an Encoding per window, each with every token's text, and the first
    holding all the others, which Python then copies once more: about 100 kB a window at the
    peak and 1 ms of Python each. A question that leaves the context little more than the
    stride advances each window by a few tokens, so a valid event made about as many windows as
    its context has tokens (20,000 for 100,000 characters) and took gigabytes. Here the pair is
    encoded once, untruncated, and each window is the prefix before the context, a slice of the
    context and the suffix after it, as tokenizers lays them out (`_parts`); a question whose
    windows would number more than `max_windows` is refused before any is made.
    """

    def __init__(
        self,
        tokenizer_file: Path,
        info: TokenizerInfo,
        max_seq_len: int | None = None,
        doc_stride: int | None = None,
        max_windows: int = DEFAULT_MAX_WINDOWS,
    ) -> None:
        self.info = info
        self.max_seq_len, self.doc_stride = window_geometry(
            info.model_max_length, max_seq_len, doc_stride
        )
        self.max_windows = max_windows
        self.question_first = info.padding_side == "right"
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._pair_special_tokens = self._tokenizer.num_special_tokens_to_add(is_pair=True)

    @property
    def context_sequence(self) -> int:
        """The context's sequence index in the pair: the second when the question comes first."""
        return 1 if self.question_first else 0

    def encode(self, question: str, context: str) -> EncodedQuestion:
        check_texts(question, context)
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
                check_texts(question, context)
                valid.append(index)
            except EventError as error:
                results[index] = error
        try:
            encodings = self._tokenizer.encode_batch([self._ordered(*pairs[i]) for i in valid])
        except Exception:
            # One pair broke the batch call; encode one by one so only that pair fails.
            encodings = None
        for position, index in enumerate(valid):
            try:
                if encodings is None:
                    results[index] = self.encode(*pairs[index])
                else:
                    results[index] = self._windows(*pairs[index], encodings[position])
            except EventError as error:
                results[index] = error
        return [result for result in results if result is not None]

    def _ordered(self, question: str, context: str) -> tuple[str, str]:
        return (question, context) if self.question_first else (context, question)

    def _windows(self, question: str, context: str, encoding: Encoding) -> EncodedQuestion:
        whole = Window(
            input_ids=np.array(encoding.ids, dtype=np.int32),
            type_ids=np.array(encoding.type_ids, dtype=np.int8),
            candidates=np.empty(0, dtype=bool),
            offsets=offsets_array(encoding.offsets),
            word_ids=optional_ids(encoding.word_ids, np.int32),
            sequence_ids=optional_ids(encoding.sequence_ids, np.int8),
        )
        sequence = self.context_sequence
        in_context = np.flatnonzero(whole.sequence_ids == sequence)
        # The context's tokens are contiguous: tokenizers lays a pair out as specials, one
        # sequence, specials, the other, specials.
        first = int(in_context[0]) if len(in_context) else len(whole)
        last = int(in_context[-1]) + 1 if len(in_context) else first
        context_tokens = last - first
        question_tokens = len(whole) - context_tokens - self._pair_special_tokens
        if len(whole) <= self.max_seq_len:
            return EncodedQuestion(question, context, [self._finish(whole)], sequence)
        room = self.max_seq_len - question_tokens - self._pair_special_tokens
        if room <= self.doc_stride:
            # tokenizers refuses (room 0 or less) or panics here, and the reference fails too.
            raise EventError(
                ErrorCode.QUESTION_TOO_LONG,
                f"the question takes {question_tokens} of the {self.max_seq_len} tokens of a "
                f"window, leaving {max(room, 0)} for the context, not more than the stride of "
                f"{self.doc_stride}; shorten the question or raise max_seq_len",
            )
        count = _window_count(context_tokens, room, self.doc_stride)
        if count > self.max_windows:
            raise EventError(
                ErrorCode.TOO_MANY_WINDOWS,
                f"the context's {context_tokens} tokens would make {count} windows, more "
                f"than the {self.max_windows} a question may make (--max-windows): the question "
                f"takes {question_tokens} tokens, so each {self.max_seq_len}-token window holds "
                f"{room} of the context and moves on by {room - self.doc_stride} past the "
                f"stride of {self.doc_stride}; shorten the question or the context",
            )
        windows = [
            self._finish(_spliced(whole, first, last, first + start, first + stop))
            for start, stop in _parts(context_tokens, room, self.doc_stride)
        ]
        return EncodedQuestion(question, context, windows, sequence)

    def _finish(self, window: Window) -> Window:
        """`window` with the positions that may hold an answer."""
        if self.question_first:
            candidates = window.sequence_ids == self.context_sequence
        else:
            # The reference masks nothing when the context comes first.
            candidates = np.ones(len(window), dtype=bool)
        if self.info.cls_token_id is not None:
            candidates |= window.input_ids == self.info.cls_token_id
        return replace(window, candidates=candidates)

    def _tokenization_error(self, error: BaseException) -> EventError:
        return EventError(
            ErrorCode.TOKENIZATION_FAILED, f"the tokenizer rejected the input: {error}"
        )


def _parts(tokens: int, room: int, stride: int) -> list[tuple[int, int]]:
    """The (start, stop) token ranges of a sequence's windows, as tokenizers' `Encoding::truncate`
    makes them (direction right): `room` tokens each, the next starting `room - stride` further
    on, until one reaches the end. `tokens` is above `room`, and `room` above `stride`."""
    step = room - stride
    return [
        (start, min(start + room, tokens))
        for start in range(0, _window_count(tokens, room, stride) * step, step)
    ]


def _window_count(tokens: int, room: int, stride: int) -> int:
    """How many parts `_parts` makes: one, then one per `room - stride` tokens left to cover."""
    step = room - stride
    return 1 + max(0, -(-(tokens - room) // step))


def _spliced(whole: Window, first: int, last: int, start: int, stop: int) -> Window:
    """`whole` with its tokens first..last replaced by start..stop of them: one window of a pair
    whose context spans first..last."""

    def splice(values: np.ndarray) -> np.ndarray:
        return np.concatenate([values[:first], values[start:stop], values[last:]])

    return Window(
        input_ids=splice(whole.input_ids),
        type_ids=splice(whole.type_ids),
        candidates=whole.candidates,
        offsets=splice(whole.offsets),
        word_ids=splice(whole.word_ids),
        sequence_ids=splice(whole.sequence_ids),
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
