"""Which ONNX Runtime settings and int8 variants make the QA model faster, answers unchanged.

    python -m benchmarks.ort_experiments --model models/mobilebert \\
        --squad ../shared/data/squad-v2-dev-half.json --out WORKDIR \\
        [--checkpoint CKPT] [--windows N] [--rounds R] [--batch-size B] [--variants NAME...] \\
        [--json OUT]

(from the repository root). Builds the variants under WORKDIR (reused when already there; a
variant that fails to build is skipped with its reason): int8 files quantized with other
settings, static (calibrated QDQ) int8, MobileBERT's NoNorm folded into the weight products
before it, graph fusions by onnxruntime's transformer optimizer, with --checkpoint the legacy
TorchScript export, and session-option changes on the folder's own int8 file. It then runs every
variant over the same padded batches of the first questions' windows, `--rounds` times in a
fresh random order each round so that machine noise hits all variants alike, and prints a
markdown table: windows per second, the median over rounds of the speed-up against the worker's
int8 in the same round, and how often the engine's top answer stays the same as with int8 and
fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from worker.backends.onnx import available_cores
from worker.batching.plan import BatchLimits, plan_batches
from worker.model.calibration import calibration_windows, quantize_static_int8
from worker.model.export import logits_only, quantize_int8
from worker.model.manifest import (
    END_LOGITS,
    LOGIT_OUTPUTS,
    START_LOGITS,
    TOKENIZER_NAME,
    Manifest,
    manifest_checksum,
)
from worker.qa import QAOptions, QAResult
from worker.qa.decode import WindowLogits, decode
from worker.qa.engine import pad_windows
from worker.qa.windows import EncodedQuestion, Window, WindowTokenizer
from worker.squad import read_questions

BASELINE = "int8"
MAX_BATCH_TOKENS = 8192
# The first opset with LayerNormalization, so the TorchScript exporter emits it as one node that the
# optimizer can fuse further, not as a subgraph of means and variances.
LEGACY_OPSET = 17
# Nodes that compute with int8 weights. Counted per file because a fused graph hides some weight
# products inside operators (Attention) that quantizing MatMul/Gemm only does not reach.
INT8_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention")
# The fused fp32 file each variant comes from, for its fused-operator counts.
FUSED_FROM = {
    "fused_fp32": "fused_fp32",
    "fused_int8": "fused_fp32",
    "legacy_fused_int8": "legacy_fused_fp32",
}
ENCODE_CHUNK = 256
# Every session has its own intra-op pool, whose threads spin for a while after a run; a pause
# lets the previous variant's pool go idle so it does not compete with the next one, which a
# worker with its single session never sees.
SETTLE_SECONDS = 0.2

Precision = Literal["fp32", "int8"]
TopAnswer = tuple[str, int, int]
Batch = list[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Settings:
    """Session options; the defaults are the worker's own (worker.backends.onnx.OnnxBackend).

    The worker's backend takes only a thread count, so the session is made here instead, with
    the same options, to vary the others one at a time.
    """

    intra_op: int = 0
    inter_op: int = 1
    parallel: bool = False
    level: str = "ORT_ENABLE_ALL"
    config: tuple[tuple[str, str], ...] = ()

    def session(self, path: Path) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op or available_cores()
        options.inter_op_num_threads = self.inter_op or available_cores()
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if self.parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self.level)
        for key, value in self.config:
            options.add_session_config_entry(key, value)
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def describe(self) -> dict[str, object]:
        return {
            "intra_op_threads": self.intra_op or available_cores(),
            "inter_op_threads": self.inter_op or available_cores(),
            "execution_mode": "ORT_PARALLEL" if self.parallel else "ORT_SEQUENTIAL",
            "graph_optimization_level": self.level,
            "config_entries": dict(self.config),
        }


@dataclass
class Variant:
    name: str
    changes: str
    path: Path
    precision: Precision
    settings: Settings = field(default_factory=Settings)
    details: dict[str, object] = field(default_factory=dict)


@dataclass
class Workload:
    """The questions, their windows, and the padded batches every variant runs."""

    questions: list[EncodedQuestion]
    owners: list[tuple[int, int]]
    windows: list[Window]
    batches: list[list[int]]
    feeds: list[dict[str, np.ndarray]]


@dataclass
class Measured:
    variant: Variant
    session: ort.InferenceSession
    outputs: Batch = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    answers: list[TopAnswer] = field(default_factory=list)


# Building -------------------------------------------------------------------------------------


def build_once(target: Path, make: Callable[[Path], None]) -> Path:
    """Makes `target` unless it exists, via a partial file so a crash leaves nothing reusable."""
    if target.is_file():
        return target
    partial = target.with_name(f".{target.stem}.partial.onnx")
    partial.unlink(missing_ok=True)
    make(partial)
    partial.replace(target)
    return target


def quantize(source: Path, target: Path, **overrides: Any) -> None:
    import onnx

    # Given a path, the quantizer writes a shape-inferred copy beside it, which would be inside
    # the model folder; given the graph, it uses a temporary folder.
    quantize_int8(onnx.load(str(source)), target, **overrides)


def attention_shape(checkpoint: Path | None) -> tuple[int, int]:
    """Heads and attention width for the optimizer; (0, 0) lets it read them off the graph.

    MobileBERT attends in its bottleneck (`true_hidden_size`), not at `hidden_size`; the
    optimizer needs the width the attention really has or it rejects (or misfuses) the pattern.
    """
    if checkpoint is None:
        return 0, 0
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    heads = config.get("num_attention_heads", config.get("n_heads", 0))
    width = config.get("true_hidden_size", config.get("hidden_size", config.get("dim", 0)))
    return int(heads), int(width)


def fuse(source: Path, target: Path, checkpoint: Path | None) -> dict[str, int]:
    """Runs the transformer optimizer; returns its fused-operator counts (kept beside `target`)."""
    stats_file = target.with_suffix(".stats.json")
    if target.is_file() and stats_file.is_file():
        return json.loads(stats_file.read_text(encoding="utf-8"))
    from onnxruntime.transformers.optimizer import optimize_model

    heads, width = attention_shape(checkpoint)
    stats: dict[str, int] = {}

    def make(partial: Path) -> None:
        optimized = optimize_model(
            str(source), model_type="bert", num_heads=heads, hidden_size=width
        )
        stats.update(optimized.get_fused_operator_statistics())
        optimized.save_model_to_file(str(partial))

    target.unlink(missing_ok=True)
    build_once(target, make)
    stats_file.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def legacy_export(checkpoint: Path, target: Path, input_names: Sequence[str]) -> None:
    """The TorchScript exporter, whose graphs are the ones the optimizer's patterns know."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(
        checkpoint, use_safetensors=True
    ).eval()

    # Padded pairs of two lengths, so the trace sees a batch above one and a padding mask.
    sample = tokenizer(
        ["Where does the river flow?", "Who?"],
        ["The river flows north through the valley into the sea.", "Marie did."],
        padding=True,
        return_tensors="pt",
    )
    axes = {name: {0: "batch", 1: "sequence"} for name in [*input_names, *LOGIT_OUTPUTS]}
    with warnings.catch_warnings(), torch.no_grad():
        # The deprecation notice, and tracer warnings about Python branches: comparing the
        # answers with fp32 is what tells whether the trace generalised.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            logits_only(torch, model, input_names),
            tuple(sample[name] for name in input_names),
            str(target),
            input_names=list(input_names),
            output_names=list(LOGIT_OUTPUTS),
            dynamic_axes=axes,
            opset_version=LEGACY_OPSET,
            dynamo=False,
        )


