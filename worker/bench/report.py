"""What the bench says: notes while it runs, the derived figures and target checks, the summary."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

Report = dict[str, Any]

# The worker's performance targets, each checked on every report: (name, what is compared,
# operator, limit).
TARGETS = (
    (
        "per_core_efficiency",
        "end_to_end events per worker core-second / ceiling events per core-second",
        ">=",
        0.95,
    ),
    ("end_to_end_vs_ceiling", "end_to_end / ceiling events/s", ">=", 0.85),
    ("end_to_end_vs_baseline", "end_to_end / baseline events/s", ">=", 1.0),
    ("ceiling_peak_share", "ceiling share of the large-matrix GEMM peak", ">=", 0.40),
    ("p50_at_25pct_load", "latency p50 at 25% load / window inference", "<=", 1.2),
    ("p99_at_75pct_load", "latency p99 at 75% load / window inference", "<=", 5.0),
    ("goodput_vs_end_to_end", "goodput at the SLO / end_to_end events/s", ">=", 0.9),
    # Read as the upper bound of the histogram bucket holding the p99, which is at most it.
    (
        "loop_lag_p99_at_75pct_load",
        "event-loop lag p99 at 75% load, ms (upper bucket bound)",
        "<=",
        5.0,
    ),
    ("idle_cpu_cores", "worker CPU cores with nothing to do", "<=", 0.02),
    ("padding_ratio", "padded / real tokens, end to end", "<=", 1.05),
    ("peak_rss_mb", "worker peak RSS, MB", "<=", 600.0),
    ("startup_s", "worker start to ready, s", "<=", 10.0),
    ("end_to_end_vs_reference", "end_to_end / reference pipeline events/s", ">=", 3.0),
)

THROUGHPUT_SECTIONS = ("ceiling", "baseline", "engine", "end_to_end")


def note(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def add_derived(report: Report) -> None:
    """Windows/s, GFLOP/s and share of the GEMM peak per throughput section, and the targets.

    The peak is the one of the model's precision: an int8 model runs most of its products (all
    but attention's) in int8, several times faster than float32 ones. The ceiling's share of the
    rate at the model's own shapes is beside it where that was measured (int8 models).
    """
    int8 = report["precision"] == "int8"
    report["peak_gemm"] = "int8" if int8 else "fp32"
    peak = report["gemm_int8_gops"] if int8 else report["gemm_gflops"]
    windows_per_event = report["windows"] / report["events"]
    for name in THROUGHPUT_SECTIONS:
        section = report[name]
        section["windows_per_s"] = section["events_per_s"] * windows_per_event
        section["gflops"] = section["windows_per_s"] * report["model_gflop_per_window"]
        section["peak_share"] = section["gflops"] / peak
    ceiling, end_to_end = report["ceiling"], report["end_to_end"]
    shapes = report.get("gemm_model_shapes")
    ceiling["shape_matched_share"] = ceiling["gflops"] / shapes["gops"] if shapes else None
    worker_cores = end_to_end["cpu_cores"].get("worker")
    end_to_end["events_per_core_s"] = (
        end_to_end["events_per_s"] / worker_cores if worker_cores else None
    )
    if "heavy_mix" in report:
        compare_heavy_mix(report["heavy_mix"], ceiling, report["mean_window_tokens"])
    report["targets"] = target_checks(report)


def compare_heavy_mix(heavy_mix: Report, ceiling: Report, ceiling_window_tokens: float) -> None:
    """Each heavy-mix case's windows/s against the ceiling's, and its real tokens/s too: the
    ceiling's windows are the workload's (of `ceiling_window_tokens` on average), a long
    context's are full ones, so tokens are the fairer measure of the work done."""
    ceiling_tokens_per_s = ceiling["windows_per_s"] * ceiling_window_tokens
    for case in (*heavy_mix["long_contexts"], heavy_mix["tagging"]):
        case["windows_per_s_vs_ceiling"] = case["windows_per_s"] / ceiling["windows_per_s"]
        case["real_tokens_per_s_vs_ceiling"] = case["real_tokens_per_s"] / ceiling_tokens_per_s


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def target_checks(report: Report) -> Report:
    by_load = {entry["load"]: entry["latency_ms"] for entry in report["sweep"]}
    runtime_by_load = {entry["load"]: entry["runtime"] for entry in report["sweep"]}
    window_ms = report["window_inference_ms"]
    end_to_end = report["end_to_end"]["events_per_s"]
    values = {
        "per_core_efficiency": _ratio(
            report["end_to_end"]["events_per_core_s"], report["ceiling"]["events_per_core_s"]
        ),
        "end_to_end_vs_ceiling": end_to_end / report["ceiling"]["events_per_s"],
        "end_to_end_vs_baseline": end_to_end / report["baseline"]["events_per_s"],
        "ceiling_peak_share": report["ceiling"]["peak_share"],
        "p50_at_25pct_load": by_load[0.25]["p50"] / window_ms,
        "p99_at_75pct_load": by_load[0.75]["p99"] / window_ms,
        "goodput_vs_end_to_end": report["goodput"]["events_per_s"] / end_to_end,
        "loop_lag_p99_at_75pct_load": runtime_by_load[0.75]["loop_lag_p99_at_most_ms"],
        "idle_cpu_cores": report["idle_cpu_cores"],
        "padding_ratio": report["padding_ratio"],
        "peak_rss_mb": report["peak_rss_mb"],
        "startup_s": report["startup_s"],
        "end_to_end_vs_reference": _ratio(
            end_to_end, report["reference"]["events_per_s"] if "reference" in report else None
        ),
    }
    checks: Report = {}
    for name, meaning, operator, limit in TARGETS:
        value = values[name]
        if value is None:  # no CPU clocks or /proc here; no reference run
            continue
        checks[name] = {
            "value": value,
            "limit": f"{operator} {limit:g}",
            "met": meets(value, operator, limit),
            "what": meaning,
        }
    return checks


