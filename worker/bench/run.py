"""One bench run: the offline measurements in this process, then the worker process's."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort

from ..backends.onnx import OnnxBackend, available_cores, stream_layout
from ..batching.layout import batch_limits
from ..config import Settings
from ..errors import BenchError, ConfigError
from ..model.loading import load_engine
from ..qa import QAEngine, QAOptions
from ..squad import read_questions
from .ceiling import Layout, ceiling_batch_sizes, ceiling_layouts, measure_layouts
from .end_to_end import measure_streaming
from .flops import model_gflop_per_window
from .heavy_mix import HeavyMix, measure_heavy_mix, one_window_records
from .machine import measure_gemm, measure_int8_gemm
from .model_gemm import measure_model_gemm
from .offline import WindowTimer, measure_engine, measure_window
from .options import BenchOptions
from .queueing import QueueingModel, measure_window_times
from .reference import pipeline_options, run_reference
from .report import Report, add_derived, note, significant
from .workload import Workload


def run_bench(settings: Settings, options: BenchOptions) -> Report:
    if not options.squad.is_file():
        raise ConfigError(f"--squad {options.squad} is not a file")
    corpus = read_questions(options.squad)
    records = corpus[: options.events]
    if not records:
        raise BenchError(f"{options.squad} holds no questions")
    if len(records) < options.events:
        note(f"{options.squad} holds {len(records)} questions; measuring on those")
    engine = load_engine(settings)
    workload = Workload.encode(engine, records, settings.subset(QAOptions))
    report = describe_run(settings, engine, workload)
    note("measuring the GEMM rates")
    # First: it fails at once when the onnx package is missing.
    report["gemm_int8_gops"] = measure_int8_gemm()
    report["gemm_gflops"] = measure_gemm()
    report["flop_window_tokens"] = round(workload.mean_tokens)
    model_path = engine.manifest.onnx_path(settings.require_model(), report["precision"])
    report["model_gflop_per_window"] = model_gflop_per_window(
        model_path, report["flop_window_tokens"]
    )
    pad_id = engine.manifest.tokenizer.pad_token_id
    sizes, layouts = ceiling_batch_sizes(settings), ceiling_layouts(available_cores())
    note(
        f"ceiling: {len(workload.windows)} windows in batches of {sizes}, layouts (streams x "
        f"threads) {[layout.name for layout in layouts]}"
    )
    report.update(
        measure_layouts(model_path, workload, layouts, sizes, batch_limits(settings), pad_id)
    )
    ceiling = report["ceiling"]
    note("GEMM at the model's own shapes")
    report["gemm_model_shapes"] = measure_model_gemm(
        model_path,
        round(ceiling["mean_batch_tokens"]),
        Layout(ceiling["streams"], ceiling["threads"]),
    )
    # On one session with all cores, as the baseline: beside the denominator for comparison.
    report["window_inference_all_cores_ms"] = measure_window(
        OnnxBackend(model_path, available_cores(), 1), workload, pad_id
    )
    threads, streams = stream_layout(settings.inference_streams, settings.threads)
    stream_backend = OnnxBackend(model_path, threads, 1)
    window = WindowTimer(stream_backend, workload, pad_id)
    note("window run times by length, for what queueing alone allows")
    queueing = QueueingModel(measure_window_times(stream_backend, workload, pad_id), streams)
    note("engine: answer_many")
    report["engine"] = measure_engine(engine, workload, settings)
    # The worker process is measured next: this engine's memory and threads are done with.
    del engine
    report.update(asyncio.run(measure_streaming(settings, options, records, window, queueing)))
    report["window_inference_ms"] = window.median_ms
    report["window_inference_samples_ms"] = window.samples_ms
    report["window_inference_threads"] = threads
    if options.heavy_mix:
        report["heavy_mix"] = asyncio.run(
            measure_heavy_mix(
                settings,
                options.broker,
                corpus,
                one_window_records(records, workload),
                window.median_ms,
                HeavyMix(),
            )
        )
    if options.reference_python is not None:
        model = options.reference_model or report["source"]
        note(f"reference: transformers pipeline on {model}")
        report["reference"] = run_reference(
            options.reference_python, model, records, pipeline_options(report, settings)
        )
    add_derived(report)
    return significant(report)


def describe_run(settings: Settings, engine: QAEngine, workload: Workload) -> Report:
    manifest = engine.manifest
    threads, streams = stream_layout(settings.inference_streams, settings.threads)
    return {
        "model": str(settings.require_model()),
        "model_type": manifest.model_type,
        "precision": settings.precision or manifest.default_precision,
        "source": manifest.source,
        "events": workload.events,
        "refused_events": workload.refused,
        "windows": len(workload.windows),
        "mean_window_tokens": workload.mean_tokens,
        "typical_window_tokens": len(workload.typical_window),
        "settings": {
            "batch_size": batch_limits(settings).batch_size,
            "max_batch_tokens": settings.max_batch_tokens,
            "max_wait_ms": settings.max_wait_ms,
            "max_padding": settings.max_padding,
            "inference_streams": streams,
            "threads": threads,
            "max_seq_len": engine.tokenizer.max_seq_len,
            "doc_stride": engine.tokenizer.doc_stride,
        },
        "machine": {
            "cores": available_cores(),
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
        },
    }
