"""`qa-worker bench` on a tiny model: every section of the report is there and consistent.

Speeds are not judged here (the targets belong to benchmark runs on a quiet machine): the tests
check that each measurement ran, on the events it should, and that the numbers agree with each
other and with what can be counted by hand.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from tests.support.bench import run_bench, write_squad
from worker.batching.batcher import Stages
from worker.bench.ceiling import ceiling_layouts
from worker.bench.clock import cpu_seconds
from worker.bench.end_to_end import END_TO_END_ROUNDS, SWEEP_LOADS
from worker.bench.flops import model_gflop_per_window
from worker.bench.goodput import GOODPUT_STEPS, SLO_WINDOWS
from worker.bench.heavy_mix import (
    HeavyMix,
    long_contexts,
    measure_heavy_mix,
    one_window_records,
)
from worker.bench.machine import measure_int8_gemm
from worker.bench.model_gemm import matmul_integer_shapes
from worker.bench.placement import SLOWEST_SHARE, AnswerTimes, place_latencies
from worker.bench.report import TARGETS, THROUGHPUT_SECTIONS, compare_heavy_mix
from worker.bench.runtime_stats import bucket_quantile, runtime_statistics
from worker.bench.topics import PARTITIONS, bench_worker_settings
from worker.bench.worker_process import WorkerProcess, metric_totals
from worker.bench.workload import Workload
from worker.cli import build_parser
from worker.config import Settings, settings_environment
from worker.errors import BenchError
from worker.model.loading import load_engine
from worker.observability.metrics import LOOP_LAG_BUCKETS, WorkerMetrics
from worker.qa import QAOptions
from worker.squad import read_questions

pytestmark = pytest.mark.broker

EVENTS = 30
SWEEP_EVENTS = 12
LOADS = [0.25, 0.5, 0.75, 1.0]
# Set apart from the machine's defaults, so that the test knows the layout the worker must run.
STREAMS, THREADS = 2, 1


def hand_count_gflop(config: dict[str, Any], tokens: int) -> float:
    """A BERT encoder's matrix products for one window of `tokens`, from its config."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    per_layer = (
        4 * 2 * tokens * hidden * hidden  # query, key, value and output projections
        + 2 * 2 * tokens * tokens * hidden  # scores and weighted values, all heads together
        + 2 * 2 * tokens * hidden * inner  # the feed-forward network, in and out
    )
    start_end_head = 2 * tokens * hidden * 2
    return (config["num_hidden_layers"] * per_layer + start_end_head) / 1e9


