"""The digits examples run end to end, re-solve, and learn."""

import importlib
import io
from contextlib import redirect_stdout

import pytest


@pytest.mark.parametrize(("example", "framework"), [("digits_jax", "jax"), ("digits_torch", "torch")])
def test_digits_example_runs(example: str, framework: str) -> None:
    pytest.importorskip(framework)
    main = importlib.import_module(f"examples.{example}").main
    out = io.StringIO()
    with redirect_stdout(out):
        main(
            [
                "--width",
                "64",
                "--depth",
                "3",
                "--steps",
                "40",
                "--warmup-steps",
                "5",
                "--solve-interval",
                "10",
            ]
        )
    text = out.getvalue()
    assert "after last solve" in text
    assert "re-solves: 3" in text
    assert float(text.split("test accuracy ")[1].split()[0]) > 0.5


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_the_sweep_examples_train_both_arms_through_maxp_core_sweep(framework: str, tmp_path) -> None:
    """A user's own training function, as the examples write it, swept with maxp and muP arms."""
    pytest.importorskip(framework)
    from maxp_core.sweep import Grid, read_runs, run_sweep, write_report

    grid = Grid(lr=[3e-3, 3.0], width=[32], method=["maxp", "mup"], seed=[0], steps=[30])
    done = run_sweep(f"examples.sweep_{framework}:train", grid, tmp_path, backend="inline", progress=False)
    runs = {(r["config"]["method"], r["config"]["lr"]): r for r in read_runs(tmp_path)}
    assert done.failed == [], [r["error"] for r in runs.values()]
    small = runs["maxp", 3e-3]
    assert small["status"] == "finished" and len(small["records"]) == 30
    assert small["records"][-1]["loss"] < small["records"][0]["loss"]  # it learns
    # maxP's per-layer rates ride along in the maxp arm's records, and its re-solve happened.
    logged = [r for r in small["records"] if "maxp/solves" in r]
    assert logged and logged[-1]["maxp/solves"] >= 1
    assert not any("maxp/solves" in r for r in runs["mup", 3e-3]["records"])
    summary = write_report(tmp_path, plots=False)
    assert {s["setting"]["method"]: s["best_lr"] for s in summary["settings"]} == {"maxp": 3e-3, "mup": 3e-3}


def test_the_benchmark_tasks_are_ordinary_training_functions(tmp_path) -> None:
    """benchmarks.sweep's digits task through maxp_core.sweep: the same losses its own runner
    gets from the same trainer."""
    pytest.importorskip("torch")
    from benchmarks.sweep import make_trainer
    from benchmarks.sweep_tasks import load_task
    from maxp_core.sweep import Grid, read_runs, run_sweep

    grid = Grid(lr=[0.01], width=[32], method=["sp", "maxp"], seed=[0], steps=[25], task=["digits"])
    run_sweep("benchmarks.sweep_train:train", grid, tmp_path, backend="inline", progress=False)
    for run in read_runs(tmp_path):
        direct = make_trainer(load_task("digits"), "torch", run["config"]["method"], 32)(0.01, 0, 25)
        assert [r["loss"] for r in run["records"]] == direct["losses"], run["id"]
        assert run["records"][-1]["test_loss"] == direct["test_loss"]