def meets(value: float, operator: str, limit: float) -> bool:
    """Whether `value` meets a target given as an operator of TARGETS and its limit."""
    return value >= limit if operator == ">=" else value <= limit


def significant(value: Any, digits: int = 6) -> Any:
    """The report with floats cut to `digits` significant digits, which is all they are worth."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {key: significant(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [significant(item, digits) for item in value]
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
        f"tokens in {report['window_inference_ms']:.2f} ms on {report['window_inference_threads']} "
        f"thread(s), the median over the sweep's phases "
        f"({', '.join(f'{ms:.1f}' for ms in report['window_inference_samples_ms'])}); "
        f"{report['window_inference_all_cores_ms']:.2f} ms on all cores",
        _throughput_text("ceiling", report) + ", " + _layout_text(report["ceiling"]),
        "ceiling by layout (streams x threads): "
        + ", ".join(
            f"{row['streams']}x{row['threads']} b{row['batch_size']} {row['events_per_s']:.1f}"
            for row in report["ceiling"]["layouts"]
        ),
        _throughput_text("baseline", report) + ", " + _layout_text(report["baseline"]),
        _shapes_text(report),
        _throughput_text("engine", report),
        _throughput_text("end_to_end", report) + ", " + _latency_text(report["end_to_end"]),
        "end_to_end CPU cores used: "
        + ", ".join(
            f"{name} {cores:.2f}" for name, cores in report["end_to_end"]["cpu_cores"].items()
        ),
        *(
            f"sweep {entry['load']:.0%}: {entry['events_per_s']:.1f} events/s, "
            + _latency_text(entry)
            + "\n  "
            + _runtime_text(entry["runtime"])
            + "\n  "
            + _placement_text(entry["placement"])
            for entry in report["sweep"]
        ),
        _goodput_text(report["goodput"]),
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
        + f", padding ratio {report['padding_ratio']:.3f}, idle "
        + _optional(report["idle_cpu_cores"], "{:.4f} cores")
    )
    if "heavy_mix" in report:
        lines += _heavy_mix_lines(report["heavy_mix"])
    memory = report["memory"]
    memory_text = (
        f"memory: {memory['streams']} streams of {memory['threads']} threads, peak RSS "
        + _optional(memory["peak_rss_mb"], "{:.0f} MB")
    )
    if memory["streams"] > 1:
        memory_text += (
            "; one stream "
            + _optional(memory["one_stream_peak_rss_mb"], "{:.0f} MB")
            + "; per stream "
            + _optional(memory["rss_per_stream_mb"], "{:.1f} MB")
        )
    lines.append(memory_text)
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


def _optional(value: float | None, form: str) -> str:
    return "unknown" if value is None else form.format(value)


def _layout_text(section: Report) -> str:
    return (
        f"{section['streams']} streams x {section['threads']} threads, batch size "
        f"{section['batch_size']}, {section['cpu_cores']:.2f} cores, "
        f"{section['events_per_core_s']:.1f} events per core-second"
    )


def _shapes_text(report: Report) -> str:
    shapes = report["gemm_model_shapes"]
    if shapes is None:
        return "GEMM at the model's shapes: not measured (no MatMulInteger in the model)"
    return (
        f"GEMM at the model's shapes (M {shapes['m']}, {shapes['streams']} x "
        f"{shapes['threads']}): {shapes['gops']:.1f} GOP/s; the ceiling reaches "
        f"{report['ceiling']['shape_matched_share']:.1%} of it"
    )


def _goodput_text(goodput: Report) -> str:
    steps = ", ".join(
        f"{step['target_events_per_s']:.1f} ({step['p99_ms']:.0f} ms "
        + ("met" if step["met"] else "missed")
        + ")"
        for step in goodput["steps"]
    )
    return (
        f"goodput at p99 <= {goodput['slo_ms']:.1f} ms: {goodput['events_per_s']:.1f} events/s "
        f"(steps, events/s and p99: {steps})"
    )


def _latency_text(phase: Report) -> str:
    def milliseconds(latency: Mapping[str, float]) -> str:
        return "/".join(f"{latency[p]:.1f}" for p in ("p50", "p95", "p99"))

    bound = phase.get("queueing_bound_ms")
    return (
        f"latency p50/p95/p99 {milliseconds(phase['latency_ms'])} ms "
        f"(in the worker {milliseconds(phase['worker_latency_ms'])}"
        + ("" if bound is None else f"; queueing alone allows {milliseconds(bound)}")
        + ")"
    )


def _placement_text(placement: Report) -> str:
    """The parts of the slowest answers' latency that stand furthest above their median."""
    slowest, median = placement["slowest_mean_ms"], placement["median_ms"]
    excess = sorted(slowest, key=lambda name: slowest[name] - median[name], reverse=True)
    parts = ", ".join(f"{name} {slowest[name]:.1f} (median {median[name]:.1f})" for name in excess)
    return (
        f"slowest {placement['slowest_events']}, {placement['slowest_latency_ms']:.1f} ms on "
        f"average, by part in ms: {parts}"
    )


