"""The sweep tool: divergence stops a run early, and a second start resumes without redoing runs."""

import json

import pytest

pytest.importorskip("torch")

from benchmarks.sweep import main, run_one


def test_divergence_stops_early() -> None:
    run = run_one("sp", 64, 30.0, 0, steps=60)
    assert run["diverged"] and run["steps"] < 60 and run["final_train_loss"] == float("inf")


def test_sweep_writes_runs_and_resumes(tmp_path) -> None:
    args = [
        "--widths",
        "32",
        "64",
        "--lrs",
        "0.01",
        "0.1",
        "--methods",
        "sp",
        "maxp",
        "--steps",
        "25",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    runs = sorted((tmp_path / "runs").glob("*.json"))
    assert len(runs) == 8
    stamps = {p: p.stat().st_mtime_ns for p in runs}
    record = json.loads(runs[0].read_text())
    assert {"method", "width", "lr", "losses", "diverged"} <= set(record)
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in runs} == stamps  # nothing re-run
    report = (tmp_path / "sweep.md").read_text()
    assert "best lr" in report and (tmp_path / "sweep-transfer.png").exists()