def checkpoint_config(model: Path) -> dict[str, Any]:
    manifest = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
    return json.loads((Path(manifest["source"]) / "config.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def bench_run(
    exported_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    """One bench run on the tiny BERT (int8, the manifest's default): its report and plot."""
    folder = tmp_path_factory.mktemp("bench")
    squad = write_squad(folder / "squad.json", count=EVENTS + 10)
    report_path, plot_path = folder / "report.json", folder / "latency.png"
    code = run_bench(
        "--model",
        str(exported_models["bert"]),
        "--squad",
        str(squad),
        "--events",
        str(EVENTS),
        "--sweep-events",
        str(SWEEP_EVENTS),
        "--inference-streams",
        str(STREAMS),
        "--threads",
        str(THREADS),
        "--idle-seconds",
        "1",
        "--json",
        str(report_path),
        "--plot",
        str(plot_path),
    )
    assert code == 0
    return json.loads(report_path.read_text(encoding="utf-8")), plot_path


def test_report_has_every_section(bench_run: tuple[dict[str, Any], Path]) -> None:
    report, _ = bench_run
    required = {
        "ceiling",
        "baseline",
        "engine",
        "end_to_end",
        "sweep",
        "goodput",
        "idle_cpu_cores",
        "memory",
        "gemm_model_shapes",
        "padding_ratio",
        "peak_rss_mb",
        "startup_s",
        "gemm_gflops",
        "model_gflop_per_window",
        "window_inference_ms",
        "targets",
    }
    assert required <= set(report)
    assert "reference" not in report, "no --reference-python was given"
    for section in THROUGHPUT_SECTIONS:
        assert {"events_per_s", "windows_per_s", "gflops", "peak_share"} <= set(report[section])
    assert {"p50", "p95", "p99"} == set(report["end_to_end"]["latency_ms"])
    for entry in report["sweep"]:
        assert {"load", "events_per_s", "latency_ms"} <= set(entry)


def test_every_phase_answers_its_events(bench_run: tuple[dict[str, Any], Path]) -> None:
    report, _ = bench_run
    assert report["events"] == EVENTS
    assert report["refused_events"] == 0
    assert report["windows"] > EVENTS, "some contexts are longer than one window"
    assert report["end_to_end"]["events"] == EVENTS
    assert report["end_to_end"]["dead_lettered"] == 0
    # The reported round is the median one of those that ran.
    by_round = report["end_to_end"]["events_per_s_by_round"]
    assert len(by_round) == END_TO_END_ROUNDS
    assert report["end_to_end"]["events_per_s"] == statistics.median(by_round)
    assert [entry["load"] for entry in report["sweep"]] == LOADS
    for entry in report["sweep"]:
        assert entry["events"] == SWEEP_EVENTS
        assert entry["dead_lettered"] == 0
        assert entry["target_events_per_s"] == pytest.approx(
            entry["load"] * report["end_to_end"]["events_per_s"], rel=1e-4
        )


def test_throughputs_and_latencies_are_sane(bench_run: tuple[dict[str, Any], Path]) -> None:
    report, _ = bench_run
    for section in THROUGHPUT_SECTIONS:
        assert report[section]["events_per_s"] > 0
    phases = [report["end_to_end"], *report["sweep"]]
    for phase in phases:
        assert phase["events_per_s"] > 0
        for latency in (phase["latency_ms"], phase["worker_latency_ms"]):
            assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
        # The worker's part cannot be longer than the whole way from producer to consumer.
        assert phase["worker_latency_ms"]["p50"] <= phase["latency_ms"]["p99"]
    assert report["window_inference_ms"] > 0


def test_padding_memory_startup_and_machine_are_measured(
    bench_run: tuple[dict[str, Any], Path],
) -> None:
    report, _ = bench_run
    assert report["padding_ratio"] == report["end_to_end"]["padding_ratio"]
    for padding in (
        report["padding_ratio"],
        report["ceiling"]["padding_ratio"],
        report["engine"]["padding_ratio"],
        *(entry["padding_ratio"] for entry in report["sweep"]),
    ):
        assert padding >= 1
    assert report["end_to_end"]["mean_batch_windows"] >= 1
    assert report["peak_rss_mb"] > 0
    assert report["startup_s"] > 0
    assert report["gemm_gflops"] > 0
    assert report["gemm_int8_gops"] > 0
    assert report["precision"] == "int8"
    assert report["peak_gemm"] == "int8"
    # Every process of the embedded set-up did work during the phase (CPU clocks count in
    # nanoseconds, so any work shows), and together they used no more cores than they may run
    # on: the phase's wall interval encloses each process's CPU interval. The 1% allows for the
    # CPU clocks and the wall clock being different clock sources.
    runnable = len(os.sched_getaffinity(0))
    for phase in (report["end_to_end"], *report["sweep"]):
        cores = phase["cpu_cores"]
        assert set(cores) == {"worker", "broker", "load_generator"}
        assert all(math.isfinite(used) and used > 0 for used in cores.values()), cores
        assert sum(cores.values()) <= runnable * 1.01, cores


def test_ceiling_is_the_best_of_every_layout_and_baseline_is_one_session_on_all_cores(
    bench_run: tuple[dict[str, Any], Path],
) -> None:
    report, _ = bench_run
    ceiling, baseline = report["ceiling"], report["baseline"]
    cores = report["machine"]["cores"]
    sizes = sorted({1, 4, 8, 16, report["settings"]["batch_size"]})
    expected = {
        (layout.streams, layout.threads, size)
        for layout in ceiling_layouts(cores)
        for size in sizes
    }
    table = ceiling["layouts"]
    assert {(row["streams"], row["threads"], row["batch_size"]) for row in table} == expected
    assert len(table) == len(expected)
    assert all(layout.streams * layout.threads <= cores for layout in ceiling_layouts(cores))
    best = max(table, key=lambda row: row["events_per_s"])
    assert ceiling["events_per_s"] == best["events_per_s"]
    assert (ceiling["streams"], ceiling["threads"], ceiling["batch_size"]) == (
        best["streams"],
        best["threads"],
        best["batch_size"],
    )
    # The baseline is the best batch size of one session with all cores, from the same table.
    assert (baseline["streams"], baseline["threads"]) == (1, cores)
    one_session = [row for row in table if (row["streams"], row["threads"]) == (1, cores)]
    assert baseline["layouts"] == one_session
    assert baseline["events_per_s"] == max(row["events_per_s"] for row in one_session)
    assert baseline["events_per_s"] <= ceiling["events_per_s"]
    runnable = len(os.sched_getaffinity(0))
    for section in (ceiling, baseline):
        assert 0 < section["cpu_cores"] <= runnable * 1.01
        assert section["events_per_core_s"] == pytest.approx(
            section["events_per_s"] / section["cpu_cores"], rel=1e-4
        )
        assert section["padding_ratio"] >= 1
        assert section["mean_batch_tokens"] > 0


def test_gemm_at_the_models_shapes_covers_its_weight_products(
    bench_run: tuple[dict[str, Any], Path], exported_models: dict[str, Path]
) -> None:
    report, _ = bench_run
    config = checkpoint_config(exported_models["bert"])
    hidden, inner, layers = (
        config["hidden_size"],
        config["intermediate_size"],
        config["num_hidden_layers"],
    )
    manifest = json.loads((exported_models["bert"] / "manifest.json").read_text())
    shapes = matmul_integer_shapes(exported_models["bert"] / manifest["onnx_files"]["int8"])
    expected = {(hidden, hidden): 4 * layers, (hidden, inner): layers, (inner, hidden): layers}
    expected[hidden, 2] = 1  # the start and end head
    if hidden == inner:
        expected = {(hidden, hidden): 6 * layers, (hidden, 2): 1}
    assert dict(shapes) == expected
    measured = report["gemm_model_shapes"]
    ceiling = report["ceiling"]
    assert {(row["k"], row["n"]): row["count"] for row in measured["shapes"]} == expected
    assert measured["m"] == round(ceiling["mean_batch_tokens"])
    assert (measured["streams"], measured["threads"]) == (ceiling["streams"], ceiling["threads"])
    rates = [row["gops"] for row in measured["shapes"]]
    assert min(rates) <= measured["gops"] <= max(rates)
    assert ceiling["shape_matched_share"] == pytest.approx(
        ceiling["gflops"] / measured["gops"], rel=1e-4
    )


def test_goodput_is_a_bisection_below_capacity(bench_run: tuple[dict[str, Any], Path]) -> None:
    report, _ = bench_run
    goodput = report["goodput"]
    capacity = report["end_to_end"]["events_per_s"]
    assert goodput["capacity_events_per_s"] == capacity
    assert goodput["slo_ms"] == pytest.approx(SLO_WINDOWS * report["window_inference_ms"], 1e-4)
    steps = goodput["steps"]
    assert 1 <= len(steps) <= GOODPUT_STEPS
    assert steps[0]["target_events_per_s"] == capacity
    assert steps[0]["bracket"] == [0, capacity]
    for step in steps:
        low, high = step["bracket"]
        assert low <= step["target_events_per_s"] <= high
        assert step["met"] == (step["p99_ms"] <= goodput["slo_ms"])
    for earlier, later in itertools.pairwise(steps):
        # Each bracket lies within the one before: a met step raised its floor, a missed one
        # lowered its top, to the rate it tried.
        side = 0 if earlier["met"] else 1
        assert later["bracket"][side] == earlier["target_events_per_s"]
        assert later["bracket"][1 - side] == earlier["bracket"][1 - side]
    met = [step["target_events_per_s"] for step in steps if step["met"]]
    assert goodput["events_per_s"] == (max(met) if met else 0)
    assert 0 <= goodput["events_per_s"] <= capacity
    if met:
        assert goodput["p99_ms"] <= goodput["slo_ms"]
    check = report["targets"]["goodput_vs_end_to_end"]
    assert check["value"] == pytest.approx(goodput["events_per_s"] / capacity, rel=1e-4)


def test_worker_runs_the_layout_given_and_memory_per_stream_is_measured(
    bench_run: tuple[dict[str, Any], Path],
) -> None:
    report, _ = bench_run
    assert report["settings"]["inference_streams"] == STREAMS
    assert report["settings"]["threads"] == THREADS
    memory = report["memory"]
    assert (memory["streams"], memory["threads"]) == (STREAMS, THREADS)
    assert memory["peak_rss_mb"] == report["peak_rss_mb"]
    assert memory["one_stream_peak_rss_mb"] > 0
    # A difference of two rounded figures: rounded to the report's digits of each.
    assert memory["rss_per_stream_mb"] == pytest.approx(
        (memory["peak_rss_mb"] - memory["one_stream_peak_rss_mb"]) / (STREAMS - 1), abs=0.01
    )
    assert report["idle_cpu_cores"] >= 0
    assert report["targets"]["idle_cpu_cores"]["value"] == report["idle_cpu_cores"]


def test_bench_worker_keeps_the_users_streams_and_threads(tmp_path: Path) -> None:
    given = Settings(model=tmp_path, inference_streams=3, threads=2)
    settings = bench_worker_settings(given)
    assert (settings.inference_streams, settings.threads) == (3, 2)
    environment = settings_environment(settings, {})
    assert environment["QA_INFERENCE_STREAMS"] == "3"
    assert environment["QA_THREADS"] == "2"


def test_per_core_efficiency_compares_measured_cores(
    bench_run: tuple[dict[str, Any], Path],
) -> None:
    report, _ = bench_run
    end_to_end, ceiling = report["end_to_end"], report["ceiling"]
    assert end_to_end["events_per_core_s"] == pytest.approx(
        end_to_end["events_per_s"] / end_to_end["cpu_cores"]["worker"], rel=1e-4
    )
    targets = report["targets"]
    assert targets["per_core_efficiency"]["value"] == pytest.approx(
        end_to_end["events_per_core_s"] / ceiling["events_per_core_s"], rel=1e-4
    )
    assert targets["end_to_end_vs_baseline"]["value"] == pytest.approx(
        end_to_end["events_per_s"] / report["baseline"]["events_per_s"], rel=1e-4
    )
    assert targets["ceiling_peak_share"]["value"] == ceiling["peak_share"]


def test_cpu_seconds_counts_below_one_clock_tick() -> None:
    """A process that ran for a millisecond is not read as idle, as 10 ms /proc ticks would."""
    started = cpu_seconds(os.getpid())
    assert started is not None
    spin_until = time.thread_time() + 0.001
    while time.thread_time() < spin_until:
        pass
    spent = cpu_seconds(os.getpid()) - started
    assert 0.001 <= spent < 1.0
    assert cpu_seconds(None) is None


def test_model_flops_match_a_hand_count(
    bench_run: tuple[dict[str, Any], Path], exported_models: dict[str, Path]
) -> None:
    report, _ = bench_run
    tokens = report["flop_window_tokens"]
    assert tokens == round(report["mean_window_tokens"])
    expected = hand_count_gflop(checkpoint_config(exported_models["bert"]), tokens)
    assert report["model_gflop_per_window"] == pytest.approx(expected, rel=1e-5)
    ceiling = report["ceiling"]
    assert ceiling["gflops"] == pytest.approx(
        ceiling["windows_per_s"] * report["model_gflop_per_window"], rel=1e-4
    )
    assert ceiling["peak_share"] == pytest.approx(
        ceiling["gflops"] / report["gemm_int8_gops"], rel=1e-4
    )


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("tokens", [1, 64, 384])
def test_flop_count_matches_a_hand_count_at_any_length(
    exported_models: dict[str, Path], precision: str, tokens: int
) -> None:
    model = exported_models["bert"]
    manifest = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
    counted = model_gflop_per_window(model / manifest["onnx_files"][precision], tokens)
    assert counted == pytest.approx(hand_count_gflop(checkpoint_config(model), tokens), rel=1e-9)


def test_targets_are_checked(bench_run: tuple[dict[str, Any], Path]) -> None:
    report, _ = bench_run
    # Without --reference-python there is no reference to compare with.
    assert set(report["targets"]) == {name for name, *_ in TARGETS} - {"end_to_end_vs_reference"}
    startup = report["targets"]["startup_s"]
    assert startup["value"] == report["startup_s"]
    assert startup["met"] == (report["startup_s"] <= 10)
    p50 = report["targets"]["p50_at_25pct_load"]["value"]
    assert p50 == pytest.approx(
        report["sweep"][0]["latency_ms"]["p50"] / report["window_inference_ms"], rel=1e-4
    )


def test_plot_is_written_as_png(bench_run: tuple[dict[str, Any], Path]) -> None:
    _, plot = bench_run
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_onnx_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(BenchError, match=r"pip install 'kafka-qa-worker\[bench\]'"):
        measure_int8_gemm(size=64, repeats=1)


def test_missing_matplotlib_fails_before_measuring(
    exported_models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    squad = write_squad(tmp_path / "squad.json", count=3)
    plot = tmp_path / "latency.png"
    model = str(exported_models["bert"])
    assert run_bench("--model", model, "--squad", str(squad), "--plot", str(plot)) == 1
    error = capsys.readouterr().err
    assert "--plot needs matplotlib" in error
    assert "ceiling" not in error, "nothing was measured"
    assert not plot.exists()


async def test_a_worker_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    settings = bench_worker_settings(Settings(model=tmp_path / "no-model", broker="127.0.0.1:9"))
    with pytest.raises(BenchError, match=r"exited with code 2(.|\n)*QA_MODEL: .*does not exist"):
        async with WorkerProcess(settings):
            pass


def test_medians_over_runs_take_each_runs_ratio_first() -> None:
    from worker.bench.medians import medians

    def run(ceiling: float, end_to_end: float) -> dict[str, Any]:
        return {
            "ceiling": {"events_per_s": ceiling},
            "end_to_end": {"events_per_s": end_to_end},
            "sweep": [],
            "targets": {
                "end_to_end_vs_ceiling": {"value": end_to_end / ceiling},
                "startup_s": {"value": ceiling / 100},
            },
        }

    rows = {name: row for name, *row in medians([run(100, 90), run(50, 40), run(80, 76)])}
    assert rows["ceiling events/s"][:3] == [80, 50, 100]
    # Per-run ratios 0.9, 0.8, 0.95: their median, not 76 / 80 (the ratio of the medians).
    ratio = rows["end_to_end / ceiling events/s (target)"]
    assert ratio[0] == pytest.approx(0.9)
    assert ratio[3] == ">= 0.85: met"
    assert rows["worker start to ready, s (target)"][3] == "<= 10: met"
    assert "reference events/s" not in rows


def test_the_window_is_timed_on_the_workers_layout_before_each_sweep_phase(
    bench_run: tuple[dict[str, Any], Path],
) -> None:
    report, _ = bench_run
    samples = report["window_inference_samples_ms"]
    assert len(samples) == len(SWEEP_LOADS)
    assert report["window_inference_ms"] == pytest.approx(statistics.median(samples), rel=1e-4)
    assert report["window_inference_threads"] == report["memory"]["threads"]
    assert report["window_inference_all_cores_ms"] > 0


def test_each_sweep_phase_places_its_slowest_answers_and_reads_the_runtime(
    bench_run: tuple[dict[str, Any], Path],
) -> None:
    report, _ = bench_run
    for entry in report["sweep"]:
        placement = entry["placement"]
        stages = [field.name for field in dataclasses.fields(Stages)][1:]  # after "submitted"
        expected = ["send", "to_worker", "parsed", *stages, "to_produce", "back"]
        assert list(placement["median_ms"]) == expected
        assert list(placement["slowest_mean_ms"]) == expected
        answered = entry["events"] - entry["dead_lettered"]
        assert placement["slowest_events"] == max(1, round(answered * SLOWEST_SHARE))
        # Each part is the gap between two instants that follow each other on one clock.
        assert placement["median_ms"]["inferred"] > 0
        assert placement["slowest_latency_ms"] >= entry["latency_ms"]["p50"]
        bound = entry["queueing_bound_ms"]
        assert 0 < bound["p50"] <= bound["p95"] <= bound["p99"]
        runtime = entry["runtime"]
        assert runtime["loop_lag_samples"] > 0
        assert runtime["loop_lag_p99_at_most_ms"] in [b * 1000 for b in LOOP_LAG_BUCKETS]
        assert set(runtime["gc_pauses"]) == {"0", "1", "2"}


def test_placement_splits_a_latency_into_parts_that_add_up() -> None:
    answer = {
        "timings": {
            "total_ms": 40.0,
            "read_ms": 6.0,
            "stages_ms": {"parsed": 1.0, "tokenize_started": 3.0, "decoded": 35.0},
        }
    }
    times = AnswerTimes.from_answer(answer, produced_ms=1_000.0, arrived_ms=1_004.5)
    parts = times.parts(latency_ms=52.0)
    assert parts == {
        "send": 52.0 - 4.5 - 40.0 - 6.0,
        "to_worker": 6.0,
        "parsed": 1.0,
        "tokenize_started": 2.0,
        "decoded": 32.0,
        "to_produce": 5.0,
        "back": 4.5,
    }
    assert sum(parts.values()) == pytest.approx(52.0)


def test_placement_averages_the_slowest_share_against_every_answers_median() -> None:
    answer = {"timings": {"total_ms": 10.0, "read_ms": 1.0, "stages_ms": {"inferred": 8.0}}}
    answers = {
        f"e{i}": AnswerTimes.from_answer(answer, produced_ms=0.0, arrived_ms=2.0) for i in range(40)
    }
    latencies = {f"e{i}": 13.0 + (100.0 if i == 7 else 0.0) for i in range(40)}
    placed = place_latencies(latencies, answers)
    assert placed["slowest_events"] == 2  # 5% of 40
    assert placed["slowest_latency_ms"] == pytest.approx((113.0 + 13.0) / 2)
    # The extra 100 ms of e7 came before the worker's timestamps: it is charged to the send.
    assert placed["slowest_mean_ms"]["send"] == pytest.approx(50.0)
    assert placed["median_ms"]["send"] == pytest.approx(0.0)


@pytest.mark.parametrize("lag_s", [0.0009, 0.001, 0.0011, 0.0049, 0.005, 0.0051, 9.0])
def test_loop_lag_quantile_is_the_bound_of_the_bucket_it_falls_in(lag_s: float) -> None:
    before = WorkerMetrics()
    before_totals = metric_totals(generate_latest(before.registry).decode())
    for _ in range(99):
        before.loop_lagged(0.0001)
    before.loop_lagged(lag_s)
    before.gc_paused(2, 0.05)
    after_totals = metric_totals(generate_latest(before.registry).decode())
    stats = runtime_statistics(before_totals, after_totals)
    assert stats["loop_lag_samples"] == 100
    expected = next((b * 1000 for b in LOOP_LAG_BUCKETS if lag_s <= b), math.inf)
    # 99 of 100 samples sit in the first bucket: the p99 is there, the p100 is the lag's.
    assert stats["loop_lag_p99_at_most_ms"] == LOOP_LAG_BUCKETS[0] * 1000
    buckets = [
        (bound, after_totals[f"qa_worker_event_loop_lag_seconds_bucket{{le={bound}}}"])
        for bound in LOOP_LAG_BUCKETS
    ]
    assert bucket_quantile(buckets, 100, 1.0) == expected
    assert stats["loop_lag_share_over_5ms"] == pytest.approx(0.01 if lag_s > 0.005 else 0.0)
    assert stats["gc_pauses"]["2"] == {"count": 1.0, "total_ms": pytest.approx(50.0)}
    assert stats["gc_pauses"]["0"]["count"] == 0


def test_long_contexts_are_the_files_contexts_in_turn_up_to_the_limit(tmp_path: Path) -> None:
    corpus = read_questions(write_squad(tmp_path / "squad.json", count=30, seed=8))
    contexts = list(dict.fromkeys(record.context for record in corpus))
    longest_word = max(len(word) for context in contexts for word in context.split())
    # Longer than all the contexts together: the file is gone round again.
    chars = sum(map(len, contexts)) + 500
    pairs = long_contexts(corpus, 3, chars)
    assert len({text for _, text in pairs}) == 3
    for start, (question, text) in enumerate(pairs):
        assert chars - longest_word - 1 <= len(text) <= chars
        assert not text.endswith(" ")
        # Each begins with a context of its own and asks a question about that one.
        assert text.startswith(contexts[start] + " " + contexts[start + 1])
        assert question in {r.question for r in corpus if r.context == contexts[start]}


def test_heavy_mix_is_a_bench_flag() -> None:
    assert build_parser().parse_args(["bench", "--squad", "q.json", "--heavy-mix"]).heavy_mix
    assert not build_parser().parse_args(["bench", "--squad", "q.json"]).heavy_mix


async def test_heavy_mix_phase_at_a_tiny_scale(
    export_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    """Long contexts on one partition and light questions on the others, then tagged documents,
    each case on a worker of its own: every event answered, and the figures agree with what the
    engine makes of the same inputs."""
    settings = Settings(model=export_factory("bert"), max_context_chars=4_000)
    corpus = read_questions(write_squad(tmp_path / "squad.json", count=40, seed=12))
    engine = load_engine(settings)
    light = one_window_records(corpus, Workload.encode(engine, corpus, settings.subset(QAOptions)))
    sizes = HeavyMix(
        long_counts=(2,), light_events_per_s=10.0, min_light_events=6, documents=2, fields=12
    )
    window_ms = 2.0
    report = await measure_heavy_mix(settings, None, corpus, light, window_ms, sizes)

    assert report["context_chars"] == settings.max_context_chars
    (case,) = report["long_contexts"]
    long, light_report = case["long"], case["light"]
    assert (long["events"], long["dead_lettered"]) == (2, 0)
    expected_windows = [
        len(engine.encode(question, context).windows)
        for question, context in long_contexts(corpus, 2, settings.max_context_chars)
    ]
    assert min(expected_windows) > 1
    assert long["windows_per_context"] == pytest.approx(statistics.fmean(expected_windows))
    assert 0 < long["first_answered_s"] <= long["all_answered_s"]
    assert light_report["events"] >= sizes.min_light_events
    assert light_report["dead_lettered"] == 0
    assert 0 <= light_report["sent_while_long_pending"] <= light_report["events"]
    # The long contexts had a partition to themselves, the light questions the others.
    assert long["partitions"] == [0]
    assert set(light_report["partitions"]) <= set(range(1, PARTITIONS))
    assert light_report["partitions"]
    latency = light_report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"]
    for name, ms in latency.items():
        assert light_report["latency_windows"][name] == pytest.approx(ms / window_ms)
    assert case["runtime"]["loop_lag_samples"] > 0

    tagging = report["tagging"]
    assert tagging["dead_lettered"] == 0
    assert tagging["tags_fields"] == [sizes.fields] * sizes.documents
    assert all(seconds > 0 for seconds in tagging["time_to_tags_s"])
    texts = [text for _, text in long_contexts(corpus, sizes.documents, 4_000)]
    questions = list(dict.fromkeys(record.question for record in corpus))[: sizes.fields]
    assert tagging["windows"] == sum(
        len(engine.encode(question, text).windows) for text in texts for question in questions
    )

    for measured in (case, tagging):
        rss = measured["rss_mb"]
        assert 0 < rss["idle"] <= rss["peak"]
        assert 0 < rss["after"] <= rss["peak"]
        assert rss["growth"] == pytest.approx(rss["peak"] - rss["idle"])
        assert measured["windows_per_s"] > 0
        assert measured["real_tokens_per_s"] > measured["windows_per_s"]
        plan = measured["batch_plan"]
        assert plan["batches"] > 0
        assert 0 < plan["mean_ms"] <= plan["max_at_most_ms"]
        assert measured["held_windows_max"] is not None
        assert measured["metrics_scrapes_failed"] == 0
        for probe in measured["probes"].values():
            assert probe["samples"] >= 1
            assert (probe["not_ok"], probe["no_answer"]) == (0, 0)
            assert probe["first_not_ok"] is None
            assert 0 < probe["p50_ms"] <= probe["max_ms"]

    compare_heavy_mix(report, {"windows_per_s": 10.0}, ceiling_window_tokens=100.0)
    assert case["windows_per_s_vs_ceiling"] == pytest.approx(case["windows_per_s"] / 10.0)
    assert tagging["real_tokens_per_s_vs_ceiling"] == pytest.approx(
        tagging["real_tokens_per_s"] / 1000.0
    )
