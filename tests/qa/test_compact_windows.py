"""Windows keep plain arrays, no tokenizer Encoding, and decode from them exactly as from one.

The reference here is the Encoding itself, made by `Tokenizer.encode` as windows were made before
they kept arrays, and read by decoding's former code: token words, word characters and the
character range of every span must come out the same, for both token orders and for encodings
whose words are out of order or missing. The windows' tokens are compared with those Encodings
too: tokenizing with `encode_batch`, which releases the GIL, makes the same windows.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from tokenizers import Encoding, Tokenizer

from parity import texts
from worker.errors import ConfigError, ErrorCode, EventError
from worker.model.manifest import TOKENIZER_NAME, Manifest
from worker.qa.decode import char_ranges, tokens_to_words, words_to_chars
from worker.qa.windows import (
    DEFAULT_MAX_WINDOWS,
    EncodedQuestion,
    Window,
    WindowTokenizer,
    offsets_array,
    optional_ids,
    window_geometry,
)

HYPOTHESIS = settings(
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Characters that move offsets around: accents precomposed and combining, ligatures and case
# mappings that change length, zero-width and wide spaces, control characters, CJK, Hangul,
# emoji with modifiers, ZWJ sequences and flags.
ODD_PIECES = (
    *"abcXYZ019 .,;:!?'\"()-/\\@#$%&*",
    *("é", "ß", "ø", "\u0131", "İ", "ﬁ", "e\u0301", "\u0301", "\u200b", "\u00a0", "\u3000"),
    *("\t", "\n", "\r\n", "\x00", "\ufeff", "東", "京", "語", "の", "한", "국"),
    *("🍕", "👍🏽", "👩\u200d💻", "🇫🇷", "❤️", "…", "\u2013"),
)
fragments = st.one_of(
    st.sampled_from(texts.WORDS),
    st.lists(st.sampled_from(ODD_PIECES), min_size=1, max_size=6).map("".join),
)
separators = st.sampled_from([" ", "  ", "\n", " \t ", "\u00a0", "\u3000", ""])


def joined(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    parts = st.lists(st.tuples(fragments, separators), min_size=min_size, max_size=max_size)
    return parts.map(lambda pairs: "".join(fragment + gap for fragment, gap in pairs))


# Short windows, so that short contexts make several of them.
SMALL_GEOMETRIES = ((24, 4), (32, 8), (48, 16))


class Tokenizers:
    """WindowTokenizers of one model folder, and Encodings made the way windows used to be."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.info = Manifest.read(folder).tokenizer
        self._windows: dict[tuple[bool, int | None, int | None], WindowTokenizer] = {}
        self._references: dict[tuple[bool, int, int], Tokenizer] = {}
        self.counter = Tokenizer.from_file(str(folder / TOKENIZER_NAME))
        self.counter.no_truncation()
        self.counter.no_padding()

    def windows(
        self, question_first: bool, max_seq_len: int | None = None, doc_stride: int | None = None
    ) -> WindowTokenizer:
        key = (question_first, max_seq_len, doc_stride)
        if key not in self._windows:
            # Left padding is what puts the context first.
            info = replace(self.info, padding_side="right" if question_first else "left")
            self._windows[key] = WindowTokenizer(
                self.folder / TOKENIZER_NAME, info, max_seq_len, doc_stride
            )
        return self._windows[key]

    def encodings(self, windows: WindowTokenizer, question: str, context: str) -> list[Encoding]:
        """The Encodings of the windows, by `Tokenizer.encode` as the windows were made before."""
        key = (windows.question_first, windows.max_seq_len, windows.doc_stride)
        if key not in self._references:
            tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER_NAME))
            tokenizer.no_padding()
            tokenizer.enable_truncation(
                max_length=windows.max_seq_len,
                stride=windows.doc_stride,
                strategy="only_second" if windows.question_first else "only_first",
                direction="right",
            )
            self._references[key] = tokenizer
        pair = (question, context) if windows.question_first else (context, question)
        encoding = self._references[key].encode(*pair)
        return [encoding, *encoding.overflowing]

    def leaves_room(self, windows: WindowTokenizer, question: str) -> bool:
        """Whether the question leaves the context more than the stride, as windowing needs."""
        question_tokens = len(self.counter.encode(question, add_special_tokens=False))
        specials = self.counter.num_special_tokens_to_add(is_pair=True)
        return windows.max_seq_len - question_tokens - specials > windows.doc_stride


