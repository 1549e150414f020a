"""Where a QA model's inference time goes, by ONNX Runtime operator type.

    python -m benchmarks.ort_profile --model models/mobilebert \\
        --squad ../shared/data/squad-v2-dev-half.json [--precision int8] [--windows 64] \\
        [--batch-size 16] [--threads 1 2] [--json OUT]

(from the repository root). Runs ONNX Runtime's profiler (SessionOptions.enable_profiling) over
the padded batches the worker would make of the first questions' real SQuAD windows, with the
worker's session options, once per intra-op thread count. Prints each operator type's share of
the node time, the split between matrix products (GEMM) and everything else, and the distinct
int8 product shapes (M, K, N) at the typical batch, M being batch x tokens, so that the raw
int8 GEMM rate can be timed at the shapes the model really runs.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from worker.batching.plan import BatchLimits, plan_batches
from worker.model.manifest import LOGIT_OUTPUTS, TOKENIZER_NAME, Manifest
from worker.qa.engine import pad_windows
from worker.qa.windows import EncodedQuestion, WindowTokenizer
from worker.squad import read_questions

# Operators whose time is a matrix product; the rest is the elementwise, normalisation and
# data-movement work around the products.
GEMM_OPS = frozenset(
    {
        "MatMul",
        "Gemm",
        "FusedMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QLinearMatMul",
        "QGemm",
        "Attention",
        "QAttention",
    }
)
# int8 products whose weight shape (K, N) the bench can time at M = batch x tokens.
INT8_GEMM_OPS = frozenset(
    {"MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearMatMul", "QGemm"}
)
ENCODE_CHUNK = 256
# Unprofiled passes first, so the profile holds steady-state runs, not buffer allocation.
WARMUP_PASSES = 1


def load_feeds(
    folder: Path, squad: Path, windows: int, batch_size: int
) -> list[dict[str, np.ndarray]]:
    """The padded batches the worker's planner makes of the first `windows` real windows."""
    manifest = Manifest.read(folder)
    tokenizer = WindowTokenizer(folder / TOKENIZER_NAME, manifest.tokenizer)
    records = read_questions(squad)
    flat = []
    for begin in range(0, len(records), ENCODE_CHUNK):
        chunk = records[begin : begin + ENCODE_CHUNK]
        for item in tokenizer.encode_many([(r.question, r.context) for r in chunk]):
            if isinstance(item, EncodedQuestion):
                flat.extend(item.windows)
        if len(flat) >= windows:
            break
    flat = flat[:windows]
    limits = BatchLimits(batch_size, max_batch_tokens=8192, max_padding=math.inf)
    plan = plan_batches([len(window) for window in flat], limits)
    pad = manifest.tokenizer.pad_token_id
    return [pad_windows([flat[index] for index in batch], pad) for batch in plan]


