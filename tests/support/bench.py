"""`qa-worker bench` as the tests run it: on a SQuAD file of their own, through its parser."""

from __future__ import annotations

import json
from pathlib import Path

from parity import texts
from worker.cli import build_parser


def write_squad(path: Path, count: int, seed: int = 31) -> Path:
    """A SQuAD 2.0 file of unanswerable questions over contexts of one to several windows."""
    paragraphs = [
        {
            "context": context,
            "qas": [{"id": f"q{i}", "question": question, "answers": [], "is_impossible": True}],
        }
        for i, (question, context) in enumerate(texts.pairs(seed=seed, count=count))
    ]
    path.write_text(json.dumps({"data": [{"paragraphs": paragraphs}]}), encoding="utf-8")
    return path


def run_bench(*argv: str) -> int:
    """`qa-worker bench ARGV`, through `qa-worker`'s own parser."""
    args = build_parser().parse_args(["bench", *argv])
    return int(args.handler(args))
