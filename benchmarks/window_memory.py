"""What a question in flight holds: the resident memory its windows retain once tokenized.

    python -m benchmarks.window_memory --model DIR [--questions 20] [--chars 100000] \
        [--question-tokens N] [--max-windows N]

Encodes `--questions` questions over contexts of `--chars` characters of generated prose
(`parity.texts`) and keeps them, as the batcher does between tokenizing and decoding; prints the
resident memory retained per question and per window (RSS after `gc` and `malloc_trim`, so the
tokenizer's Rust allocations count too), the most resident memory tokenizing one took above
what the questions before it held (the kernel's high-water mark, reset before each), the seconds
tokenizing took, and the windows and tokens per question. A window's logits (8 bytes a token,
kept until decoding) come on top. `--question-tokens N` asks a question of N tokens instead,
which leaves each window less of the context beyond the stride, so more windows; the question
limit is `--max-windows` (default the worker's).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import random
import time
from pathlib import Path

from tokenizers import Tokenizer

from parity import texts
from worker.config import DEFAULT_MAX_WINDOWS
from worker.model.manifest import TOKENIZER_NAME, Manifest
from worker.qa.windows import WindowTokenizer

QUESTION = "Which company acquired the startup?"


def resident_bytes(libc: ctypes.CDLL) -> int:
    gc.collect()
    libc.malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def high_water_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def reset_high_water() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def question_of(folder: Path, tokens: int | None) -> str:
    """QUESTION, or repeated words making a question of exactly `tokens` tokens."""
    if tokens is None:
        return QUESTION
    counter = Tokenizer.from_file(str(folder / TOKENIZER_NAME))
    counter.no_truncation()
    for words in range(tokens, 0, -1):
        question = " ".join(["river"] * words)
        if len(counter.encode(question, add_special_tokens=False)) == tokens:
            return question
    raise SystemExit(f"no question of {tokens} tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--chars", type=int, default=100_000)
    parser.add_argument("--question-tokens", type=int)
    parser.add_argument("--max-windows", type=int, default=DEFAULT_MAX_WINDOWS)
    args = parser.parse_args()
    libc = ctypes.CDLL("libc.so.6")
    tokenizer = WindowTokenizer(
        args.model / TOKENIZER_NAME,
        Manifest.read(args.model).tokenizer,
        max_windows=args.max_windows,
    )
    question = question_of(args.model, args.question_tokens)
    rng = random.Random(1)
    contexts = [texts.context(rng, args.chars // 4)[: args.chars] for _ in range(args.questions)]
    # The first encode grows the allocator's arenas; it is not what a question holds.
    tokenizer.encode(question, contexts[0])
    before = resident_bytes(libc)
    held = []
    peak = 0
    seconds = 0.0
    for context in contexts:
        holding = resident_bytes(libc)
        reset_high_water()
        began = time.perf_counter()
        held.append(tokenizer.encode(question, context))
        seconds = max(seconds, time.perf_counter() - began)
        peak = max(peak, high_water_bytes() - holding)
    retained = resident_bytes(libc) - before
    windows = sum(len(item.windows) for item in held)
    tokens = sum(item.tokens for item in held)
    count = args.questions
    print(
        f"{args.model.name}: {count} questions of {len(contexts[0]):,} characters, "
        f"{windows / count:.0f} windows and {tokens / count:,.0f} tokens each; retained "
        f"{retained / count / 1e6:.2f} MB a question, {retained / windows / 1e3:.1f} kB a window; "
        f"tokenizing one took at most {peak / 1e6:.1f} MB more at its peak and {seconds:.2f} s"
    )


if __name__ == "__main__":
    main()
