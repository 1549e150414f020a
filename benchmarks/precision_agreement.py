"""int8 against fp32 on the same questions: top-answer agreement and windows per second.

    python benchmarks/precision_agreement.py --model models/mobilebert \\
        --squad ../shared/data/squad-v2-dev-half.json [--limit N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from worker.qa import BatchLimits, QAEngine, QAOptions, QAResult, Question
from worker.squad import read_questions


def run(model: Path, precision: str, questions: list[Question]) -> tuple[list[QAResult], dict]:
    engine = QAEngine.load(model, precision=precision)  # type: ignore[arg-type]
    began = time.perf_counter()
    results = engine.answer_many(questions, BatchLimits(batch_size=16, max_batch_tokens=8192))
    elapsed = time.perf_counter() - began
    stats = engine.stats
    report = {
        "questions": len(questions),
        "windows": stats.windows,
        "seconds": round(elapsed, 2),
        "windows_per_s": round(stats.windows / elapsed, 2),
        "inference_windows_per_s": round(stats.windows / stats.seconds, 2),
        "padding_ratio": round(stats.padding_ratio, 4),
    }
    return [r for r in results if isinstance(r, QAResult)], report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--squad", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=0, help="first N questions only")
    parser.add_argument("--handle-impossible-answer", action="store_true")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args()
    records = read_questions(args.squad)
    if args.limit:
        records = records[: args.limit]
    options = QAOptions(handle_impossible_answer=args.handle_impossible_answer)
    questions = [Question(r.question, r.context, options) for r in records]
    fp32, fp32_report = run(args.model, "fp32", questions)
    int8, int8_report = run(args.model, "int8", questions)
    same = sum(
        (a.answer, a.start, a.end) == (b.answer, b.start, b.end)
        for a, b in zip(fp32, int8, strict=True)
    )
    report = {
        "model": str(args.model),
        "questions": len(questions),
        "top_answer_agreement": round(same / len(questions), 4),
        "fp32": fp32_report,
        "int8": int8_report,
        "int8_speedup": round(int8_report["windows_per_s"] / fp32_report["windows_per_s"], 2),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