def profile_session(path: Path, threads: int, work: Path) -> ort.InferenceSession:
    """The worker's session options (worker.backends.onnx.OnnxBackend), plus the profiler."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = str(work / f"profile-{threads}")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def profiled_events(
    path: Path, threads: int, feeds: Sequence[dict[str, np.ndarray]]
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as work:
        session = profile_session(path, threads, Path(work))
        names = [item.name for item in session.get_inputs()]
        for feed in feeds[:WARMUP_PASSES]:
            session.run(list(LOGIT_OUTPUTS), {name: feed[name] for name in names})
        for feed in feeds:
            session.run(list(LOGIT_OUTPUTS), {name: feed[name] for name in names})
        trace = Path(session.end_profiling())
        events: list[dict[str, Any]] = json.loads(trace.read_text(encoding="utf-8"))
    # The warm-up runs are profiled too; drop their node events by counting model runs.
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if len(runs) > WARMUP_PASSES:
        first_measured = runs[WARMUP_PASSES]["ts"]
        events = [e for e in events if e["ts"] >= first_measured]
    return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def op_shares(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by_op: Counter[str] = Counter()
    for event in events:
        by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(by_op.values())
    gemm = sum(us for op, us in by_op.items() if op in GEMM_OPS)
    return {
        "node_ms": round(total / 1000, 1),
        "gemm_share": round(gemm / total, 4),
        "non_gemm_share": round(1 - gemm / total, 4),
        "by_op": {op: round(us / total, 4) for op, us in by_op.most_common()},
        "nodes_by_op": dict(Counter(e["args"]["op_name"] for e in events).most_common()),
    }


def int8_gemm_shapes(
    events: Sequence[dict[str, Any]], rows: int, batches: int
) -> list[dict[str, Any]]:
    """Distinct (M, K, N) of the int8 products in the `batches` batches of `rows` = batch x tokens.

    K is the activation's last axis and N the output's: the profiler leaves the weight's shape
    out once the CPU provider has pre-packed it. Each shape is listed with how often one batch
    runs it and its mean time.
    """
    found: dict[tuple[int, int, int], list[float]] = defaultdict(list)
    for event in events:
        if event["args"]["op_name"] not in INT8_GEMM_OPS:
            continue
        activation = next(iter(event["args"]["input_type_shape"][0].values()))
        output = next(iter(event["args"]["output_type_shape"][0].values()))
        if math.prod(activation[:-1]) == rows:
            found[(rows, int(activation[-1]), int(output[-1]))].append(event["dur"])
    return [
        {
            "M": m,
            "K": k,
            "N": n,
            "per_batch": len(found[(m, k, n)]) // batches,
            "mean_us": round(statistics.fmean(found[(m, k, n)]), 1),
        }
        for (m, k, n) in sorted(found)
    ]


def typical_rows(feeds: Sequence[dict[str, np.ndarray]]) -> int:
    """batch x tokens of the median batch: the M the int8 products most often see."""
    sizes = sorted(int(feed["input_ids"].size) for feed in feeds)
    return sizes[(len(sizes) - 1) // 2]


def markdown(model: Path, precision: str, reports: dict[int, dict[str, Any]], top: int) -> str:
    lines = [f"### {model} ({precision})", ""]
    threads = sorted(reports)
    lines.append("| op type | " + " | ".join(f"{t} thread(s)" for t in threads) + " |")
    lines.append("|---|" + "---|" * len(threads))
    ops = list(reports[threads[0]]["by_op"])[:top]
    for op in ops:
        shares = " | ".join(f"{reports[t]['by_op'].get(op, 0) * 100:.1f}%" for t in threads)
        lines.append(f"| {op} ({reports[threads[0]]['nodes_by_op'][op]} nodes) | {shares} |")
    gemm = " | ".join(f"{reports[t]['gemm_share'] * 100:.1f}%" for t in threads)
    node_ms = " | ".join(f"{reports[t]['node_ms']}" for t in threads)
    lines += [f"| **GEMM** | {gemm} |", f"| node time, ms | {node_ms} |", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--squad", type=Path, required=True)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--top", type=int, default=14, help="op types listed in the table")
    parser.add_argument("--json", type=Path, help="write the full report here too")
    args = parser.parse_args()

    manifest = Manifest.read(args.model)
    path = manifest.onnx_path(args.model, args.precision)
    feeds = load_feeds(args.model, args.squad, args.windows, args.batch_size)
    rows = typical_rows(feeds)
    typical_batches = sum(feed["input_ids"].size == rows for feed in feeds)
    reports: dict[int, dict[str, Any]] = {}
    shapes: list[dict[str, Any]] = []
    for threads in args.threads:
        print(f"profiling {path.name} with {threads} thread(s) ...", file=sys.stderr, flush=True)
        events = profiled_events(path, threads, feeds)
        reports[threads] = op_shares(events)
        shapes = shapes or int8_gemm_shapes(events, rows, typical_batches)
    print(markdown(args.model, args.precision, reports, args.top))
    batch_shapes = sorted({tuple(feed["input_ids"].shape) for feed in feeds})
    print(f"batches (batch, tokens): {batch_shapes}; typical M = batch x tokens = {rows}")
    print("int8 products at the typical M: " + json.dumps(shapes))
    if args.json:
        report = {
            "model": str(args.model),
            "precision": args.precision,
            "windows": args.windows,
            "batch_shapes": batch_shapes,
            "typical_rows": rows,
            "by_threads": reports,
            "int8_gemm_shapes": shapes,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