def fold_nonorm(source: Path, target: Path) -> dict[str, int]:
    """Folds MobileBERT's NoNorm into the weight product before it, where that is exact.

    NoNorm is `h * gamma + beta`. Where `h = x @ W + b` feeds nothing else, it equals
    `x @ (W * gamma) + (b * gamma + beta)`: one Mul and one Add fewer per pattern, the same
    arithmetic up to float rounding. After a residual Add, `(x @ W + b + r) * gamma` would need
    `r * gamma`, so those stay. Returns how many were folded.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {value.name for value in graph.output}

    def only_consumer(name: str, op_type: str) -> Any | None:
        found = consumers.get(name, [])
        if name in outputs or len(found) != 1 or found[0].op_type != op_type:
            return None
        return found[0]

    def constant_of(node: Any, other: str) -> str | None:
        names = [name for name in node.input if name != other]
        return names[0] if len(names) == 1 and names[0] in weights else None

    removed: set[int] = set()
    folded = 0
    for node in list(graph.node):
        if node.op_type != "MatMul" or node.input[1] not in weights:
            continue
        bias_add = only_consumer(node.output[0], "Add")
        scale = bias_add and only_consumer(bias_add.output[0], "Mul")
        shift = scale and only_consumer(scale.output[0], "Add")
        if not shift:
            continue
        bias = constant_of(bias_add, node.output[0])
        gamma = constant_of(scale, bias_add.output[0])
        beta = constant_of(shift, scale.output[0])
        if bias is None or gamma is None or beta is None:
            continue
        w, b, g, c = (
            numpy_helper.to_array(weights[name]) for name in (node.input[1], bias, gamma, beta)
        )
        if g.ndim != 1 or g.shape[0] != w.shape[1]:
            continue
        # New initializers: the export shares equal tensors between nodes (a bias may also be
        # another layer's beta), so the originals stay untouched.
        w_name, b_name = f"{node.input[1]}.nonorm{folded}", f"{bias}.nonorm{folded}"
        graph.initializer.append(numpy_helper.from_array((w * g).astype(w.dtype), w_name))
        graph.initializer.append(numpy_helper.from_array((b * g + c).astype(b.dtype), b_name))
        node.input[1] = w_name
        bias_add.input[list(bias_add.input).index(bias)] = b_name
        for later in consumers.get(shift.output[0], []):
            for index, name in enumerate(later.input):
                if name == shift.output[0]:
                    later.input[index] = bias_add.output[0]
        removed.update({id(scale), id(shift)})
        folded += 1
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input}
    unused = [tensor for tensor in graph.initializer if tensor.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    onnx.save(model, str(target))
    return {"nonorm_folded": folded}


def count_ops(path: Path, op_types: Sequence[str]) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts = {op: 0 for op in op_types}
    for node in graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    return {op: count for op, count in counts.items() if count}


def once(make: Callable[[], Path]) -> Callable[[], Path]:
    """`make`, run at most once: variants sharing an intermediate file build (or fail) it once."""
    outcome: list[Path | Exception] = []

    def run() -> Path:
        if not outcome:
            try:
                outcome.append(make())
            except Exception as error:
                outcome.append(error)
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        return outcome[0]

    return run


def build_variants(
    folder: Path, work: Path, checkpoint: Path | None, squad: Path, only: set[str] | None = None
) -> tuple[list[Variant], dict[str, str]]:
    """Every variant that builds, in table order, and the reason for each that did not.

    With `only`, just those variants (and the baseline) are built.
    """
    manifest = Manifest.read(folder)
    fp32 = manifest.onnx_path(folder, "fp32")
    int8 = manifest.onnx_path(folder, "int8")
    variants: list[Variant] = []
    skipped: dict[str, str] = {}
    fused_stats: dict[str, dict[str, int]] = {}

    def attempt(name: str, make: Callable[[], Variant]) -> None:
        if only is not None and name not in only | {BASELINE}:
            return
        print(f"building {name} ...", file=sys.stderr, flush=True)
        try:
            variant = make()
        except Exception as error:
            skipped[name] = f"{type(error).__name__}: {error}".strip()[:300]
            print(f"skipping {name}: {skipped[name]}", file=sys.stderr, flush=True)
            return
        variant.details["file"] = str(variant.path)
        variant.details["settings"] = variant.settings.describe()
        if variant.precision == "int8":
            variant.details["int8_ops"] = count_ops(variant.path, INT8_OPS)
        if FUSED_FROM.get(name) in fused_stats:
            variant.details["fused_ops"] = fused_stats[FUSED_FROM[name]]
        variants.append(variant)

    def quantized(name: str, changes: str, source: Callable[[], Path], **settings: Any) -> None:
        def make() -> Variant:
            target = work / f"{name}.onnx"
            build_once(target, lambda partial: quantize(source(), partial, **settings))
            return Variant(name, changes, target, "int8")

        attempt(name, make)

    def fused(name: str, source: Callable[[], Path]) -> Callable[[], Path]:
        def make() -> Path:
            target = work / f"{name}.onnx"
            stats = fuse(source(), target, checkpoint)
            fused_stats[name] = {op: count for op, count in stats.items() if count}
            return target

        return once(make)

    attempt(BASELINE, lambda: Variant(BASELINE, "the worker's int8 file and session", int8, "int8"))
    attempt("fp32", lambda: Variant("fp32", "the folder's fp32 file (reference)", fp32, "fp32"))
    quantized("per_channel", "int8 with per-channel weight scales", lambda: fp32, per_channel=True)
    quantized("reduce_range", "int8 with 7-bit weights", lambda: fp32, reduce_range=True)
    quantized("uint8_weights", "int8 with QUInt8 weights", lambda: fp32, weight_type="QUInt8")
    quantized(
        "per_channel+reduce_range",
        "int8 with per-channel scales and 7-bit weights",
        lambda: fp32,
        per_channel=True,
        reduce_range=True,
    )
    for name, (changes, settings) in session_variants().items():
        attempt(name, lambda n=name, c=changes, s=settings: Variant(n, c, int8, "int8", s))

    def static(name: str, changes: str, **settings: Any) -> None:
        def make() -> Variant:
            target = work / f"{name}.onnx"
            # The top of the file, as `qa-worker export --calibration` takes it; the workload
            # starts there too, so agreement here flatters static int8 (see precision_agreement).
            windows = calibration_windows(squad, folder / TOKENIZER_NAME, manifest.tokenizer)
            pad = manifest.tokenizer.pad_token_id
            build_once(
                target,
                lambda partial: quantize_static_int8(
                    fp32, partial, windows, manifest.input_names, pad, **settings
                ),
            )
            return Variant(name, changes, target, "int8")

        attempt(name, make)

    static("static_int8", "static QDQ int8 as `export --quantize int8-static` writes it")
    static(
        "static_int8_per_channel", "static QDQ int8, per-channel weight scales", per_channel=True
    )
    static(
        "static_int8_elementwise",
        "static QDQ int8, Add/Mul/Relu quantized too so values stay int8 between products",
        op_types=["MatMul", "Gemm", "Add", "Mul", "Relu"],
    )
    folded = once(
        lambda: build_once(work / "nonorm_folded_fp32.onnx", lambda p: fold_nonorm(fp32, p))
    )
    quantized("nonorm_folded_int8", "NoNorm folded into the weight before it, then int8", folded)

    fused_fp32 = fused("fused_fp32", lambda: fp32)
    fusions = "transformer optimizer fusions on the fp32 file"
    attempt("fused_fp32", lambda: Variant("fused_fp32", fusions, fused_fp32(), "fp32"))
    quantized("fused_int8", "optimizer fusions, then the worker's int8", fused_fp32)

    if checkpoint is not None:
        names = manifest.input_names
        legacy = once(
            lambda: build_once(
                work / "legacy_fp32.onnx",
                lambda partial: legacy_export(checkpoint, partial, names),
            )
        )
        quantized(
            "legacy_export_int8",
            f"TorchScript export (opset {LEGACY_OPSET}), then the worker's int8",
            legacy,
        )
        quantized(
            "legacy_fused_int8",
            "TorchScript export, optimizer fusions, then the worker's int8",
            fused("legacy_fused_fp32", legacy),
        )
    return variants, skipped


def session_variants() -> dict[str, tuple[str, Settings]]:
    """One change each to the worker's session options, all on the folder's int8 file."""
    cores = available_cores()
    return {
        "no_spinning": (
            "intra-op threads sleep instead of spinning between batches",
            Settings(config=(("session.intra_op.allow_spinning", "0"),)),
        ),
        "opt_extended": (
            "graph optimization ORT_ENABLE_EXTENDED (not ALL)",
            Settings(level="ORT_ENABLE_EXTENDED"),
        ),
        "opt_basic": (
            "graph optimization ORT_ENABLE_BASIC (not ALL)",
            Settings(level="ORT_ENABLE_BASIC"),
        ),
        # The parallel executor runs independent nodes at once only with an inter-op pool to run
        # them on; with the worker's single inter-op thread it would be sequential again.
        "parallel": (
            f"ORT_PARALLEL executor with {cores} inter-op threads",
            Settings(parallel=True, inter_op=cores),
        ),
        "threads_1": (f"1 intra-op thread (not {cores})", Settings(intra_op=1)),
    }


# Measuring ------------------------------------------------------------------------------------


def load_workload(folder: Path, squad: Path, windows: int, batch_size: int) -> Workload:
    """Whole questions from the top of the file until they make at least `windows` windows."""
    manifest = Manifest.read(folder)
    tokenizer = WindowTokenizer(folder / TOKENIZER_NAME, manifest.tokenizer)
    records = read_questions(squad)
    questions: list[EncodedQuestion] = []
    total = 0
    for begin in range(0, len(records), ENCODE_CHUNK):
        chunk = records[begin : begin + ENCODE_CHUNK]
        for item in tokenizer.encode_many([(r.question, r.context) for r in chunk]):
            # A question the engine rejects has no answer to compare.
            if isinstance(item, EncodedQuestion) and total < windows:
                questions.append(item)
                total += len(item.windows)
        if total >= windows:
            break
    owners = [(q, w) for q, item in enumerate(questions) for w in range(len(item.windows))]
    flat = [questions[q].windows[w] for q, w in owners]
    # Uncapped padding, as when these experiments were recorded (docs/performance.md).
    limits = BatchLimits(batch_size, MAX_BATCH_TOKENS, max_padding=math.inf)
    batches = plan_batches([len(window) for window in flat], limits)
    pad = manifest.tokenizer.pad_token_id
    feeds = [pad_windows([flat[index] for index in batch], pad) for batch in batches]
    return Workload(questions, owners, flat, batches, feeds)


def run_pass(session: ort.InferenceSession, feeds: Sequence[dict[str, np.ndarray]]) -> Batch:
    names = [item.name for item in session.get_inputs()]
    outputs: Batch = []
    for feed in feeds:
        start, end = session.run([START_LOGITS, END_LOGITS], {name: feed[name] for name in names})
        outputs.append((start, end))
    return outputs


def window_logits(workload: Workload, outputs: Batch) -> list[WindowLogits]:
    """Each window's logits trimmed to its own length, in workload window order."""
    trimmed: list[WindowLogits | None] = [None] * len(workload.windows)
    for batch, (start, end) in zip(workload.batches, outputs, strict=True):
        for row, index in enumerate(batch):
            size = len(workload.windows[index])
            trimmed[index] = WindowLogits(start[row, :size], end[row, :size])
    return [item for item in trimmed if item is not None]


