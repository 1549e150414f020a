"""Merging the windows' candidate answers: the same answers as merging by text, without keeping
the texts, whose total grows with windows x spans x span width."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.qa.decode import WindowLogits, choose, decode, ranged_window_spans
from worker.qa.types import QAOptions, QAResult, Span
from worker.qa.windows import EncodedQuestion, Window

QUESTION_TOKENS = 3


def words_question(words: list[str], window_tokens: int, stride: int) -> EncodedQuestion:
    """A question over a context of `words` joined by spaces, one token a word, cut into windows
    of `window_tokens` context tokens that overlap by `stride`, as a tokenizer would lay them out:
    [CLS] question [SEP] context [SEP]."""
    context = " ".join(words)
    starts = np.cumsum([0] + [len(word) + 1 for word in words[:-1]])
    spans = np.stack([starts, starts + [len(word) for word in words]], axis=1)
    windows = []
    first = 0
    while True:
        last = min(first + window_tokens, len(words))
        count = last - first
        length = 1 + QUESTION_TOKENS + 1 + count + 1
        sequence_ids = np.full(length, -1, dtype=np.int8)
        sequence_ids[1 : 1 + QUESTION_TOKENS] = 0
        sequence_ids[QUESTION_TOKENS + 2 : QUESTION_TOKENS + 2 + count] = 1
        word_ids = np.full(length, -1, dtype=np.int32)
        word_ids[1 : 1 + QUESTION_TOKENS] = np.arange(QUESTION_TOKENS)
        word_ids[QUESTION_TOKENS + 2 : QUESTION_TOKENS + 2 + count] = np.arange(first, last)
        offsets = np.zeros((length, 2), dtype=np.int32)
        offsets[QUESTION_TOKENS + 2 : QUESTION_TOKENS + 2 + count] = spans[first:last]
        candidates = sequence_ids == 1
        candidates[0] = True
        windows.append(
            Window(
                input_ids=np.arange(length, dtype=np.int64),
                type_ids=(sequence_ids == 1).astype(np.int64),
                candidates=candidates,
                offsets=offsets,
                word_ids=word_ids,
                sequence_ids=sequence_ids,
            )
        )
        if last == len(words):
            break
        first = last - stride
    return EncodedQuestion("q", context, windows, context_sequence=1)


def random_logits(encoded: EncodedQuestion, seed: int) -> list[WindowLogits]:
    rng = np.random.default_rng(seed)
    return [
        WindowLogits(
            rng.normal(size=len(w)).astype(np.float32), rng.normal(size=len(w)).astype(np.float32)
        )
        for w in encoded.windows
    ]


def merged_by_text(
    encoded: EncodedQuestion, logits: list[WindowLogits], options: QAOptions
) -> QAResult:
    """The merge as the reference pipeline states it: a list of answers with their texts, one per
    text compared case-insensitively, scores added, the first occurrence's range kept."""
    null_score = float("inf")
    ranked: list[Span] = []
    for window_null, ranged in ranged_window_spans(encoded, logits, options):
        null_score = min(null_score, window_null)
        for score, start, end in ranged:
            text = encoded.context[start:end]
            same = [i for i, kept in enumerate(ranked) if kept.answer.lower() == text.lower()]
            if same:
                ranked[same[0]] = replace(ranked[same[0]], score=ranked[same[0]].score + score)
            else:
                ranked.append(Span(text, score, start, end))
    if options.ranks_null:
        ranked.append(Span("", null_score, 0, 0))
    ranked.sort(key=lambda span: span.score, reverse=True)
    best_span = next((span for span in ranked if span.answer), None)
    return choose(ranked[: options.top_k], best_span, null_score, options)


# Few distinct words, in any case ("İ" lowers to two characters), so that answers in different
# windows share their texts.
WORDS = st.lists(
    st.sampled_from(["Paris", "paris", "PARIS", "river", "Seine", "x", "İ"]),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(
    words=WORDS,
    window_tokens=st.integers(2, 8),
    seed=st.integers(0, 2**16),
    top_k=st.integers(1, 5),
    max_answer_len=st.integers(1, 6),
    impossible=st.booleans(),
    threshold=st.sampled_from([None, 0.0, 0.5]),
    align=st.booleans(),
)
def test_the_merge_equals_merging_by_text(
    words: list[str],
    window_tokens: int,
    seed: int,
    top_k: int,
    max_answer_len: int,
    impossible: bool,
    threshold: float | None,
    align: bool,
) -> None:
    encoded = words_question(words, window_tokens, stride=window_tokens // 2)
    logits = random_logits(encoded, seed)
    options = QAOptions(
        top_k=top_k,
        max_answer_len=max_answer_len,
        handle_impossible_answer=impossible,
        null_threshold=threshold,
        align_to_words=align,
    )
    assert decode(encoded, logits, options) == merged_by_text(encoded, logits, options)


def test_wide_answers_cost_no_more_memory_than_the_answers_returned() -> None:
    # Words of 301 characters, each one [UNK] token: a span of 64 tokens is 19 kB of text, and
    # 200 windows of 50 candidates each would keep about 190 MB of texts (4 bytes a character).
    rng = np.random.default_rng(3)
    letters = np.array(list("😀😃😄😁😆🙂🙃😉"))
    words = ["".join(rng.choice(letters, 301)) for _ in range(64 + 199)]
    encoded = words_question(words, window_tokens=64, stride=63)
    assert len(encoded.windows) == 200
    logits = random_logits(encoded, 1)
    options = QAOptions(top_k=20, max_answer_len=64)
    tracemalloc.start()
    try:
        result = decode(encoded, logits, options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    returned = sum(len(span.answer) for span in result.answers) * 4
    assert len(result.answers) == 20
    # What is returned, one span's text while it is compared, and the candidates' ranges.
    assert peak < returned + 8 * 1024 * 1024
