"""`qa-worker bench`: what one worker answers per second, how fast, and what it costs, in one run.

    qa-worker bench --model DIR --squad FILE [--events N] [--json OUT] [--plot OUT.png]

On the first N questions of the file, in this order:

- `ceiling`: the bare ONNX Runtime session over the pre-tokenized windows, grouped by length into
  batches of each of a few sizes (median of interleaved rounds); the best size is the most this
  model gives on this machine.
- `engine`: `QAEngine.answer_many` offline: tokenize, infer, decode.
- `end_to_end`: `qa-worker run` as a child process behind a broker (an embedded one unless
  `--broker` is given), every event produced at once; throughput from the first produce to the
  last answer consumed, latency of each event from its produce to its answer's arrival; the
  round of median throughput of three.
- `sweep`: open-loop Poisson arrivals at 25, 50, 75 and 100% of that throughput.
- `reference` (with `--reference-python`): transformers' pipeline on the source checkpoint.

Beside them: the machine's float32 and int8 GEMM rates and the model's FLOPs per window (so the
share of the CPU's peak the model reaches), the batch-1 inference time of a typical window, the
padding ratio, and the worker's peak RSS and time from start to ready. The JSON report (`--json`)
holds all of it and a `targets` section; `--plot` draws latency percentiles against throughput.

Latency on the embedded broker: tansu answers a fetch only when the consumer's fetch wait runs
out, even when records arrive meanwhile, so each hop through it may add up to that wait. Both the
worker and the answers' consumer here wait at most `worker.broker.FETCH_WAIT_MS`, so latencies
are late by at most twice that; `worker_latency_ms` (from the answers' own timings) is the
worker's part.

The worker runs as its own process, as it does in production: its RSS and start-up time are then
its own (not those of a process that also holds the benchmark's engine and GEMM matrices, and
that imported everything long before), and the load generator does not share its event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import numpy as np
import onnxruntime as ort
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from .backends.onnx import available_cores
from .broker import FETCH_WAIT_MS, EmbeddedBroker, file_tail, free_port
from .config import Settings, add_arguments, settings_environment
from .errors import BenchError, ConfigError, EventError
from .lifecycle import AsyncLifecycle
from .loading import load_engine
from .qa import QAEngine, QAOptions, Question
from .qa.batching import BatchLimits, plan_batches
from .qa.engine import InferenceStats, pad_windows
from .qa.windows import EncodedQuestion, Window
from .squad import QuestionRecord, read_questions
from .stream.transport import aiokafka_options, create_topics

__all__ = ["BenchError", "BenchOptions", "add_bench_parser", "command_bench", "run_bench"]

Report = dict[str, Any]
Event = dict[str, str]

DEFAULT_EVENTS = 300
DEFAULT_SWEEP_EVENTS = 200
SWEEP_LOADS = (0.25, 0.5, 0.75, 1.0)
CEILING_BATCH_SIZES = (1, 4, 8, 16)
CEILING_ROUNDS = 3
# Odd, so that the median is one of the rounds.
END_TO_END_ROUNDS = 3
# Enough to bring the worker's session, arenas and Kafka clients to their steady state.
WARMUP_EVENTS = 16
PARTITIONS = 4

# 2 x 2048^3 = 17 GFLOP a product: long enough to time well, short enough to repeat.
GEMM_SIZE = 2048
GEMM_REPEATS = 5
WINDOW_WARMUP = 3
WINDOW_REPEATS = 20

STARTUP_TIMEOUT_S = 120.0
READY_POLL_S = 0.05
# After the last event of a phase is sent, how long its answers may take.
PHASE_TIMEOUT_S = 300.0
STOP_MARGIN_S = 30.0
REFERENCE_TIMEOUT_S = 3600.0
LOG_TAIL_LINES = 30

MATMUL_OPS = frozenset({"MatMul", "MatMulInteger", "Gemm"})
REFERENCE_SCRIPT = Path(__file__).with_name("bench_reference.py")

# Targets the report checks: (name, what is compared, operator, limit).
TARGETS = (
    ("end_to_end_vs_ceiling", "end_to_end / ceiling events/s", ">=", 0.9),
    ("padding_ratio", "padded / real tokens, end to end", "<=", 1.05),
    ("p50_at_25pct_load", "latency p50 at 25% load / window inference", "<=", 1.5),
    ("p99_at_75pct_load", "latency p99 at 75% load / window inference", "<=", 4.0),
    ("peak_rss_mb", "worker peak RSS, MB", "<=", 600.0),
    ("startup_s", "worker start to ready, s", "<=", 10.0),
    ("end_to_end_vs_reference", "end_to_end / reference pipeline events/s", ">=", 3.0),
)


@dataclass(frozen=True)
class BenchOptions:
    squad: Path
    events: int = DEFAULT_EVENTS
    sweep_events: int = DEFAULT_SWEEP_EVENTS
    broker: str | None = None
    reference_python: Path | None = None
    reference_model: str | None = None
    tracing_overhead: bool = False


# command line


def add_bench_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Registers `bench` on the subparsers object of `qa-worker`'s parser."""
    bench = commands.add_parser(
        "bench",
        help="measure throughput, latency, padding, memory and start-up of the worker",
        description="Measures the engine and a `qa-worker run` process on the same questions. "
        "Worker settings without a flag here (QA_MAX_IN_FLIGHT, QA_DRAIN_TIMEOUT_S, ...) come "
        "from the environment.",
    )
    add_arguments(bench, ("model", "qa", "batching"))
    bench.add_argument("--squad", required=True, type=Path, help="SQuAD or JSONL questions")
    bench.add_argument(
        "--events", type=_positive, default=DEFAULT_EVENTS, help="first N questions of the file"
    )
    bench.add_argument(
        "--sweep-events",
        type=_positive,
        default=DEFAULT_SWEEP_EVENTS,
        help="events sent at each load of the latency sweep",
    )
    bench.add_argument(
        "--broker",
        help="bootstrap servers of a broker to use (QA_SECURITY_PROTOCOL and the other QA_ "
        "client settings apply); default: an embedded broker",
    )
    bench.add_argument("--json", type=Path, help="write the report here")
    bench.add_argument("--plot", type=Path, help="draw latency against throughput into this PNG")
    bench.add_argument(
        "--reference-python",
        type=Path,
        help="interpreter with transformers and torch: also time the reference pipeline",
    )
    bench.add_argument(
        "--reference-model",
        help="checkpoint for the reference pipeline; default: the source in the manifest",
    )
    bench.add_argument(
        "--tracing-overhead",
        action="store_true",
        help="also run a worker with --tracing otlp at 100%% sampling, rounds alternating with "
        "the untraced one, and report the events/s ratio (worker/bench_tracing.py)",
    )
    bench.set_defaults(handler=command_bench)
    return bench


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def command_bench(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    settings = Settings.from_sources(args)
    options = BenchOptions(
        squad=args.squad,
        events=args.events,
        sweep_events=args.sweep_events,
        broker=args.broker,
        reference_python=args.reference_python,
        reference_model=args.reference_model,
        tracing_overhead=args.tracing_overhead,
    )
    try:
        if args.plot is not None:
            # Checked first: a missing library should not cost a run of several minutes.
            _import_pyplot()
        report = run_bench(settings, options)
    except BenchError as error:
        print(f"qa-worker bench: {error}", file=sys.stderr)
        return 1
    print_summary(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.plot is not None:
        plot_report(report, args.plot)
    return 0


def note(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# the run


def run_bench(settings: Settings, options: BenchOptions) -> Report:
    if not options.squad.is_file():
        raise ConfigError(f"--squad {options.squad} is not a file")
    records = read_questions(options.squad)[: options.events]
    if not records:
        raise BenchError(f"{options.squad} holds no questions")
    if len(records) < options.events:
        note(f"{options.squad} holds {len(records)} questions; measuring on those")
    engine = load_engine(settings)
    workload = Workload.encode(engine, records, settings.qa_options())
    report = describe_run(settings, engine, workload)
    note("measuring the GEMM rates")
    # First: it fails at once when the onnx package is missing.
    report["gemm_int8_gops"] = measure_int8_gemm()
    report["gemm_gflops"] = measure_gemm()
    report["flop_window_tokens"] = round(workload.mean_tokens)
    report["model_gflop_per_window"] = model_gflop_per_window(
        engine.manifest.onnx_path(settings.require_model(), report["precision"]),
        report["flop_window_tokens"],
    )
    sizes = ceiling_batch_sizes(settings)
    note(f"ceiling: {len(workload.windows)} windows in batches of {sizes}")
    report["ceiling"] = measure_ceiling(engine, workload, sizes, settings.batch_limits())
    report["window_inference_ms"] = measure_window(engine, workload)
    note("engine: answer_many")
    report["engine"] = measure_engine(engine, workload, settings)
    # The worker process is measured next: this engine's memory and threads are done with.
    del engine
    report.update(asyncio.run(measure_streaming(settings, options, records)))
    if options.reference_python is not None:
        model = options.reference_model or report["source"]
        note(f"reference: transformers pipeline on {model}")
        report["reference"] = run_reference(
            options.reference_python, model, records, pipeline_options(report, settings)
        )
    add_derived(report)
    return _significant(report)


@dataclass(frozen=True)
class Workload:
    """The events, and the windows of those the engine can take."""

    questions: list[Question]
    encoded: list[EncodedQuestion | EventError]
    windows: list[Window]

    @classmethod
    def encode(
        cls, engine: QAEngine, records: Sequence[QuestionRecord], options: QAOptions
    ) -> Workload:
        questions = [Question(record.question, record.context, options) for record in records]
        encoded = engine.tokenizer.encode_many([(q.question, q.context) for q in questions])
        windows = [w for item in encoded if isinstance(item, EncodedQuestion) for w in item.windows]
        if not windows:
            raise BenchError(f"the engine refused all {len(records)} questions; check the file")
        return cls(questions, encoded, windows)

    @property
    def events(self) -> int:
        return len(self.questions)

    @property
    def refused(self) -> int:
        return sum(isinstance(item, EventError) for item in self.encoded)

    @property
    def lengths(self) -> list[int]:
        return [len(window) for window in self.windows]

    @property
    def mean_tokens(self) -> float:
        return statistics.fmean(self.lengths)

    @property
    def typical_window(self) -> Window:
        median = statistics.median_low(self.lengths)
        return next(window for window in self.windows if len(window) == median)


def describe_run(settings: Settings, engine: QAEngine, workload: Workload) -> Report:
    manifest = engine.manifest
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
            "batch_size": settings.batch_size,
            "max_batch_tokens": settings.max_batch_tokens,
            "max_wait_ms": settings.max_wait_ms,
            "max_padding": settings.max_padding,
            "threads": settings.threads or available_cores(),
            "max_seq_len": engine.tokenizer.max_seq_len,
            "doc_stride": engine.tokenizer.doc_stride,
        },
        "machine": {
            "cores": available_cores(),
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
        },
    }


# offline measurements


def measure_gemm(size: int = GEMM_SIZE, repeats: int = GEMM_REPEATS) -> float:
    """The best float32 matrix-product rate of numpy's BLAS on all cores, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # starts the BLAS threads
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def measure_int8_gemm(size: int = GEMM_SIZE, repeats: int = GEMM_REPEATS) -> float:
    """The best uint8 x int8 matrix-product rate of ONNX Runtime on all cores, in GOP/s.

    numpy has no fast integer product, and an int8 model runs the runtime's own integer kernels
    (MatMulInteger, as dynamic quantization writes them), so they are what its peak is.
    """
    onnx = _import_onnx()
    rng = np.random.default_rng(0)
    weights = rng.integers(-128, 128, (size, size), dtype=np.int8)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
        "gemm",
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.UINT8, [size, size])],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.INT32, [size, size])],
        [onnx.numpy_helper.from_array(weights, "b")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    # The IR version of the onnx package may be newer than the runtime reads; 8 is enough.
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = available_cores()
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
    )
    feed = {"a": rng.integers(0, 256, (size, size), dtype=np.uint8)}
    session.run(None, feed)
    best = min(_timed(lambda: session.run(None, feed)) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _import_onnx() -> Any:
    try:
        import onnx
    except ModuleNotFoundError:
        raise BenchError(
            "measuring the int8 GEMM rate needs the onnx package, to build a one-product model: "
            "pip install 'kafka-qa-worker[bench]'"
        ) from None
    return onnx


def _timed(work: Callable[[], object]) -> float:
    began = time.perf_counter()
    work()
    return time.perf_counter() - began


def ceiling_batch_sizes(settings: Settings) -> list[int]:
    return sorted({*CEILING_BATCH_SIZES, settings.batch_size})


def measure_ceiling(
    engine: QAEngine, workload: Workload, batch_sizes: Sequence[int], limits: BatchLimits
) -> Report:
    """Session runs only, over windows tokenized and padded beforehand, at each batch size.

    Each size runs CEILING_ROUNDS times, the sizes in a fresh order each round, and keeps its
    median: the best of single noisy runs would overstate what the session sustains.
    """
    rng = random.Random(0)
    runs: dict[int, list[tuple[float, float]]] = {size: [] for size in batch_sizes}
    for _ in range(CEILING_ROUNDS):
        for size in rng.sample(list(batch_sizes), len(batch_sizes)):
            runs[size].append(
                _time_batches(engine, workload, dataclasses.replace(limits, batch_size=size))
            )
    by_size = {
        size: (statistics.median(seconds for seconds, _ in timed), timed[0][1])
        for size, timed in runs.items()
    }
    best = min(by_size, key=lambda size: by_size[size][0])
    seconds, padding = by_size[best]
    return {
        "events_per_s": workload.events / seconds,
        "seconds": seconds,
        "batch_size": best,
        "padding_ratio": padding,
        "events_per_s_by_batch_size": {
            str(size): workload.events / by_size[size][0] for size in batch_sizes
        },
    }


def _time_batches(engine: QAEngine, workload: Workload, limits: BatchLimits) -> tuple[float, float]:
    """Seconds to run every window in batches planned within `limits`, and the padding ratio."""
    pad_id = engine.manifest.tokenizer.pad_token_id
    plan = plan_batches(workload.lengths, limits)
    batches = [pad_windows([workload.windows[i] for i in batch], pad_id) for batch in plan]
    # The last batch holds the longest windows: the session sizes its buffers for it once.
    engine.backend.run(batches[-1])
    began = time.perf_counter()
    for inputs in batches:
        engine.backend.run(inputs)
    seconds = time.perf_counter() - began
    padded = sum(inputs["input_ids"].size for inputs in batches)
    return seconds, padded / sum(workload.lengths)


def measure_window(engine: QAEngine, workload: Workload) -> float:
    """Median batch-1 session time of a window of the median length, in ms."""
    inputs = pad_windows([workload.typical_window], engine.manifest.tokenizer.pad_token_id)
    for _ in range(WINDOW_WARMUP):
        engine.backend.run(inputs)
    times = [_timed(lambda: engine.backend.run(inputs)) for _ in range(WINDOW_REPEATS)]
    return statistics.median(times) * 1000


def measure_engine(engine: QAEngine, workload: Workload, settings: Settings) -> Report:
    engine.stats = InferenceStats()
    began = time.perf_counter()
    engine.answer_many(workload.questions, settings.batch_limits())
    seconds = time.perf_counter() - began
    return {
        "events_per_s": workload.events / seconds,
        "seconds": seconds,
        "inference_share": engine.stats.seconds / seconds,
        "padding_ratio": engine.stats.padding_ratio,
    }


# FLOPs


def model_gflop_per_window(model_path: Path, tokens: int) -> float:
    """GFLOP of one window of `tokens` tokens: 2·M·N·K over every matrix product the model runs.

    The shapes are those ONNX Runtime reports in a profile of one batch-1 run at that length, with
    graph optimizations off so that each product is still a node of the file, attention's too.
    Real shapes need no shape inference, which loses the sequence length in exported graphs.
    Softmax, layer norms and activations are left out: a few percent of a transformer's work.
    """
    with tempfile.TemporaryDirectory(prefix="qa-bench-profile-") as folder:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        # Only the shapes matter, and token 1 with type 0 and a full mask is valid in any model.
        feed = {
            item.name: np.full((1, tokens), int(item.name != "token_type_ids"), dtype=np.int64)
            for item in session.get_inputs()
        }
        session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    nodes = [event["args"] for event in events if event.get("cat") == "Node"]
    flops = sum(_matmul_flops(node) for node in nodes if node.get("op_name") in MATMUL_OPS)
    return flops / 1e9


def _matmul_flops(node: Mapping[str, Any]) -> int:
    """2 x output elements x the inner dimension, the last of the left operand.

    torch exports linear layers as MatMul, or as Gemm with only the right operand transposed, so
    the left operand's last dimension is the inner one in both.
    """
    # Each shape is listed as {element type: dims}.
    (left,) = node["input_type_shape"][0].values()
    (output,) = node["output_type_shape"][0].values()
    return 2 * math.prod(output) * left[-1]


# the worker process


class WorkerProcess(AsyncLifecycle):
    """`qa-worker run` as a child process; `startup_s` runs from spawning it to /readyz 200."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        """`environ`, default this process's, is the child's besides its QA_ settings."""
        self.settings = settings
        self._environ = environ
        self.startup_s = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._log = tempfile.TemporaryFile(prefix="qa-bench-worker-")  # noqa: SIM115 (stop())
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        began = time.perf_counter()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"],
            env=settings_environment(self.settings, self._environ),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            await self._wait_ready(began + STARTUP_TIMEOUT_S)
        except BaseException:
            # `async with` calls stop() only after a start() that returned.
            await self.stop()
            raise
        self.startup_s = time.perf_counter() - began

    async def _wait_ready(self, deadline: float) -> None:
        assert self._session is not None
        while True:
            self.check_alive()
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._session.get(self._url("/readyz")) as response:
                    if response.status == 200:
                        return
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"the worker was not ready within {STARTUP_TIMEOUT_S:.0f} s; its log ends "
                    f"with:\n{self.log_tail()}"
                )
            await asyncio.sleep(READY_POLL_S)

    def _url(self, path: str) -> str:
        return f"http://{self.settings.http_host}:{self.settings.http_port}{path}"

    def check_alive(self) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            raise BenchError(
                f"the worker exited with code {self._process.returncode}; its log ends with:\n"
                f"{self.log_tail()}"
            )

    def log_tail(self) -> str:
        if self._log is None:
            return "(no log)"
        return file_tail(self._log, LOG_TAIL_LINES) or "(empty log)"

    async def counters(self) -> dict[str, float]:
        """The worker's metric samples by name, summed over labels."""
        assert self._session is not None
        async with self._session.get(self._url("/metrics")) as response:
            text = await response.text()
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def peak_rss_mb(self) -> float | None:
        """The kernel's high-water mark of the worker's RSS (Linux); None elsewhere.

        The kernel tracks every page, so no peak between two samples is missed.
        """
        assert self._process is not None
        try:
            status = Path(f"/proc/{self._process.pid}/status").read_text(encoding="utf-8")
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL once the worker's drain timeout and a margin have passed."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(
                    process.wait, self.settings.drain_timeout_s + STOP_MARGIN_S
                )
            except subprocess.TimeoutExpired:
                process.kill()
                code = await asyncio.to_thread(process.wait)
            if code != 0:
                note(f"the worker exited with code {code}; its log ends with:\n{self.log_tail()}")
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._log is not None:
            self._log.close()
            self._log = None


