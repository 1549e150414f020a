"""What a question in flight holds: the resident memory its windows retain once tokenized.

    python -m benchmarks.window_memory --model DIR [--questions 20] [--chars 100000]

Encodes `--questions` questions over contexts of `--chars` characters of generated prose
(`parity.texts`) and keeps them, as the batcher does between tokenizing and decoding; prints the
resident memory retained per question and per window (RSS after `gc` and `malloc_trim`, so the
tokenizer's Rust allocations count too), and the windows and tokens per question. A window's
logits (8 bytes a token, kept until decoding) come on top.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import random
from pathlib import Path

from parity import texts
from worker.model.manifest import TOKENIZER_NAME, Manifest
from worker.qa.windows import WindowTokenizer

QUESTION = "Which company acquired the startup?"


def resident_bytes(libc: ctypes.CDLL) -> int:
    gc.collect()
    libc.malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--chars", type=int, default=100_000)
    args = parser.parse_args()
    libc = ctypes.CDLL("libc.so.6")
    tokenizer = WindowTokenizer(args.model / TOKENIZER_NAME, Manifest.read(args.model).tokenizer)
    rng = random.Random(1)
    contexts = [texts.context(rng, args.chars // 4)[: args.chars] for _ in range(args.questions)]
    # The first encode grows the allocator's arenas; it is not what a question holds.
    tokenizer.encode(QUESTION, contexts[0])
    before = resident_bytes(libc)
    held = [tokenizer.encode(QUESTION, context) for context in contexts]
    retained = resident_bytes(libc) - before
    windows = sum(len(item.windows) for item in held)
    tokens = sum(item.tokens for item in held)
    count = args.questions
    print(
        f"{args.model.name}: {count} questions of {len(contexts[0]):,} characters, "
        f"{windows / count:.0f} windows and {tokens / count:,.0f} tokens each; retained "
        f"{retained / count / 1e6:.2f} MB a question, {retained / windows / 1e3:.1f} kB a window"
    )


if __name__ == "__main__":
    main()
