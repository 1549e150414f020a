"""Times transformers' question-answering pipeline for `qa-worker bench --reference-python`.

Runs in the reference interpreter, by path and with `python -I`, so it imports nothing but the
standard library, torch and transformers:

    python -I reference_pipeline.py CASES_JSON RESULT_JSON

CASES_JSON is {"model": checkpoint, "options": pipeline keyword arguments, "questions":
[[question, context], ...]}. RESULT_JSON gets {"events", "seconds", "errors", "versions"}.
Importing, loading the pipeline and a first warm-up question are not part of `seconds`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def answered(qa: Any, question: str, context: str, options: dict[str, Any]) -> bool:
    try:
        qa(question=question, context=context, **options)
    except (KeyboardInterrupt, SystemExit):
        raise
    # BaseException: tokenizers reports some bad inputs as a Rust panic, which derives from it.
    except BaseException:
        return False
    return True


def time_pipeline(model: str, options: dict[str, Any], questions: list[list[str]]) -> dict:
    import torch
    import transformers

    qa = transformers.pipeline("question-answering", model=model, tokenizer=model, device="cpu")
    first_question, first_context = questions[0]
    answered(qa, first_question, first_context, options)
    errors = 0
    began = time.perf_counter()
    # One call per question, as a service answers one event at a time.
    for question, context in questions:
        errors += not answered(qa, question, context, options)
    seconds = time.perf_counter() - began
    return {
        "events": len(questions),
        "seconds": seconds,
        "errors": errors,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
    }


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as stream:
        cases = json.load(stream)
    result = time_pipeline(cases["model"], cases["options"], cases["questions"])
    with open(argv[2], "w", encoding="utf-8") as stream:
        json.dump(result, stream)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