def top_answers(workload: Workload, outputs: Batch) -> list[TopAnswer]:
    logits = window_logits(workload, outputs)
    per_question: list[list[WindowLogits]] = [[] for _ in workload.questions]
    for (question, _), item in zip(workload.owners, logits, strict=True):
        per_question[question].append(item)
    answers: list[TopAnswer] = []
    for encoded, items in zip(workload.questions, per_question, strict=True):
        result: QAResult = decode(encoded, items, QAOptions())
        answers.append((result.answer, result.start, result.end))
    return answers


def max_logit_diff(workload: Workload, outputs: Batch, reference: Batch) -> float:
    worst = 0.0
    for mine, theirs in zip(
        window_logits(workload, outputs), window_logits(workload, reference), strict=True
    ):
        worst = max(
            worst,
            float(np.abs(mine.start - theirs.start).max()),
            float(np.abs(mine.end - theirs.end).max()),
        )
    return worst


def logit_spread(workload: Workload, outputs: Batch) -> float:
    """The median over windows of max - min start logit: how decided the model is."""
    logits = window_logits(workload, outputs)
    return statistics.median(float(item.start.max() - item.start.min()) for item in logits)


def timed_pass(session: ort.InferenceSession, feeds: Sequence[dict[str, np.ndarray]]) -> float:
    began = time.perf_counter()
    run_pass(session, feeds)
    return time.perf_counter() - began


