"""How long tokenizing a long context on another thread holds up the event loop.

    python -m benchmarks.tokenizer_stall --model DIR [--rounds 5] [--chars 100000]

While a thread tokenizes a context of `--chars` characters of generated prose `--rounds` times,
the main thread's event loop ticks every millisecond; the longest gap between ticks is how long
the loop was held. Two ways: `WindowTokenizer.encode` (the worker's, through `encode_batch`,
which releases the GIL while it tokenizes) and tokenizers' `Tokenizer.encode` with the same
truncation, stride and overflow (which holds the GIL throughout). Prints each one's time alone
(median) and the longest gap.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer

from parity import texts
from worker.model.manifest import TOKENIZER_NAME, Manifest
from worker.qa.windows import WindowTokenizer

QUESTION = "Which company acquired the startup?"


async def longest_gap(work: Callable[[], object], rounds: int) -> float:
    done = threading.Event()

    def run() -> None:
        for _ in range(rounds):
            work()
        done.set()

    thread = threading.Thread(target=run)
    gap = 0.0
    last = time.perf_counter()
    thread.start()
    while not done.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gap, last = max(gap, now - last), now
    thread.join()
    return gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chars", type=int, default=100_000)
    args = parser.parse_args()
    file = args.model / TOKENIZER_NAME
    windows = WindowTokenizer(file, Manifest.read(args.model).tokenizer)
    holding = Tokenizer.from_file(str(file))
    holding.no_padding()
    holding.enable_truncation(
        windows.max_seq_len, stride=windows.doc_stride, strategy="only_second"
    )
    context = texts.context(random.Random(1), args.chars // 4)[: args.chars]
    ways: dict[str, Callable[[], object]] = {
        "WindowTokenizer.encode": lambda: windows.encode(QUESTION, context),
        "Tokenizer.encode": lambda: holding.encode(QUESTION, context),
    }
    for name, work in ways.items():
        alone = []
        for _ in range(args.rounds):
            began = time.perf_counter()
            work()
            alone.append(time.perf_counter() - began)
        gap = asyncio.run(longest_gap(work, args.rounds))
        print(
            f"{name:24} alone {statistics.median(alone) * 1000:6.1f} ms  "
            f"longest event-loop gap {gap * 1000:6.1f} ms"
        )


if __name__ == "__main__":
    main()
