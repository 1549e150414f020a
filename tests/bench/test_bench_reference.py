"""`qa-worker bench --reference-python` beside the worker, on a broker already running: the
reference's section of the report. A reference test (it needs the reference environment), not a
broker one, though it starts a broker too: each test has one kind."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from parity.reference import reference_python
from tests.support.bench import run_bench, write_squad
from worker.embedded.broker import EmbeddedBroker


@pytest.mark.reference
async def test_reference_pipeline_runs_on_the_same_events_through_a_given_broker(
    exported_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--reference-python times transformers' pipeline; --broker uses a broker already running."""
    python = reference_python()
    squad = write_squad(tmp_path / "squad.json", count=8, seed=5)
    report_path = tmp_path / "report.json"
    async with EmbeddedBroker() as broker:
        code = await asyncio.to_thread(
            run_bench,
            "--model",
            str(exported_models["bert"]),
            "--precision",
            "fp32",
            "--squad",
            str(squad),
            "--events",
            "8",
            "--sweep-events",
            "4",
            "--broker",
            broker.bootstrap_servers,
            "--reference-python",
            str(python),
            "--json",
            str(report_path),
        )
    assert code == 0
    report = json.loads(report_path.read_text(encoding="utf-8"))
    reference = report["reference"]
    assert reference["events"] == 8
    assert reference["errors"] == 0
    assert reference["events_per_s"] > 0
    assert reference["versions"]["transformers"] == "4.57.6"
    manifest = json.loads((exported_models["bert"] / "manifest.json").read_text())
    assert reference["model"] == manifest["source"]
    assert report["peak_gemm"] == "fp32"
    assert report["end_to_end"]["events"] == 8
    assert "reference: " in capsys.readouterr().err
    versus = report["targets"]["end_to_end_vs_reference"]
    assert versus["value"] == pytest.approx(
        report["end_to_end"]["events_per_s"] / reference["events_per_s"], rel=1e-4
    )
