"""Window logits to answers, with the reference pipeline's arithmetic.

Per window: logits outside the candidate positions are set to -10000 before a float32 softmax, the
null score is p_start[0] * p_end[0], position 0 is then zeroed, and the best spans with
0 <= end - start < max_answer_len are taken by the product of their start and end probabilities.
Across windows: spans become character ranges (widened to whole words when asked), answers whose
texts match case-insensitively are merged by adding their scores, the null answer joins with the
lowest null score of all windows, and the list is sorted by score, stable, and cut to top_k.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .types import QAOptions, QAResult, Span
from .windows import EncodedQuestion, Window

MASKED_LOGIT = np.float32(-10000.0)


@dataclass(frozen=True, slots=True)
class WindowLogits:
    start: np.ndarray
    end: np.ndarray


@dataclass(frozen=True, slots=True)
class TokenSpan:
    start: int
    end: int
    score: float


def probabilities(logits: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    masked = np.where(candidates, logits.astype(np.float32, copy=False), MASKED_LOGIT)
    exponent = np.exp(masked - masked.max())
    return exponent / exponent.sum()


def best_token_spans(
    p_start: np.ndarray,
    p_end: np.ndarray,
    candidates: np.ndarray,
    count: int,
    max_answer_len: int,
) -> list[TokenSpan]:
    """The `count` best spans of candidate tokens with 0 <= end - start < max_answer_len.

    Only the band of allowed widths is scored, which is what makes this cheap. When fewer than
    `count` spans score above zero, zero-score spans enter the reference's list too, chosen by the
    order in which numpy partitions the full score matrix; `reference_spans` replays that.
    """
    length = len(p_start)
    ends = np.arange(length)[:, None] + np.arange(max_answer_len)[None, :]
    inside = ends < length
    ends = np.minimum(ends, length - 1)
    allowed = inside & candidates[:, None] & candidates[ends]
    scores = np.where(allowed, p_start[:, None] * p_end[ends], np.float32(0.0)).ravel()
    positive = int(np.count_nonzero(scores))
    if positive < count:
        return reference_spans(p_start, p_end, candidates, count, max_answer_len)
    chosen = (
        np.argpartition(-scores, count - 1)[:count] if count < scores.size else np.arange(count)
    )
    chosen = chosen[np.argsort(-scores[chosen], kind="stable")]
    starts, widths = np.divmod(chosen, max_answer_len)
    return [
        TokenSpan(int(start), int(start + width), float(scores[index]))
        for start, width, index in zip(starts, widths, chosen, strict=True)
    ]


def reference_spans(
    p_start: np.ndarray,
    p_end: np.ndarray,
    candidates: np.ndarray,
    count: int,
    max_answer_len: int,
) -> list[TokenSpan]:
    """The reference's own selection over the full start x end matrix, for short contexts.

    It ranks every cell (zeros included), keeps the top `count`, then drops spans whose start or
    end is not a candidate position; position 0 always counts as one, an artefact of how it tests
    membership, so it can return empty or reversed spans with score zero.
    """
    matrix = np.tril(np.triu(np.outer(p_start, p_end)), max_answer_len - 1)
    flat = matrix.ravel()
    if count == 1:
        order = np.array([np.argmax(flat)])
    elif flat.size < count:
        order = np.argsort(-flat)
    else:
        order = np.argpartition(-flat, count)[:count]
        order = order[np.argsort(-flat[order])]
    starts, ends = np.unravel_index(order, matrix.shape)
    positions = np.flatnonzero(candidates)
    if positions.size:
        positions = np.union1d(positions, [0])
    keep = np.isin(starts, positions) & np.isin(ends, positions)
    return [
        TokenSpan(int(start), int(end), float(matrix[start, end]))
        for start, end in zip(starts[keep], ends[keep], strict=True)
    ]


def char_ranges(
    window: Window, starts: np.ndarray, ends: np.ndarray, sequence: int, align_to_words: bool
) -> np.ndarray:
    """The character range, shape (k, 2), of each span of tokens `starts[i]..ends[i]` (inclusive).

    When aligning to words, a span runs from the first character of its start token's word to the
    last of its end token's word, both words looked up in `sequence` (the context).
    """
    ranges = np.stack([window.offsets[starts, 0], window.offsets[ends, 1]], axis=1)
    if align_to_words:
        words = tokens_to_words(
            window.word_ids, window.sequence_ids, np.concatenate([starts, ends])
        )
        chars, found = words_to_chars(
            window.word_ids, window.sequence_ids, window.offsets, words, sequence
        )
        count = len(starts)
        # Tokens without words (special tokens, some tokenizers) keep to the token offsets.
        aligned = found[:count] & found[count:]
        ranges[aligned, 0] = chars[:count][aligned, 0]
        ranges[aligned, 1] = chars[count:][aligned, 1]
    return ranges


def tokens_to_words(
    word_ids: np.ndarray, sequence_ids: np.ndarray, tokens: np.ndarray
) -> np.ndarray:
    """tokenizers' `Encoding.token_to_word` for each of `tokens`, -1 for None.

    A token outside every sequence (a special token) has no word, whatever its word index.
    """
    return np.where(sequence_ids[tokens] >= 0, word_ids[tokens], -1)


def words_to_chars(
    word_ids: np.ndarray,
    sequence_ids: np.ndarray,
    offsets: np.ndarray,
    words: np.ndarray,
    sequence: int,
) -> tuple[np.ndarray, np.ndarray]:
    """tokenizers' `Encoding.word_to_chars(word, sequence)` for each of `words`: their character
    ranges, shape (k, 2), and whether each was found (where not, its range is meaningless).

    tokenizers scans the sequence's tokens in order and stops at the first token of a larger
    word, passing over tokens without one; the range runs from the first token of `word` it saw
    to the last. So it sees exactly the tokens whose word is the largest up to them. A sequence
    is the tokens with its index in `sequence_ids`: exact whenever every sequence of the encoding
    has its range, as both of a pair do after any tokenizers post-processor (the range of a
    sequence with none of its own would be the whole encoding).
    """
    members = np.flatnonzero(sequence_ids == sequence)
    begin, stop = (members[0], members[-1] + 1) if members.size else (0, 0)
    in_range = word_ids[begin:stop]
    seen = (in_range >= 0) & (in_range == np.maximum.accumulate(in_range))
    seen_tokens = begin + np.flatnonzero(seen)
    if seen_tokens.size == 0:
        return np.zeros((len(words), 2), dtype=offsets.dtype), np.zeros(len(words), dtype=bool)
    # Non-decreasing, since each seen word is the largest so far.
    seen_words = word_ids[seen_tokens]
    firsts = np.searchsorted(seen_words, words, side="left")
    ends = np.searchsorted(seen_words, words, side="right")
    found = ends > firsts
    # Clipped so that words not found index some seen token too; their ranges are not used.
    first_tokens = seen_tokens[np.minimum(firsts, len(seen_tokens) - 1)]
    last_tokens = seen_tokens[np.maximum(ends - 1, 0)]
    chars = np.stack([offsets[first_tokens, 0], offsets[last_tokens, 1]], axis=1)
    return chars, found


@dataclass(slots=True)
class _Candidate:
    """A candidate answer kept by its character range, not its text: the texts of all the
    windows' spans together grow with windows x spans x span width, which `[UNK]` tokens of
    long words can make hundreds of megabytes for one question."""

    score: float
    start: int
    end: int


class _Merged:
    """Candidate answers, one per text compared case-insensitively, in order of first occurrence.

    Texts are matched through their hash, and compared in full only on a hash match, so no text
    outlives the span being added.
    """

    def __init__(self, context: str) -> None:
        self._context = context
        self.candidates: list[_Candidate] = []
        self._by_hash: dict[int, list[_Candidate]] = {}

    def add(self, score: float, start: int, end: int) -> None:
        key = self._context[start:end].lower()
        same_hash = self._by_hash.setdefault(hash(key), [])
        for candidate in same_hash:
            if self._context[candidate.start : candidate.end].lower() == key:
                # Same text, any case: one answer with the summed score, first position kept.
                candidate.score += score
                return
        candidate = _Candidate(score, start, end)
        same_hash.append(candidate)
        self.candidates.append(candidate)

    def span(self, candidate: _Candidate) -> Span:
        return Span(
            self._context[candidate.start : candidate.end],
            candidate.score,
            candidate.start,
            candidate.end,
        )


def decode(
    encoded: EncodedQuestion, logits: Sequence[WindowLogits], options: QAOptions
) -> QAResult:
    if len(logits) != len(encoded.windows):
        raise ValueError(f"{len(encoded.windows)} windows but {len(logits)} logits")
    null_score = float("inf")
    merged = _Merged(encoded.context)
    for window_null, ranged in ranged_window_spans(encoded, logits, options):
        null_score = min(null_score, window_null)
        for score, start, end in ranged:
            merged.add(score, start, end)
    ranked = merged.candidates
    if options.ranks_null:
        ranked.append(_Candidate(null_score, 0, 0))
    ranked.sort(key=lambda candidate: candidate.score, reverse=True)
    answers = [merged.span(candidate) for candidate in ranked[: options.top_k]]
    # The best span with text (an empty or reversed range, or the null answer, has none); spans
    # are made one at a time, so only the texts looked at are cut from the context.
    best = next((span for span in map(merged.span, ranked) if span.answer), None)
    return choose(answers, best, null_score, options)


def ranged_window_spans(
    encoded: EncodedQuestion, logits: Sequence[WindowLogits], options: QAOptions
) -> Iterator[tuple[float, list[tuple[float, int, int]]]]:
    """Per window, in order, what the reference merges across windows: the window's null score
    and its best spans as (score, start, end), a character range of the context each."""
    # The reference over-fetches when aligning to words: aligned spans may merge.
    per_window = options.top_k * 2 + 10 if options.align_to_words else options.top_k
    for window, window_logits in zip(encoded.windows, logits, strict=True):
        spans, null_score = window_spans(window, window_logits, per_window, options)
        ranges = char_ranges(
            window,
            np.array([span.start for span in spans], dtype=np.intp),
            np.array([span.end for span in spans], dtype=np.intp),
            encoded.context_sequence,
            options.align_to_words,
        )
        pairs = zip(spans, ranges.tolist(), strict=True)
        yield null_score, [(span.score, start, end) for span, (start, end) in pairs]


def window_spans(
    window: Window, logits: WindowLogits, count: int, options: QAOptions
) -> tuple[list[TokenSpan], float]:
    p_start = probabilities(logits.start, window.candidates)
    p_end = probabilities(logits.end, window.candidates)
    null_score = float(p_start[0] * p_end[0])
    p_start[0] = p_end[0] = 0.0
    spans = best_token_spans(p_start, p_end, window.candidates, count, options.max_answer_len)
    return spans, null_score


def choose(
    answers: list[Span], best_span: Span | None, null_score: float, options: QAOptions
) -> QAResult:
    """`best_span` is the best of all the candidates with text, in or beyond `answers`."""
    best = answers[0] if answers else Span("", 0.0, 0, 0)
    if options.null_threshold is not None:
        if best_span is None or best_span.score - null_score <= options.null_threshold:
            best = Span("", null_score, 0, 0)
        else:
            best = best_span
    return QAResult(
        answer=best.answer,
        score=best.score,
        start=best.start,
        end=best.end,
        is_impossible=not best.answer,
        null_score=null_score,
        answers=answers,
        best_span=best_span,
    )
