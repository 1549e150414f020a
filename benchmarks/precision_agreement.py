"""int8 and static int8 against fp32 on the same questions: top-answer agreement and speed.

    python benchmarks/precision_agreement.py --model models/mobilebert \\
        --squad ../shared/data/squad-v2-dev-half.json [--start N] [--limit N] [--rounds R] \\
        [--json OUT]

Every precision the folder's manifest lists (fp32, int8, and int8-static when exported with
`--quantize int8-static`) answers the same questions. Agreement is the share of questions whose
top answer (text and span) is the one fp32 gives. Speed is measured interleaved: each round runs
every precision once over the questions, in a fresh random order, and the report gives the median
over rounds of each precision's time relative to fp32 in the same round, so machine noise hits
all alike. Static int8 calibrates on the top of a file: `--start` skips past the questions it was
calibrated on so it is judged on others. With random weights the agreement says how far
quantization moves the logits, not how often a fine-tuned model's answers would change.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from worker.batching.plan import BatchLimits
from worker.model.manifest import Manifest
from worker.qa import QAEngine, QAOptions, QAResult, Question
from worker.squad import read_questions

LIMITS = BatchLimits(batch_size=16, max_batch_tokens=8192)
REFERENCE = "fp32"


def answers(engine: QAEngine, questions: list[Question]) -> list[tuple[str, int, int]]:
    results = engine.answer_many(questions, LIMITS)
    return [
        (r.answer, r.start, r.end) if isinstance(r, QAResult) else ("<error>", -1, -1)
        for r in results
    ]


def timed(engine: QAEngine, questions: list[Question]) -> float:
    began = time.perf_counter()
    engine.answer_many(questions, LIMITS)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--squad", type=Path, required=True)
    parser.add_argument("--start", type=int, default=0, help="skip the first N questions")
    parser.add_argument("--limit", type=int, default=0, help="N questions only")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads; 0: auto")
    parser.add_argument("--handle-impossible-answer", action="store_true")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args()
    records = read_questions(args.squad)[args.start :]
    if args.limit:
        records = records[: args.limit]
    options = QAOptions(handle_impossible_answer=args.handle_impossible_answer)
    questions = [Question(r.question, r.context, options) for r in records]

    precisions = list(Manifest.read(args.model).onnx_files)
    engines = {
        # One stream: the comparison is of the files, not of how the batcher spreads batches.
        precision: QAEngine.load(
            args.model,
            precision=precision,  # type: ignore[arg-type]
            threads=args.threads,
            streams=1,
        )
        for precision in precisions
    }
    # The answering pass doubles as the warm-up before timing.
    top = {precision: answers(engine, questions) for precision, engine in engines.items()}
    seconds: dict[str, list[float]] = {precision: [] for precision in precisions}
    shuffler = random.Random(0)
    for _ in range(args.rounds):
        for precision in shuffler.sample(precisions, len(precisions)):
            seconds[precision].append(timed(engines[precision], questions))

    def agreement(precision: str, reference: str) -> float | None:
        if reference not in top:
            return None
        same = sum(a == b for a, b in zip(top[precision], top[reference], strict=True))
        return round(same / len(questions), 4)

    def speedup(precision: str, reference: str) -> float | None:
        """Median over rounds of the reference's time over this one's: above 1 is faster."""
        if reference not in seconds:
            return None
        pairs = zip(seconds[reference], seconds[precision], strict=True)
        return round(statistics.median(ref / own for ref, own in pairs), 3)

    report = {
        "model": str(args.model),
        "questions": len(questions),
        "first_question": args.start,
        "rounds": args.rounds,
        "note": "random-weight model: agreement measures quantization noise, not answer quality",
        "precisions": {
            precision: {
                "top_answer_agreement_with_fp32": agreement(precision, REFERENCE),
                "top_answer_agreement_with_int8": agreement(precision, "int8"),
                "median_seconds": round(statistics.median(seconds[precision]), 3),
                "speedup_vs_fp32": speedup(precision, REFERENCE),
                "speedup_vs_int8": speedup(precision, "int8"),
                "windows": engines[precision].stats.windows // (args.rounds + 1),
            }
            for precision in precisions
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