def measure(variants: list[Variant], workload: Workload, rounds: int, seed: int) -> list[Measured]:
    measured: list[Measured] = []
    for variant in variants:
        print(f"loading {variant.name} ...", file=sys.stderr, flush=True)
        session = variant.settings.session(variant.path)
        # The warm-up pass doubles as the one whose logits are checked.
        entry = Measured(variant, session, outputs=run_pass(session, workload.feeds))
        entry.answers = top_answers(workload, entry.outputs)
        measured.append(entry)
    shuffler = random.Random(seed)
    for number in range(rounds):
        order = list(measured)
        shuffler.shuffle(order)
        for entry in order:
            time.sleep(SETTLE_SECONDS)
            entry.seconds.append(timed_pass(entry.session, workload.feeds))
        print(f"round {number + 1}/{rounds} done", file=sys.stderr, flush=True)
    return measured


# Reporting ------------------------------------------------------------------------------------


def agreement(answers: Sequence[TopAnswer], reference: Sequence[TopAnswer]) -> float:
    return sum(a == b for a, b in zip(answers, reference, strict=True)) / len(reference)


def summarize(measured: list[Measured], workload: Workload) -> dict[str, dict[str, Any]]:
    by_name = {entry.variant.name: entry for entry in measured}
    baseline = by_name[BASELINE]
    fp32 = by_name.get("fp32")
    rows: dict[str, dict[str, Any]] = {}
    for entry in measured:
        windows = len(workload.windows)
        ratios = [b / s for b, s in zip(baseline.seconds, entry.seconds, strict=True)]
        row: dict[str, Any] = {
            "changes": entry.variant.changes,
            "precision": entry.variant.precision,
            "windows_per_s": round(statistics.median(windows / s for s in entry.seconds), 2),
            "speedup_vs_int8": round(statistics.median(ratios), 3),
            "seconds_per_round": [round(s, 3) for s in entry.seconds],
            "agreement_vs_int8": round(agreement(entry.answers, baseline.answers), 4),
            "agreement_vs_fp32": (
                round(agreement(entry.answers, fp32.answers), 4) if fp32 else None
            ),
            "max_logit_diff_vs_fp32": (
                max_logit_diff(workload, entry.outputs, fp32.outputs) if fp32 else None
            ),
        }
        if entry.variant.precision == "int8":
            row["max_logit_diff_vs_int8"] = max_logit_diff(
                workload, entry.outputs, baseline.outputs
            )
        row.update(entry.variant.details)
        rows[entry.variant.name] = row
    return rows