@pytest.fixture(scope="module", params=["bert", "roberta"])
def tokenizers(request: pytest.FixtureRequest, export_factory: Callable[[str], Path]) -> Tokenizers:
    """WordPiece (BERT) and byte-level BPE (RoBERTa) tokenizers of exported model folders."""
    return Tokenizers(export_factory(request.param))


def encoding_char_range(
    encoding: Encoding, start: int, end: int, sequence: int, align_to_words: bool
) -> tuple[int, int]:
    """The character range of a span as decoding computed it when windows kept their Encoding."""
    if align_to_words:
        start_word = encoding.token_to_word(start)
        end_word = encoding.token_to_word(end)
        if start_word is not None and end_word is not None:
            start_chars = encoding.word_to_chars(start_word, sequence)
            end_chars = encoding.word_to_chars(end_word, sequence)
            if start_chars is not None and end_chars is not None:
                return start_chars[0], end_chars[1]
    return encoding.offsets[start][0], encoding.offsets[end][1]


def minus_one_for_none(values: Sequence[int | None]) -> list[int]:
    return [-1 if value is None else value for value in values]


def check_word_lookups(
    word_ids: np.ndarray, sequence_ids: np.ndarray, offsets: np.ndarray, encoding: Encoding
) -> None:
    """Every token's word and, in both sequences, every word's characters, as the Encoding has."""
    tokens = np.arange(len(encoding))
    expected_words = minus_one_for_none([encoding.token_to_word(int(t)) for t in tokens])
    assert tokens_to_words(word_ids, sequence_ids, tokens).tolist() == expected_words
    # Words past the last and the "no word" -1 are looked up too: they are never found.
    words = np.arange(-1, max(word_ids.max(initial=-1), 0) + 2)
    for sequence in (0, 1):
        chars, found = words_to_chars(word_ids, sequence_ids, offsets, words, sequence)
        expected = [encoding.word_to_chars(word, sequence) for word in words[1:].tolist()]
        assert not found[0]
        assert found[1:].tolist() == [chars is not None for chars in expected]
        assert [tuple(pair) for pair in chars[1:][found[1:]].tolist()] == [
            pair for pair in expected if pair is not None
        ]


def check_char_ranges(
    window: Window,
    encoding: Encoding,
    sequence: int,
    starts: np.ndarray,
    ends: np.ndarray,
) -> None:
    for align_to_words in (True, False):
        ranges = char_ranges(window, starts, ends, sequence, align_to_words)
        expected = [
            encoding_char_range(encoding, start, end, sequence, align_to_words)
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True)
        ]
        assert [tuple(pair) for pair in ranges.tolist()] == expected


def check_windows(
    tokenizers: Tokenizers,
    windows: WindowTokenizer,
    question: str,
    context: str,
    pairs: Callable[[int], tuple[np.ndarray, np.ndarray]],
) -> EncodedQuestion:
    """The windows of a pair against the Encodings they were made of; `pairs(n)` gives the
    (start, end) token pairs to compare character ranges for in a window of n tokens."""
    encoded = windows.encode(question, context)
    encodings = tokenizers.encodings(windows, question, context)
    assert len(encoded.windows) == len(encodings)
    cls_token_id = windows.info.cls_token_id
    for window, encoding in zip(encoded.windows, encodings, strict=True):
        assert not any(
            isinstance(getattr(window, field.name), Encoding) for field in fields(window)
        )
        assert window.input_ids.tolist() == encoding.ids
        assert window.type_ids.tolist() == encoding.type_ids
        assert window.offsets.tolist() == [list(pair) for pair in encoding.offsets]
        assert window.word_ids.tolist() == minus_one_for_none(encoding.word_ids)
        assert window.sequence_ids.tolist() == minus_one_for_none(encoding.sequence_ids)
        candidates = [
            not windows.question_first
            or sequence == encoded.context_sequence
            or token == cls_token_id
            for token, sequence in zip(encoding.ids, encoding.sequence_ids, strict=True)
        ]
        assert window.candidates.tolist() == candidates
        check_word_lookups(window.word_ids, window.sequence_ids, window.offsets, encoding)
        check_char_ranges(window, encoding, encoded.context_sequence, *pairs(len(window)))
    return encoded