def bench_worker_settings(settings: Settings) -> Settings:
    """The worker's settings on topics and a group of its own, so no earlier run interferes."""
    run = f"qa-bench-{uuid.uuid4().hex[:8]}"
    return dataclasses.replace(
        settings,
        questions_topic=f"{run}-questions",
        answers_topic=f"{run}-answers",
        dead_letter_topic=f"{run}-dead-letters",
        group_id=run,
        question_sets=None,
        documents_topics=None,
        http_host="127.0.0.1",
        http_port=free_port(),
    )


def bench_topics(settings: Settings) -> list[str]:
    return [settings.questions_topic, settings.answers_topic, settings.dead_letter_topic]


async def create_bench_topics(settings: Settings) -> None:
    try:
        await create_topics(aiokafka_options(settings), bench_topics(settings), PARTITIONS)
    except KafkaError as error:
        raise BenchError(f"could not create topics: {error}") from None


async def delete_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(**aiokafka_options(settings))
    await admin.start()
    try:
        await admin.delete_topics(bench_topics(settings))
    finally:
        await admin.close()


# load and answers


class AnswerCollector(AsyncLifecycle):
    """Reads the answers and dead-letters topics; notes when each event's reply first arrived.

    Replies are matched to events by the Kafka key, which the worker copies from the question.
    """

    def __init__(self, settings: Settings) -> None:
        self.arrivals: dict[str, float] = {}
        self.dead_lettered: set[str] = set()
        # The answer's own timings.total_ms: from the worker reading the event to its answer.
        self.worker_ms: dict[str, float] = {}
        self._dead_letter_topic = settings.dead_letter_topic
        self._consumer = AIOKafkaConsumer(
            settings.answers_topic,
            settings.dead_letter_topic,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=FETCH_WAIT_MS,
            **aiokafka_options(settings),
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for record in self._consumer:
            key = (record.key or b"").decode()
            if key in self.arrivals:
                continue
            self.arrivals[key] = time.perf_counter()
            if record.topic == self._dead_letter_topic:
                self.dead_lettered.add(key)
            else:
                self.worker_ms[key] = json.loads(record.value)["timings"]["total_ms"]

    async def wait_for(self, ids: Collection[str], worker: WorkerProcess, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while missing := sum(event_id not in self.arrivals for event_id in ids):
            worker.check_alive()
            if self._task is not None and self._task.done():
                raise BenchError(f"reading the answers failed: {self._task.exception()!r}")
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"{missing} of {len(ids)} events had no answer {timeout:.0f} s after the "
                    f"last was sent; the worker's log ends with:\n{worker.log_tail()}"
                )
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


def phase_events(phase: str, records: Sequence[QuestionRecord], count: int) -> list[Event]:
    """`count` events cycling through the records, with ids unique to the phase."""
    return [
        {"id": f"{phase}-{index}", "question": record.question, "context": record.context}
        for index, record in zip(range(count), itertools.cycle(records))
    ]


@dataclass
class LoadGenerator:
    producer: AIOKafkaProducer
    collector: AnswerCollector
    worker: WorkerProcess
    topic: str
    rng: random.Random
    broker_pid: int | None = None

    async def run(self, events: Sequence[Event], rate: float | None = None) -> Report:
        """Sends the events all at once, or open-loop at `rate` per second; reports the phase."""
        before = await self.worker.counters()
        pids = {"worker": self.worker.pid, "broker": self.broker_pid, "load_generator": os.getpid()}
        # The wall interval encloses every process's CPU interval, so together they can never
        # report more cores than the machine has.
        began = time.perf_counter()
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        sent = await (self._burst(events) if rate is None else self._open_loop(events, rate))
        await self.collector.wait_for(sent, self.worker, PHASE_TIMEOUT_S)
        cpu_after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        wall = time.perf_counter() - began
        cpu_cores = {}
        for name, spent in cpu_after.items():
            started = cpu_before[name]
            if spent is not None and started is not None:
                cpu_cores[name] = (spent - started) / wall
        after = await self.worker.counters()
        return {**phase_report(sent, self.collector, before, after), "cpu_cores": cpu_cores}

    async def _burst(self, events: Sequence[Event]) -> dict[str, float]:
        sent: dict[str, float] = {}
        deliveries = []
        for event in events:
            sent[event["id"]] = time.perf_counter()
            deliveries.append(await self._send(event))
        await asyncio.gather(*deliveries)
        return sent

    async def _open_loop(self, events: Sequence[Event], rate: float) -> dict[str, float]:
        sent: dict[str, float] = {}
        deliveries = []
        scheduled = time.perf_counter()
        for event in events:
            scheduled += self.rng.expovariate(rate)
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            # Latency counts from the planned instant: a send that came late because the machine
            # was busy still waited for the system, and must not hide that (coordinated omission).
            sent[event["id"]] = scheduled
            deliveries.append(await self._send(event))
        await asyncio.gather(*deliveries)
        return sent

    async def _send(self, event: Event) -> asyncio.Future[Any]:
        return await self.producer.send(
            self.topic,
            key=event["id"].encode(),
            value=json.dumps(event, ensure_ascii=False).encode(),
        )


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system, all threads) a process has used so far; None where unknown.

    Read from the process's CPU-time clock (Linux's clock_getcpuclockid), which counts in
    nanoseconds. /proc's stat counts in 10 ms ticks, and a process that used less than one tick
    in a short phase would read as idle.
    """
    if pid is None or not sys.platform.startswith("linux"):
        return None
    try:
        return time.clock_gettime(process_cpu_clock(pid))
    except OSError:  # the process has exited
        return None


def process_cpu_clock(pid: int) -> int:
    """The clock id clock_getcpuclockid(pid) returns on Linux: ~pid << 3 | CPUCLOCK_SCHED."""
    return (~pid << 3) | 2


def phase_report(
    sent: Mapping[str, float],
    collector: AnswerCollector,
    before: Mapping[str, float],
    after: Mapping[str, float],
) -> Report:
    answered = [event_id for event_id in sent if event_id not in collector.dead_lettered]
    if not answered:
        raise BenchError(f"the worker dead-lettered all {len(sent)} events of a phase")
    last = max(collector.arrivals[event_id] for event_id in sent)
    latencies = [(collector.arrivals[event_id] - sent[event_id]) * 1000 for event_id in answered]
    return {
        "events": len(sent),
        "dead_lettered": len(sent) - len(answered),
        "events_per_s": len(sent) / (last - min(sent.values())),
        "latency_ms": percentiles(latencies),
        # The part of the latency spent in the worker; the rest is the broker and its clients.
        "worker_latency_ms": percentiles([collector.worker_ms[event_id] for event_id in answered]),
        **batch_statistics(before, after),
    }


def percentiles(values: Sequence[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def batch_statistics(before: Mapping[str, float], after: Mapping[str, float]) -> Report:
    """What the worker's batches of one phase looked like, from its /metrics counters."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    real = delta("qa_worker_tokens_real_total")
    batches = delta("qa_worker_batch_size_windows_count")
    return {
        "padding_ratio": delta("qa_worker_tokens_padded_total") / real if real else 1.0,
        "mean_batch_windows": delta("qa_worker_batch_size_windows_sum") / batches
        if batches
        else 0.0,
    }