def note(row: dict[str, Any], baseline: dict[str, Any]) -> str:
    parts = []
    if row.get("fused_ops"):
        parts.append("fused " + ", ".join(f"{n} {op}" for op, n in row["fused_ops"].items()))
    elif "fused_ops" in row:
        parts.append("optimizer fused nothing")
    # Only worth a mention when quantization reached a different set of weight products.
    if row is baseline or row.get("int8_ops", baseline["int8_ops"]) != baseline["int8_ops"]:
        parts.append(", ".join(f"{n} {op}" for op, n in row["int8_ops"].items()))
    diffs = []
    if row.get("max_logit_diff_vs_fp32") is not None:
        diffs.append(f"{row['max_logit_diff_vs_fp32']:.2g} vs fp32")
    if row is not baseline and row.get("max_logit_diff_vs_int8") is not None:
        diffs.append(f"{row['max_logit_diff_vs_int8']:.2g} vs int8")
    if diffs:
        parts.append("max abs logit diff " + ", ".join(diffs))
    return "; ".join(parts)


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def markdown(rows: dict[str, dict[str, Any]], skipped: dict[str, str], rounds: int) -> str:
    lines = [
        f"| variant | what it changes | windows/s | speedup vs int8 (median of {rounds}) "
        "| agreement vs int8 | agreement vs fp32 | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| `{name}` | {row['changes']} | {row['windows_per_s']:.1f} "
            f"| {row['speedup_vs_int8']:.2f}x | {percent(row['agreement_vs_int8'])} "
            f"| {percent(row['agreement_vs_fp32'])} | {note(row, rows[BASELINE])} |"
        )
    for name, reason in skipped.items():
        lines.append(f"| `{name}` | not built | | | | | {reason.replace('|', '/')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a prepared model folder")
    parser.add_argument("--squad", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="where variants are built")
    parser.add_argument("--checkpoint", type=Path, help="the model's transformers checkpoint")
    parser.add_argument(
        "--windows",
        type=int,
        default=400,
        help="whole questions from the top of the file until they make this many windows",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="for the per-round variant order")
    parser.add_argument(
        "--variants", nargs="+", help="only these variants (the baseline always runs)"
    )
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args()

    manifest = Manifest.read(args.model)
    if args.checkpoint and Path(manifest.source).resolve() != args.checkpoint.resolve():
        print(
            f"note: {args.model} was exported from {manifest.source}, not {args.checkpoint}",
            file=sys.stderr,
        )
    # Keyed by the folder's manifest, which pins its files, so a re-exported model never meets
    # variants built from the previous one.
    work = args.out / manifest_checksum(args.model)[:12]
    work.mkdir(parents=True, exist_ok=True)
    variants, skipped = build_variants(
        args.model, work, args.checkpoint, args.squad, set(args.variants) if args.variants else None
    )
    if not any(variant.name == BASELINE for variant in variants):
        raise SystemExit(f"the baseline {BASELINE} did not load: {skipped.get(BASELINE)}")

    workload = load_workload(args.model, args.squad, args.windows, args.batch_size)
    measured = measure(variants, workload, args.rounds, args.seed)
    rows = summarize(measured, workload)
    fp32 = next((entry for entry in measured if entry.variant.name == "fp32"), None)
    spread = logit_spread(workload, fp32.outputs) if fp32 else None
    print(markdown(rows, skipped, args.rounds))
    print(
        f"\n{len(workload.questions)} questions, {len(workload.windows)} windows in "
        f"{len(workload.batches)} batches of up to {args.batch_size}; {args.rounds} rounds; "
        f"{available_cores()} cores; onnxruntime {ort.__version__}"
    )
    if spread is not None:
        # Agreement means little for a model whose logits barely differ between tokens.
        print(f"fp32 start logits span {spread:.3g} per window (median of max - min)")
    if args.json:
        report = {
            "model": str(args.model),
            "checkpoint": str(args.checkpoint) if args.checkpoint else None,
            "squad": str(args.squad),
            "questions": len(workload.questions),
            "windows": len(workload.windows),
            "batches": len(workload.batches),
            "batch_size": args.batch_size,
            "max_batch_tokens": MAX_BATCH_TOKENS,
            "rounds": args.rounds,
            "cores": available_cores(),
            "onnxruntime": ort.__version__,
            "fp32_start_logit_spread": spread,
            "variants": rows,
            "skipped": skipped,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