def every_pair(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (start, end) pair, reversed ones too: the reference's own span choice can give them."""
    starts, ends = np.divmod(np.arange(length * length), length)
    return starts, ends


def same_arrays(first: EncodedQuestion, second: EncodedQuestion) -> bool:
    return len(first.windows) == len(second.windows) and all(
        all(
            np.array_equal(getattr(a, field.name), getattr(b, field.name))
            for field in fields(Window)
        )
        for a, b in zip(first.windows, second.windows, strict=True)
    )


@settings(HYPOTHESIS, max_examples=60)
@given(
    question=joined(1, 3),
    context=st.one_of(joined(1, 10), joined(20, 80)),
    geometry=st.sampled_from(SMALL_GEOMETRIES),
    question_first=st.booleans(),
)
def test_windows_decode_every_span_as_their_encodings_did(
    tokenizers: Tokenizers,
    question: str,
    context: str,
    geometry: tuple[int, int],
    question_first: bool,
) -> None:
    windows = tokenizers.windows(question_first, *geometry)
    # Otherwise refused before tokenizing (question first) or a tokenizers panic.
    assume(tokenizers.leaves_room(windows, question))
    encoded = check_windows(tokenizers, windows, question, context, every_pair)
    count = len(encoded.windows)
    event(f"windows: {min(count, 4)}{'+' if count >= 4 else ''}")
    (batched,) = windows.encode_many([(question, context)])
    assert isinstance(batched, EncodedQuestion)
    assert same_arrays(batched, encoded)
    check_window_limit(windows, question, context, count)


def check_window_limit(windows: WindowTokenizer, question: str, context: str, count: int) -> None:
    """At the limit and above it the pair's `count` windows are made; one below, refused."""
    try:
        for limit in (count + 1, count):
            windows.max_windows = limit
            assert len(windows.encode(question, context).windows) == count
        if count > 1:
            windows.max_windows = count - 1
            with pytest.raises(EventError) as refused:
                windows.encode(question, context)
            assert refused.value.code == ErrorCode.TOO_MANY_WINDOWS
            assert f"would make {count} windows, more than the {count - 1}" in str(refused.value)
            (batched,) = windows.encode_many([(question, context)])
            assert isinstance(batched, EventError)
            assert batched.code == ErrorCode.TOO_MANY_WINDOWS
    finally:
        windows.max_windows = DEFAULT_MAX_WINDOWS


@settings(HYPOTHESIS, max_examples=6)
@given(seed=st.integers(0, 2**32 - 1), words=st.integers(300, 1500), odd=joined(5, 40))
def test_long_contexts_at_the_reference_geometry_decode_as_their_encodings_did(
    tokenizers: Tokenizers, seed: int, words: int, odd: str
) -> None:
    rng = random.Random(seed)
    text = texts.context(rng, words)
    cut = rng.randrange(len(text))
    context = text[:cut] + odd + text[cut:]
    windows = tokenizers.windows(question_first=rng.random() < 0.5)
    sampler = np.random.default_rng(seed)

    def sampled_pairs(length: int) -> tuple[np.ndarray, np.ndarray]:
        diagonal = np.arange(length)
        starts = np.concatenate([diagonal, sampler.integers(0, length, 1000)])
        ends = np.concatenate([diagonal, sampler.integers(0, length, 1000)])
        return starts, ends

    encoded = check_windows(tokenizers, windows, texts.question(rng), context, sampled_pairs)
    assert len(encoded.windows) > 1


def test_a_context_without_tokens_finds_no_words(tokenizers: Tokenizers) -> None:
    # WordPiece makes no token of whitespace: the context's sequence is there, and empty.
    for question_first in (True, False):
        windows = tokenizers.windows(question_first)
        check_windows(tokenizers, windows, "Who?", " \t\u3000 ", every_pair)


def test_a_window_keeps_arrays_only(tokenizers: Tokenizers) -> None:
    windows = tokenizers.windows(question_first=True)
    encoded = windows.encode("Who acquired it?", texts.context(random.Random(4), 2000))
    assert len(encoded.windows) > 1
    dtypes = {
        "input_ids": np.int32,
        "type_ids": np.int8,
        "candidates": np.bool_,
        "offsets": np.int32,
        "word_ids": np.int32,
        "sequence_ids": np.int8,
    }
    for window in encoded.windows:
        # Slots only: nothing can hang on a window beyond its fields.
        assert not hasattr(window, "__dict__")
        assert {field.name: getattr(window, field.name).dtype for field in fields(window)} == dtypes
        assert window.offsets.shape == (len(window), 2)


# Encodings assembled from pieces: word ids that go back (pieces merged one after another),
# tokens without words inside a sequence (padding), empty sequences, and either sequence first.
@pytest.fixture(scope="module")
def bare_tokenizer(export_factory: Callable[[str], Path]) -> Tokenizer:
    """BERT's tokenizer without its post-processor: no special tokens, no sequence ranges."""
    tokenizer = Tokenizer.from_file(str(export_factory("bert") / TOKENIZER_NAME))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.post_processor = None
    return tokenizer


pieces = st.lists(
    st.tuples(joined(0, 3), st.integers(0, 2), st.integers(0, 2)), min_size=0, max_size=4
)


def assembled(
    tokenizer: Tokenizer, parts: list[tuple[str, int, int]], grow: bool, sequence: int
) -> Encoding:
    encodings = []
    for text, pad_left, pad_right in parts:
        encoding = tokenizer.encode(text)
        encoding.pad(len(encoding) + pad_right, direction="right")
        encoding.pad(len(encoding) + pad_left, direction="left")
        encodings.append(encoding)
    merged = Encoding.merge(encodings, growing_offsets=grow)
    merged.set_sequence_id(sequence)
    return merged


def outside(tokenizer: Tokenizer, length: int) -> Encoding:
    """Tokens in no sequence, as special tokens are."""
    encoding = tokenizer.encode("")
    encoding.pad(length)
    return encoding


def window_of(encoding: Encoding) -> Window:
    ids = np.array(encoding.ids, dtype=np.int32)
    return Window(
        input_ids=ids,
        type_ids=np.zeros(len(ids), dtype=np.int8),
        candidates=np.ones(len(ids), dtype=bool),
        offsets=offsets_array(encoding.offsets),
        word_ids=optional_ids(encoding.word_ids, np.int32),
        sequence_ids=optional_ids(encoding.sequence_ids, np.int8),
    )


@settings(HYPOTHESIS, max_examples=150)
@given(
    first=pieces,
    second=pieces,
    grow=st.booleans(),
    swap=st.booleans(),
    gaps=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
)
def test_word_lookups_follow_tokenizers_where_words_go_back_or_are_missing(
    bare_tokenizer: Tokenizer,
    first: list[tuple[str, int, int]],
    second: list[tuple[str, int, int]],
    grow: bool,
    swap: bool,
    gaps: tuple[int, int, int],
) -> None:
    sequences = [
        assembled(bare_tokenizer, first, grow, 0),
        assembled(bare_tokenizer, second, grow, 1),
    ]
    if swap:
        sequences.reverse()
    before, between, after = (outside(bare_tokenizer, gap) for gap in gaps)
    encoding = Encoding.merge(
        [before, sequences[0], between, sequences[1], after], growing_offsets=False
    )
    assert encoding.n_sequences == 2
    window = window_of(encoding)
    check_word_lookups(window.word_ids, window.sequence_ids, window.offsets, encoding)
    if len(encoding):
        for sequence in (0, 1):
            check_char_ranges(window, encoding, sequence, *every_pair(len(encoding)))


def test_a_word_seen_again_after_a_later_word_is_not_looked_at(bare_tokenizer: Tokenizer) -> None:
    # Words 0, 1, 1, 1, 0: tokenizers stops at word 1, so word 0 is the first "river" alone.
    question = assembled(bare_tokenizer, [("who", 0, 0)], True, 0)
    context = assembled(bare_tokenizer, [("river bank", 0, 0), ("river", 0, 0)], True, 1)
    encoding = Encoding.merge(
        [question, outside(bare_tokenizer, 1), context], growing_offsets=False
    )
    window = window_of(encoding)
    assert encoding.word_ids == [0, None, 0, 1, 1, 1, 0]
    assert encoding.word_to_chars(0, 1) == (0, 5)
    chars, found = words_to_chars(
        window.word_ids, window.sequence_ids, window.offsets, np.array([0, 1]), 1
    )
    assert found.tolist() == [True, True]
    assert chars.tolist() == [[0, 5], [6, 10]]
    # The last token's own word is that first "river": its span starts there.
    assert char_ranges(window, np.array([6]), np.array([6]), 1, True).tolist() == [[0, 5]]


def test_a_long_question_over_a_long_context_is_refused_before_its_windows_are_made(
    tokenizers: Tokenizers,
) -> None:
    """A question leaving the context 2 tokens past the stride a window: about one window per
    context token, refused at the reference geometry; the limit raised, they are tokenizers'."""
    windows = tokenizers.windows(question_first=True)
    specials = tokenizers.counter.num_special_tokens_to_add(is_pair=True)
    wanted = windows.max_seq_len - specials - windows.doc_stride - 2

    def tokens(words: int) -> int:
        text = " ".join(["river"] * words)
        return len(tokenizers.counter.encode(text, add_special_tokens=False))

    # BPE splits the first word, which has no space before it, in two.
    words = next(n for n in range(wanted, 0, -1) if tokens(n) <= wanted)
    assert tokens(words) == wanted
    question = " ".join(["river"] * words)
    context = texts.context(random.Random(7), 3000)
    with pytest.raises(EventError) as refused:
        windows.encode(question, context)
    assert refused.value.code == ErrorCode.TOO_MANY_WINDOWS
    assert "moves on by 2 past the stride" in str(refused.value)
    expected = tokenizers.encodings(windows, question, context)
    assert len(expected) > DEFAULT_MAX_WINDOWS
    windows.max_windows = len(expected)
    try:
        encoded = windows.encode(question, context)
    finally:
        windows.max_windows = DEFAULT_MAX_WINDOWS
    assert [window.input_ids.tolist() for window in encoded.windows] == [e.ids for e in expected]


@given(model_max=st.integers(8, 4096), data=st.data())
def test_the_window_geometry_takes_up_to_the_models_length_and_a_stride_up_to_the_window(
    model_max: int, data: st.DataObject
) -> None:
    seq_len = data.draw(st.integers(8, model_max + 8))
    stride = data.draw(st.integers(0, seq_len + 8))
    if seq_len > model_max:
        with pytest.raises(ConfigError, match=r"--max-seq-len .* longer than the model accepts"):
            window_geometry(model_max, seq_len, stride)
    elif stride > seq_len:
        with pytest.raises(ConfigError, match=r"--doc-stride .* larger than --max-seq-len"):
            window_geometry(model_max, seq_len, stride)
    else:
        assert window_geometry(model_max, seq_len, stride) == (seq_len, stride)
