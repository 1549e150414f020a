"""How closely the engine matches the reference pipeline, on the parity tests' own cases.

    python -m benchmarks.parity_report WORKDIR      (from the repository root)

builds the tests' small BERT, MobileBERT and RoBERTa models under WORKDIR (reused when there),
runs transformers 4.57.6 in the tests' reference environment and the engine on the same pairs,
and prints, per model, how many top answers and whole top-k lists are identical.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from parity.cases import build_cases, engine_answers, first_difference
from parity.models import build_checkpoint
from parity.reference import run_reference
from worker.model.export import export_model
from worker.model.manifest import Manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "workdir", type=Path, help="folder for the models built (reused when already there)"
    )
    workdir = parser.parse_args().workdir
    for kind in ("bert", "mobilebert", "roberta"):
        model = workdir / kind
        if not (model / "manifest.json").exists():
            checkpoint = build_checkpoint(kind, workdir / f"{kind}-checkpoint")
            export_model(str(checkpoint), model, quantize="int8")
        cases = build_cases(seed=sum(map(ord, kind)))
        expected = run_reference(Path(Manifest.read(model).source), cases)
        actual = engine_answers(model, cases)
        rejected = top_same = lists_same = 0
        worst = 0.0
        for reference, mine in zip(expected, actual, strict=True):
            if "error" in reference:
                rejected += "error" in mine
                continue
            ref_top, my_top = reference["answers"][0], mine["answers"][0]
            if all(ref_top[k] == my_top[k] for k in ("answer", "start", "end")):
                top_same += 1
                worst = max(worst, abs(ref_top["score"] - my_top["score"]))
            lists_same += first_difference(reference["answers"], mine["answers"]) is None
        compared = len(cases) - sum("error" in r for r in expected)
        long_contexts = sum(len(case["context"].split()) > 300 for case in cases)
        print(
            f"{kind}: {len(cases)} pairs ({long_contexts} with contexts over 300 words), "
            f"{rejected} rejected by both, top answer identical {top_same}/{compared}, "
            f"top-k list identical {lists_same}/{compared}, largest top-score gap {worst:.1e}"
        )


if __name__ == "__main__":
    main()
