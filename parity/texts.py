"""Seeded question/context pairs in several scripts, for tests that compare answers."""

from __future__ import annotations

import random

WORDS = (
    "the company acquired a small startup in march for forty million dollars after long talks "
    "river bank opened near old town hall where people gathered to watch boats and trains "
    "scientists measured temperature pressure and wind speed during the storm season of 1998 "
    "café naïve résumé Zürich São Paulo Ångström façade jalapeño über straße crème brûlée "
    "東京 北京大学 日本語の文章 中文 テスト 서울 "
    "🍕 😀 👍🏽 🇫🇷 🚀 ❤️ "
    "Acme Corp. Widget-Inc. $5.2 3.14 2024-01-05 e-mail O'Brien (see below) 50% #1"
).split()

QUESTION_OPENERS = ("Who", "What", "When", "Where", "How much", "Which company", "Why")


def sentence(rng: random.Random, size: int) -> str:
    words = [rng.choice(WORDS) for _ in range(size)]
    return " ".join(words).capitalize() + rng.choice([".", "!", "?", ";", "。"])


def context(rng: random.Random, words: int) -> str:
    parts: list[str] = []
    while sum(len(part.split()) for part in parts) < words:
        parts.append(sentence(rng, rng.randint(4, 14)))
    # Irregular whitespace is part of real input and exercises character offsets.
    return rng.choice([" ", "  ", "\n", " \t "]).join(parts)


def question(rng: random.Random) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
    return f"{rng.choice(QUESTION_OPENERS)} {words}?"


def pairs(seed: int, count: int) -> list[tuple[str, str]]:
    """Contexts from a few words up to several windows long."""
    rng = random.Random(seed)
    sizes = (3, 12, 40, 120, 400, 900)
    return [(question(rng), context(rng, rng.choice(sizes))) for _ in range(count)]
