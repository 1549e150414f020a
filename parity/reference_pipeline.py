"""Answers QA cases with transformers' own question-answering pipeline.

Runs inside the reference virtual environment (see reference.py), so it imports nothing but the
standard library, torch and transformers. Usage:

    python reference_pipeline.py MODEL_DIR CASES_JSON RESULTS_JSON

Each case is {"question", "context", **pipeline_kwargs}; each result is {"answers": [...]} or
{"error": "ExceptionType: message"} when the pipeline raised.
"""

from __future__ import annotations

import json
import sys


def answer_cases(model_dir: str, cases: list[dict]) -> list[dict]:
    from transformers import pipeline

    qa = pipeline("question-answering", model=model_dir, tokenizer=model_dir, device="cpu")
    results = []
    # One call per case: batched calls would share padding and settings between cases.
    for case in cases:
        kwargs = {key: value for key, value in case.items() if key not in ("question", "context")}
        try:
            output = qa(question=case["question"], context=case["context"], **kwargs)
        except (KeyboardInterrupt, SystemExit):
            raise
        # BaseException: the tokenizers library reports some bad inputs as a Rust panic, whose
        # exception class derives from BaseException; the pipeline lets it through.
        except BaseException as error:
            results.append({"error": f"{type(error).__name__}: {error}"})
            continue
        answers = output if isinstance(output, list) else [output]
        results.append(
            {
                "answers": [
                    {
                        "answer": answer["answer"],
                        "score": float(answer["score"]),
                        "start": int(answer["start"]),
                        "end": int(answer["end"]),
                    }
                    for answer in answers
                ]
            }
        )
    return results


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    model_dir, cases_path, results_path = argv[1:]
    with open(cases_path, encoding="utf-8") as stream:
        cases = json.load(stream)
    results = answer_cases(model_dir, cases)
    with open(results_path, "w", encoding="utf-8") as stream:
        json.dump(results, stream, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