def _heavy_mix_lines(heavy_mix: Report) -> list[str]:
    lines = []
    for case in heavy_mix["long_contexts"]:
        long, light = case["long"], case["light"]
        lines.append(
            f"heavy mix, {case['long_contexts']} contexts of {heavy_mix['context_chars']:,} "
            f"characters ({long['windows_per_context']:.0f} windows each) on partition "
            f"{long['partitions']}, the first answered in {long['first_answered_s']:.1f} s, all "
            f"in {long['all_answered_s']:.1f} s; "
            f"{light['events']} one-window questions on partitions {light['partitions']}: "
            f"p50/p99 {light['latency_ms']['p50']:.1f}/{light['latency_ms']['p99']:.1f} ms, "
            f"{light['latency_windows']['p50']:.1f}/{light['latency_windows']['p99']:.1f} windows"
            "\n  " + _heavy_case_text(case)
        )
    tagging = heavy_mix["tagging"]
    times = ", ".join(_optional(seconds, "{:.1f}") for seconds in tagging["time_to_tags_s"])
    lines.append(
        f"heavy mix, {tagging['documents']} documents tagged with {tagging['fields']} fields: "
        f"tags events after {times} s\n  " + _heavy_case_text(tagging)
    )
    return lines


def _heavy_case_text(case: Report) -> str:
    rss, plan, probes = case["rss_mb"], case["batch_plan"], case["probes"]
    return (
        f"RSS growth {_optional(rss['growth'], '{:.0f} MB')} (idle "
        f"{_optional(rss['idle'], '{:.0f}')}, peak {_optional(rss['peak'], '{:.0f}')}, after "
        f"{_optional(rss['after'], '{:.0f}')}); "
        f"{case['windows_per_s']:.1f} windows/s ({case['windows_per_s_vs_ceiling']:.2f} of the "
        f"ceiling's, tokens {case['real_tokens_per_s_vs_ceiling']:.2f}); event-loop lag p99 <= "
        f"{_optional(case['runtime']['loop_lag_p99_at_most_ms'], '{:g}')} ms; batch plan mean "
        f"{_optional(plan['mean_ms'], '{:.3f}')} ms, max <= "
        f"{_optional(plan['max_at_most_ms'], '{:g}')} ms; probes max "
        + ", ".join(
            f"{name} {_optional(probe['max_ms'], '{:.0f}')} ms ({probe['not_ok']} not 200, "
            f"{probe['no_answer']} unanswered)"
            for name, probe in probes.items()
        )
        + "".join(
            f"\n  first {name} not 200: {probe['first_not_ok']}"
            for name, probe in probes.items()
            if probe["first_not_ok"] is not None
        )
    )


def _runtime_text(runtime: Report) -> str:
    pauses = ", ".join(
        f"gen {generation} {gc['count']:.0f} ({gc['total_ms']:.1f} ms)"
        for generation, gc in runtime["gc_pauses"].items()
    )
    return (
        f"event-loop lag p99 <= {_optional(runtime['loop_lag_p99_at_most_ms'], '{:g}')} ms, mean "
        f"{_optional(runtime['loop_lag_mean_ms'], '{:.2f}')} ms; GC pauses {pauses}"
    )
