"""Bare ONNX Runtime: inference streams x intra-op threads, for choosing the default layout.

    python -m benchmarks.stream_layouts --model /work/models/mobilebert \\
        --squad /work/shared/data/squad-v2-dev-half.json [--events 64] [--rounds 3]

Part 1, throughput: the SQuAD windows of `--events` questions, planned into batches of 1, 4, 8
and 16 by the worker's planner, drained as fast as possible by each layout: `1x2` (one session,
two intra-op threads), `2x1-shared` (two streams on one single-threaded session, the worker's
default), `2x1-own` (two streams, a session each) and `1x1`. Printed: events/s and CPU use.

Part 2, latency with the rest idle: one batch of 1 and of 4 windows, again and again, on one
session with 1 and with 2 threads (the second with and without intra-op spinning); printed is
the median milliseconds per batch. This is what a "wide" path for a short queue would win.

Layouts run interleaved in shuffled order each round; compare them as ratios within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from worker.batching.plan import BatchLimits, plan_batches
from worker.bench.workload import Workload
from worker.config import Settings
from worker.model.loading import load_engine
from worker.qa import QAOptions
from worker.qa.engine import pad_windows
from worker.squad import read_questions

Feed = dict[str, np.ndarray]


def open_session(
    model: Path, threads: int, config: Sequence[tuple[str, str]] = ()
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    for key, value in config:
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def drain(sessions: Sequence[ort.InferenceSession], feeds: Sequence[Feed]) -> tuple[float, float]:
    """Runs every feed, one thread per session taking the next; (wall, CPU) seconds."""
    queue = list(feeds)
    lock = threading.Lock()

    def stream(session: ort.InferenceSession) -> None:
        while True:
            with lock:
                if not queue:
                    return
                feed = queue.pop()
            session.run(None, feed)

    threads = [threading.Thread(target=stream, args=(session,)) for session in sessions]
    wall, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - wall, time.process_time() - cpu


def latency_ms(session: ort.InferenceSession, feed: Feed, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--squad", type=Path, required=True)
    parser.add_argument("--events", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    settings = Settings(model=args.model)
    engine = load_engine(settings)
    workload = Workload.encode(
        engine, read_questions(args.squad)[: args.events], settings.subset(QAOptions)
    )
    onnx = engine.manifest.onnx_path(args.model, None)
    names = engine.backend.input_names
    pad = engine.manifest.tokenizer.pad_token_id

    def feeds(batch_size: int) -> list[Feed]:
        limits = dataclasses.replace(settings.subset(BatchLimits), batch_size=batch_size)
        plan = plan_batches(workload.lengths, limits)
        padded = [pad_windows([workload.windows[i] for i in batch], pad) for batch in plan]
        return [{name: feed[name] for name in names} for feed in padded]

    shared = open_session(onnx, 1)
    no_spin = [("session.intra_op.allow_spinning", "0")]
    layouts = {
        "1x2": [open_session(onnx, 2)],
        "2x1-shared": [shared, shared],
        "2x1-own": [open_session(onnx, 1), open_session(onnx, 1)],
        "1x1": [shared],
    }
    single = {
        "1 thread": shared,
        "2 threads": layouts["1x2"][0],
        "2 threads, no spinning": open_session(onnx, 2, no_spin),
    }
    sizes = (1, 4, 8, 16)
    by_size = {size: feeds(size) for size in sizes}
    # The median-length window, alone and four of its length, for the latency part.
    middle = sorted(range(len(workload.windows)), key=lambda i: workload.lengths[i])
    one = middle[len(middle) // 2]
    lone = {
        1: pad_windows([workload.windows[one]], pad),
        4: pad_windows([workload.windows[i] for i in middle[len(middle) // 2 :][:4]], pad),
    }
    lone = {size: {name: feed[name] for name in names} for size, feed in lone.items()}
    for session in {id(s): s for s in [*single.values(), shared]}.values():
        session.run(None, by_size[16][0])

    throughput: dict[str, dict[int, list[tuple[float, float]]]] = {k: {} for k in layouts}
    latency: dict[str, dict[int, list[float]]] = {k: {} for k in single}
    for round_ in range(args.rounds):
        order = random.Random(round_)
        for size in sizes:
            for name in order.sample(list(layouts), len(layouts)):
                wall, cpu = drain(layouts[name], by_size[size])
                throughput[name].setdefault(size, []).append((workload.events / wall, cpu / wall))
        for size, feed in lone.items():
            for name in order.sample(list(single), len(single)):
                ms = latency_ms(single[name], feed, args.repeats)
                latency[name].setdefault(size, []).append(ms)

    print(f"{workload.events} events, {len(workload.windows)} windows, {args.rounds} rounds")
    print("throughput: events/s (CPU cores busy) by batch size")
    for name, runs in throughput.items():
        cells = "  ".join(
            f"b{size}: {statistics.median(e for e, _ in v):6.1f} "
            f"({statistics.median(c for _, c in v):.2f})"
            for size, v in runs.items()
        )
        print(f"  {name:<12} {cells}")
    print("latency with nothing else running: median ms per batch")
    for name, runs in latency.items():
        cells = "  ".join(f"b{size}: {statistics.median(v):7.1f}" for size, v in runs.items())
        print(f"  {name:<24} {cells}")


if __name__ == "__main__":
    main()