async def measure_streaming(
    settings: Settings, options: BenchOptions, records: Sequence[QuestionRecord]
) -> Report:
    """end_to_end, sweep, startup_s and peak_rss_mb, all from one worker process."""
    async with contextlib.AsyncExitStack() as stack:
        broker_pid = None
        if options.broker is None:
            broker = await stack.enter_async_context(EmbeddedBroker())
            settings, broker_pid = broker.worker_settings(settings), broker.pid
        else:
            settings = dataclasses.replace(settings, broker=options.broker)
        worker_settings = bench_worker_settings(settings)
        await create_bench_topics(worker_settings)
        if options.broker is not None:
            stack.push_async_callback(delete_topics, worker_settings)
        note("starting the worker")
        worker = await stack.enter_async_context(WorkerProcess(worker_settings))
        collector = await stack.enter_async_context(AnswerCollector(worker_settings))
        producer = AIOKafkaProducer(acks="all", **aiokafka_options(worker_settings))
        await producer.start()
        stack.push_async_callback(producer.stop)
        load = LoadGenerator(
            producer,
            collector,
            worker,
            worker_settings.questions_topic,
            random.Random(0),
            broker_pid=broker_pid,
        )
        await load.run(phase_events("warmup", records, min(WARMUP_EVENTS, len(records))))
        rounds = []
        for round_ in range(1, END_TO_END_ROUNDS + 1):
            note(f"end_to_end: {len(records)} events at once (round {round_})")
            events = phase_events(f"end-to-end-{round_}", records, len(records))
            rounds.append(await load.run(events))
        # The round of median throughput, whole: its latencies and batches belong with it.
        end_to_end = sorted(rounds, key=lambda phase: phase["events_per_s"])[len(rounds) // 2]
        end_to_end["events_per_s_by_round"] = [phase["events_per_s"] for phase in rounds]
        sweep = [
            await sweep_load(load, records, fraction, end_to_end["events_per_s"], options)
            for fraction in SWEEP_LOADS
        ]
        measured = {
            "end_to_end": end_to_end,
            "sweep": sweep,
            "padding_ratio": end_to_end["padding_ratio"],
            # Read before the worker stops, while /proc still has it.
            "peak_rss_mb": worker.peak_rss_mb(),
            "startup_s": worker.startup_s,
        }
        if options.tracing_overhead:
            from .bench_tracing import measure_tracing_overhead

            measured["tracing_overhead"] = await measure_tracing_overhead(
                stack, settings, records, load, producer, broker_pid
            )
    return measured


async def sweep_load(
    load: LoadGenerator,
    records: Sequence[QuestionRecord],
    fraction: float,
    capacity: float,
    options: BenchOptions,
) -> Report:
    rate = fraction * capacity
    note(f"sweep: {options.sweep_events} events at {fraction:.0%} load ({rate:.1f} events/s)")
    events = phase_events(f"load-{fraction:.2f}", records, options.sweep_events)
    return {"load": fraction, "target_events_per_s": rate, **await load.run(events, rate)}


# the reference pipeline


def pipeline_options(report: Report, settings: Settings) -> Report:
    """The worker's settings as the reference pipeline's keyword arguments."""
    options = settings.qa_options()
    return {
        "max_seq_len": report["settings"]["max_seq_len"],
        "doc_stride": report["settings"]["doc_stride"],
        "top_k": options.top_k,
        "max_answer_len": options.max_answer_len,
        "handle_impossible_answer": options.handle_impossible_answer,
        "align_to_words": options.align_to_words,
    }


def run_reference(
    python: Path, model: str, records: Sequence[QuestionRecord], options: Report
) -> Report:
    """Times the pipeline in `python` (bench_reference.py), excluding its imports and loading."""
    with tempfile.TemporaryDirectory(prefix="qa-bench-reference-") as work:
        cases = Path(work) / "cases.json"
        results = Path(work) / "results.json"
        questions = [[record.question, record.context] for record in records]
        cases.write_text(
            json.dumps({"model": model, "options": options, "questions": questions}),
            encoding="utf-8",
        )
        # -I: neither this project nor the script's own folder (whose http.py would shadow the
        # standard library's) may be importable there; only the interpreter's own packages.
        command = [str(python), "-I", str(REFERENCE_SCRIPT), str(cases), str(results)]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=REFERENCE_TIMEOUT_S,
                env=reference_environment(model),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise BenchError(f"the reference pipeline did not run: {error}") from None
        if done.returncode != 0:
            raise BenchError(
                f"the reference pipeline failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
            )
        timing = json.loads(results.read_text(encoding="utf-8"))
    return {
        "events_per_s": timing["events"] / timing["seconds"],
        "seconds": timing["seconds"],
        "events": timing["events"],
        "errors": timing["errors"],
        "model": model,
        "python": str(python),
        "versions": timing["versions"],
    }


def reference_environment(model: str) -> dict[str, str]:
    environ = dict(os.environ)
    if Path(model).is_dir():
        # A local checkpoint needs no hub; without these, an unreachable one costs retries.
        environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return environ


# the report


def add_derived(report: Report) -> None:
    """Windows/s, GFLOP/s and share of the GEMM peak per throughput section, and the targets.

    The peak is the one of the model's precision: an int8 model runs most of its products (all
    but attention's) in int8, several times faster than float32 ones.
    """
    int8 = report["precision"] == "int8"
    report["peak_gemm"] = "int8" if int8 else "fp32"
    peak = report["gemm_int8_gops"] if int8 else report["gemm_gflops"]
    windows_per_event = report["windows"] / report["events"]
    for name in ("ceiling", "engine", "end_to_end"):
        section = report[name]
        section["windows_per_s"] = section["events_per_s"] * windows_per_event
        section["gflops"] = section["windows_per_s"] * report["model_gflop_per_window"]
        section["peak_share"] = section["gflops"] / peak
    report["targets"] = target_checks(report)


def target_checks(report: Report) -> Report:
    by_load = {entry["load"]: entry["latency_ms"] for entry in report["sweep"]}
    window_ms = report["window_inference_ms"]
    values = {
        "end_to_end_vs_ceiling": report["end_to_end"]["events_per_s"]
        / report["ceiling"]["events_per_s"],
        "padding_ratio": report["padding_ratio"],
        "p50_at_25pct_load": by_load[0.25]["p50"] / window_ms,
        "p99_at_75pct_load": by_load[0.75]["p99"] / window_ms,
        "peak_rss_mb": report["peak_rss_mb"],
        "startup_s": report["startup_s"],
        "end_to_end_vs_reference": report["end_to_end"]["events_per_s"]
        / report["reference"]["events_per_s"]
        if "reference" in report
        else None,
    }
    checks: Report = {}
    for name, meaning, operator, limit in TARGETS:
        value = values[name]
        if value is None:  # peak RSS where /proc is missing; no reference run
            continue
        met = value >= limit if operator == ">=" else value <= limit
        checks[name] = {
            "value": value,
            "limit": f"{operator} {limit:g}",
            "met": met,
            "what": meaning,
        }
    return checks


def _significant(value: Any, digits: int = 6) -> Any:
    """The report with floats cut to `digits` significant digits, which is all they are worth."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {key: _significant(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [_significant(item, digits) for item in value]
    return value


def print_summary(report: Report) -> None:
    lines = [
        f"{report['model']} ({report['model_type']}, {report['precision']}): "
        f"{report['events']} events, {report['windows']} windows of "
        f"{report['mean_window_tokens']:.0f} tokens on average",
        f"machine: {report['machine']['cores']} cores, GEMM {report['gemm_gflops']:.1f} GFLOP/s "
        f"fp32, {report['gemm_int8_gops']:.1f} GOP/s int8",
        f"model: {report['model_gflop_per_window']:.3g} GFLOP a window of "
        f"{report['flop_window_tokens']} tokens; one window of {report['typical_window_tokens']} "
        f"tokens in {report['window_inference_ms']:.2f} ms",
        _throughput_text("ceiling", report) + f", batch size {report['ceiling']['batch_size']}",
        _throughput_text("engine", report),
        _throughput_text("end_to_end", report) + ", " + _latency_text(report["end_to_end"]),
        "end_to_end CPU cores used: "
        + ", ".join(
            f"{name} {cores:.2f}" for name, cores in report["end_to_end"]["cpu_cores"].items()
        ),
        *(
            f"sweep {entry['load']:.0%}: {entry['events_per_s']:.1f} events/s, "
            + _latency_text(entry)
            for entry in report["sweep"]
        ),
    ]
    if "reference" in report:
        lines.append(f"reference: {report['reference']['events_per_s']:.1f} events/s")
    if "tracing_overhead" in report:
        overhead = report["tracing_overhead"]
        lines.append(
            f"tracing at 100% sampling: {overhead['on_events_per_s']:.1f} events/s against "
            f"{overhead['off_events_per_s']:.1f} untraced, ratio {overhead['ratio']:.3f} "
            f"(median of {len(overhead['rounds'])} alternating pairs)"
        )
    rss = report["peak_rss_mb"]
    lines.append(
        f"worker: start to ready {report['startup_s']:.1f} s, peak RSS "
        + ("unknown" if rss is None else f"{rss:.0f} MB")
        + f", padding ratio {report['padding_ratio']:.3f}"
    )
    lines += [
        f"target {name}: {check['value']:.3g} {check['limit']} "
        + ("met" if check["met"] else "MISSED")
        for name, check in report["targets"].items()
    ]
    for line in lines:
        print(line, file=sys.stderr)


def _throughput_text(name: str, report: Report) -> str:
    section = report[name]
    return (
        f"{name}: {section['events_per_s']:.1f} events/s "
        f"({section['peak_share']:.1%} of the {report['peak_gemm']} GEMM peak)"
    )


def _latency_text(phase: Report) -> str:
    def milliseconds(latency: Mapping[str, float]) -> str:
        return "/".join(f"{latency[p]:.1f}" for p in ("p50", "p95", "p99"))

    return (
        f"latency p50/p95/p99 {milliseconds(phase['latency_ms'])} ms "
        f"(in the worker {milliseconds(phase['worker_latency_ms'])})"
    )


def _import_pyplot() -> Any:
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise BenchError("--plot needs matplotlib: pip install 'kafka-qa-worker[bench]'") from None
    # No display is needed to write a file.
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def plot_report(report: Report, path: Path) -> None:
    """Latency percentiles of the sweep against achieved throughput, and the end-to-end burst."""
    pyplot = _import_pyplot()
    figure, axes = pyplot.subplots(figsize=(8, 5))
    sweep = report["sweep"]
    rates = [entry["events_per_s"] for entry in sweep]
    burst = report["end_to_end"]
    for percentile, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        line = axes.plot(
            rates, [entry["latency_ms"][percentile] for entry in sweep], style, label=percentile
        )[0]
        axes.plot(
            burst["events_per_s"], burst["latency_ms"][percentile], "x", color=line.get_color()
        )
    for entry in sweep:
        axes.annotate(
            f"{entry['load']:.0%}", (entry["events_per_s"], entry["latency_ms"]["p50"]), fontsize=8
        )
    axes.axhline(
        report["window_inference_ms"], linestyle=":", color="grey", label="one window, batch 1"
    )
    axes.axvline(report["ceiling"]["events_per_s"], linestyle="--", color="grey", label="ceiling")
    axes.plot([], [], "x", color="black", label="all events at once")
    axes.set_yscale("log")
    axes.set_xlabel("events/s answered")
    axes.set_ylabel("latency, produce to answer (ms)")
    axes.set_title(f"{Path(report['model']).name} ({report['precision']}): latency by load")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
