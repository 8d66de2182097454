"""maxp_core.sweep: local processes and Ray give the same records, failures are retried or kept,
an interrupted sweep resumes, and the report's numbers match a hand computation."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maxp_core import MaxPError
from maxp_core.cli import main as cli_main
from maxp_core.sweep import Grid, read_runs, run_sweep, summarize, write_report
from tests.core.sweep_toy import STEPS, expected_losses

TOY = "tests.core.sweep_toy:train"
ROOT = Path(__file__).resolve().parents[2]
GRID = Grid(lr=[0.1, 0.5, 1.5, 3.0], width=[64, 128], seed=[0, 1])


@pytest.fixture(autouse=True)
def markers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "markers"
    folder.mkdir()
    monkeypatch.setenv("SWEEP_TOY_MARKERS", str(folder))
    return folder


def by_id(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_runs(out)}


def check_against_closed_form(runs: dict[str, dict]) -> None:
    for run in runs.values():
        config = run["config"]
        expected = expected_losses(config["lr"], config["width"], config["seed"])
        diverges = abs(1 - config["lr"] * config["width"] / 64) > 1
        assert run["status"] == ("diverged" if diverges else "finished"), run["id"]
        losses = [r["loss"] for r in run["records"]]
        np.testing.assert_allclose(losses, expected[: len(losses)], rtol=1e-12, atol=1e-300)
        if diverges:  # stopped at the first loss above 3x the first one
            assert losses[-1] > 3 * losses[0] and all(v <= 3 * losses[0] for v in losses[:-1])
        else:
            assert len(losses) == STEPS
            assert run["final_loss"] == pytest.approx(float(np.mean(expected[-2:])), rel=1e-12)


def test_local_processes_train_every_run_and_stop_diverging_ones(tmp_path: Path) -> None:
    done = run_sweep(TOY, GRID, tmp_path / "local", jobs=2, progress=False)
    assert (done.trained, done.skipped, done.failed) == (len(GRID), 0, [])
    runs = by_id(tmp_path / "local")
    assert len(runs) == len(GRID)
    check_against_closed_form(runs)
    # lr 3.0 at both widths and 1.5 at width 128, for both seeds
    assert done.diverged == sum(r["status"] == "diverged" for r in runs.values()) == 6
    assert len({r["worker"] for r in runs.values()}) == 2  # two worker processes shared the runs
    # In this process, one run after another: the same records.
    run_sweep(TOY, GRID, tmp_path / "inline", backend="inline", progress=False)
    inline = by_id(tmp_path / "inline")
    for run_id, run in runs.items():
        assert inline[run_id]["records"] == run["records"] and inline[run_id]["status"] == run["status"]


def test_a_second_start_trains_only_what_is_not_done(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    run_sweep(TOY, GRID, out, backend="inline", progress=False)
    again = run_sweep(TOY, GRID, out, backend="inline", progress=False)
    assert (again.trained, again.skipped) == (0, len(GRID))
    runs_dir = out / "runs"
    removed = sorted(runs_dir.glob("*.json"))[:3]
    for path in removed:
        path.unlink()
    kept = {p.name: p.read_text() for p in runs_dir.glob("*.json")}
    resumed = run_sweep(TOY, GRID, out, jobs=2, progress=False)
    assert (resumed.trained, resumed.skipped) == (3, len(GRID) - 3)
    assert {p.name: p.read_text() for p in runs_dir.glob("*.json") if p.name in kept} == kept


def test_an_interrupted_sweep_resumes_without_losing_or_repeating_runs(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    grid = Grid(lr=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], mode=["slow"], seed=[0])
    command = [sys.executable, "-m", "maxp_core", "sweep", "run", TOY, "--out", str(out), "--jobs", "2"]
    command += ["--lr", *map(str, grid.axes["lr"]), "--set", "mode=slow", "--seed", "0", "--no-progress"]
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(list((out / "runs").glob("*.json"))) < 2 and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and its workers, mid-run
    process.wait()
    before = {p.name: p.read_text() for p in (out / "runs").glob("*.json")}
    assert 2 <= len(before) < len(grid)
    resumed = run_sweep(TOY, grid, out, jobs=2, progress=False)
    assert resumed.trained == len(grid) - len(before) and resumed.skipped == len(before)
    after = {p.name: p.read_text() for p in (out / "runs").glob("*.json")}
    assert len(after) == len(grid) and all(after[name] == text for name, text in before.items())
    assert not list((out / "runs").glob("*.partial"))


def test_failures_are_retried_and_a_run_failing_every_attempt_is_kept(tmp_path: Path) -> None:
    grid = Grid(lr=[0.1], mode=["ok", "raise_once", "die_once", "always_raise"], seed=[0])
    done = run_sweep(TOY, grid, tmp_path, jobs=2, retries=2, progress=False)
    runs = {r["config"]["mode"]: r for r in read_runs(tmp_path)}
    assert {mode: (r["status"], r["attempts"]) for mode, r in runs.items()} == {
        "ok": ("finished", 1),
        "raise_once": ("finished", 2),
        "die_once": ("finished", 2),  # its worker exited; the run went to a new one
        "always_raise": ("failed", 3),
    }
    assert done.failed == [grid.run_id({"lr": 0.1, "mode": "always_raise", "seed": 0})]
    assert done.retried == 1 + 1 + 2
    assert "ValueError: the toy always fails in this mode" in runs["always_raise"]["error"]
    # A failed run is tried again on the next start; the others are done.
    again = run_sweep(TOY, grid, tmp_path, jobs=1, retries=0, progress=False)
    assert (again.skipped, again.failed) == (3, done.failed)


def test_ray_gives_the_records_local_processes_give(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    grid = Grid(lr=[0.5, 3.0], width=[64, 128], mode=["ok", "die_once"], seed=[0])
    run_sweep(TOY, grid, tmp_path / "local", jobs=2, progress=False)
    (tmp_path / "ray_markers").mkdir()  # the die_once runs die on their first Ray attempt too
    monkeypatch.setenv("SWEEP_TOY_MARKERS", str(tmp_path / "ray_markers"))
    done = run_sweep(TOY, grid, tmp_path / "ray", backend="ray", progress=False)
    assert done.failed == [] and done.retried == 4  # each die_once run lost its worker once
    local, ray = by_id(tmp_path / "local"), by_id(tmp_path / "ray")
    assert set(local) == set(ray)
    for run_id in local:
        assert ray[run_id]["records"] == local[run_id]["records"], run_id
        for key in ("status", "attempts"):
            assert ray[run_id][key] == local[run_id][key], (run_id, key)


def _record(
    lr: float, seed: int, loss: float | None, method: str = "maxp", width: int = 64, status: str = "finished"
) -> dict:
    return {
        "id": f"{method}{width}lr{lr}s{seed}",
        "config": {"lr": lr, "width": width, "method": method, "seed": seed},
        "status": status,
        "final_loss": loss,
        "records": [{"step": 0, "loss": 1.0}, {"step": 1, "loss": loss if loss is not None else math.nan}],
    }


def test_the_report_matches_a_hand_computation(tmp_path: Path) -> None:
    runs = [
        # maxp at width 64: 0.1 -> (0.50, 0.54), 0.3 -> (0.40, 0.44), 1.0 -> one seed diverged
        _record(0.1, 0, 0.50), _record(0.1, 1, 0.54), _record(0.3, 0, 0.40), _record(0.3, 1, 0.44),
        _record(1.0, 0, 0.30), _record(1.0, 1, None, status="diverged"),
        # maxp at width 256: best stays at 0.3
        _record(0.1, 0, 0.30, width=256), _record(0.1, 1, 0.32, width=256),
        _record(0.3, 0, 0.20, width=256), _record(0.3, 1, 0.21, width=256),
        _record(1.0, 0, None, width=256, status="diverged"),
        _record(1.0, 1, None, width=256, status="failed"),
        # mup at width 64: best 0.1; at width 256: best 0.1 (0.3 diverged)
        _record(0.1, 0, 0.45, "mup"), _record(0.1, 1, 0.47, "mup"), _record(0.3, 0, 0.46, "mup"),
        _record(0.3, 1, 0.49, "mup"), _record(1.0, 0, None, "mup", status="diverged"),
        _record(0.1, 0, 0.25, "mup", 256), _record(0.1, 1, 0.26, "mup", 256),
        _record(0.3, 0, None, "mup", 256, "diverged"), _record(0.3, 1, 0.1, "mup", 256),
    ]  # fmt: skip
    for run in runs:
        (tmp_path / "runs").mkdir(exist_ok=True)
        (tmp_path / "runs" / f"{run['id']}.json").write_text(json.dumps(run))
    grid = {"lr": [0.1, 0.3, 1.0], "width": [64, 256], "method": ["maxp", "mup"], "seed": [0, 1]}
    (tmp_path / "sweep.json").write_text(json.dumps({"grid": grid, "train": "by hand"}))
    report = write_report(tmp_path, plots=False)
    settings = {(s["setting"]["method"], s["setting"]["width"]): s for s in report["settings"]}
    assert list(settings) == [("maxp", 64), ("mup", 64), ("maxp", 256), ("mup", 256)]  # the grid's order
    maxp64 = settings["maxp", 64]
    assert maxp64["best_lr"] == 0.3 and maxp64["best_loss"] == pytest.approx(0.42)
    assert maxp64["spread"] == pytest.approx(0.04) and maxp64["std"] == pytest.approx(0.04 / math.sqrt(2))
    assert maxp64["first_diverging_lr"] == 1.0 and maxp64["diverging_over_best"] == pytest.approx(1 / 0.3)
    assert (maxp64["basin_1"], maxp64["basin_5"]) == (1, 1)  # 0.52 is 24% above 0.42
    mup64 = settings["mup", 64]
    assert mup64["best_lr"] == 0.1 and mup64["best_loss"] == pytest.approx(0.46)
    assert (mup64["basin_1"], mup64["basin_5"]) == (1, 2)  # 0.475 is 3.3% above
    assert settings["maxp", 256]["failed"] == 1 and settings["maxp", 256]["first_diverging_lr"] == 1.0
    assert settings["mup", 256]["best_lr"] == 0.1  # 0.3 had a diverged seed: not a candidate
    shifts = {(t["axis"], t["held"]["method"]): t["shift_log2"] for t in report["transfer"]}
    assert shifts == {("width", "maxp"): 0.0, ("width", "mup"): 0.0}
    paired = {(p["held"]["width"], p["first"], p["second"]): p for p in report["paired"]}
    at64 = paired[64, "maxp", "mup"]  # maxp at 0.3 (0.40, 0.44) against mup at 0.1 (0.45, 0.47)
    assert at64["seeds"] == 2 and at64["first_wins"] == 2
    assert at64["mean_difference"] == pytest.approx(((0.40 - 0.45) + (0.44 - 0.47)) / 2)
    assert at64["sign_test_p"] == pytest.approx(0.5)  # 2 wins of 2: 2 * (1/4)
    text = (tmp_path / "sweep-report.md").read_text()
    assert "Best learning rate per setting" in text and "Paired seeds" in text
    assert json.loads((tmp_path / "sweep-report.json").read_text())["counts"] == {
        "finished": 16,
        "diverged": 4,
        "failed": 1,
    }


def test_the_report_draws_transfer_curves_and_maxp_trajectories(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    grid = Grid(lr=[0.1, 0.5, 3.0], width=[64, 128], seed=[0])
    run_sweep(TOY, grid, tmp_path, backend="inline", progress=False)
    run = next(iter(read_runs(tmp_path)))  # give one run maxp's per-layer metrics, as a user's would
    run["records"] = [{**r, "maxp/lr/fc": 0.1, "maxp/alpha/fc": 0.5} for r in run["records"]]
    (tmp_path / "runs" / f"{run['id']}.json").write_text(json.dumps(run))
    summary = write_report(tmp_path)
    for name in ("sweep-transfer.png", "sweep-curves.png"):
        assert (tmp_path / name).stat().st_size > 5000, name
    drawn = list(tmp_path.glob("sweep-trajectory-*.png"))
    best = {s["setting"]["width"]: s["best_lr"] for s in summary["settings"]}
    assert len(drawn) == (run["config"]["lr"] == best[run["config"]["width"]])
    assert "![sweep-transfer](sweep-transfer.png)" in (tmp_path / "sweep-report.md").read_text()


def test_the_command_line_runs_and_reports_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sweep"
    argv = ["sweep", "run", TOY, "--lr", "0.1", "3", "--width", "64", "128", "--seed", "0", "--out", str(out)]
    assert cli_main([*argv, "--backend", "inline", "--no-progress"]) == 0
    assert "4 trained" in capsys.readouterr().out
    assert cli_main(["sweep", "report", str(out), "--no-plots"]) == 0
    shown = capsys.readouterr().out
    assert "Best learning rate per setting" in shown and (out / "sweep-report.json").exists()
    assert cli_main(["sweep", "report", str(tmp_path / "empty")]) == 2
    assert "holds no run records" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ({"width": [64]}, "needs learning rates"),
        ({"lr": []}, "has no values"),
        ({"lr": [0.1, -1.0]}, "positive finite"),
        ({"lr": [0.1], "width": [64, 64]}, "repeats a value"),
        ({"lr": [0.1], "model width": [64]}, "must be a Python identifier"),
        ({"lr": [0.1], "width": [[64]]}, "numbers, text or booleans"),
        ({"lr": [0.1, 0.1000000001]}, "share the file name"),
    ],
)
def test_a_bad_grid_is_refused_naming_the_axis(axes: dict, message: str) -> None:
    with pytest.raises(MaxPError, match=message):
        Grid(**axes)


def test_a_training_function_that_returns_no_records_or_bad_ones_fails_by_name(tmp_path: Path) -> None:
    grid = Grid(lr=[0.1])
    bad = [("nothing", lambda config: []), ("text", lambda config: [{"step": 0, "loss": "low"}])]
    for name, train in bad:
        done = run_sweep(train, grid, tmp_path / name, backend="inline", retries=0, progress=False)
        (run,) = read_runs(tmp_path / name)
        assert done.failed and run["status"] == "failed", name
    assert "returned no records" in read_runs(tmp_path / "nothing")[0]["error"]
    assert "'loss' is 'low'" in read_runs(tmp_path / "text")[0]["error"]
    with pytest.raises(MaxPError, match="has no function 'nope'"):
        run_sweep("tests.core.sweep_toy:nope", grid, tmp_path / "x", backend="inline", progress=False)
    assert summarize(read_runs(tmp_path / "nothing"))["counts"]["failed"] == 1


def test_workers_may_start_processes_and_one_dying_while_idle_is_replaced(tmp_path: Path) -> None:
    grid = Grid(lr=[0.1, 0.2, 0.3, 0.4], mode=["child", "die_after"], seed=[0])
    done = run_sweep(TOY, grid, tmp_path, jobs=1, progress=False)
    assert done.failed == [] and done.trained == len(grid)
    assert all(r["status"] == "finished" for r in read_runs(tmp_path))


def test_a_training_function_workers_cannot_load_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(MaxPError, match="cannot be sent to worker processes"):
        run_sweep(lambda config: [], Grid(lr=[0.1]), tmp_path, jobs=1, progress=False)


def test_a_folder_keeps_one_training_function_and_reports_its_last_grid(tmp_path: Path) -> None:
    run_sweep(TOY, Grid(lr=[0.1, 0.5], width=[64, 128]), tmp_path, backend="inline", progress=False)
    with pytest.warns(UserWarning, match="last ran another grid"):
        run_sweep(TOY, Grid(lr=[0.1, 0.5]), tmp_path, backend="inline", progress=False)
    with pytest.warns(UserWarning, match="4 of 6 run records belong to another grid"):
        report = write_report(tmp_path, plots=False)
    assert [s["setting"] for s in report["settings"]] == [{}]
    assert report["settings"][0]["seeds_at_best"] == 1  # not averaged with the width runs
    with pytest.raises(MaxPError, match=r"holds a sweep of tests\.core\.sweep_toy:train"):
        run_sweep("tests.core.sweep_toy:expected_losses", Grid(lr=[0.1]), tmp_path, backend="inline")


def test_basins_with_negative_losses_and_rates_with_a_failed_seed() -> None:
    def run(lr: float, seed: int, loss: float | None, status: str = "finished") -> dict:
        return {"config": {"lr": lr, "seed": seed}, "status": status, "final_loss": loss, "records": []}

    runs = [run(0.1, 0, -2.0), run(0.1, 1, -2.0), run(0.3, 0, -1.95), run(0.3, 1, -1.95)]
    runs += [run(1.0, 0, -9.0), run(1.0, 1, None, "failed")]  # one seed's loss unknown: no candidate
    (setting,) = summarize(runs)["settings"]
    assert setting["best_lr"] == 0.1 and setting["failed"] == 1
    assert (setting["basin_1"], setting["basin_5"]) == (1, 2)  # -1.95 is 2.5% above -2


def test_a_grid_takes_numpy_values_as_python_numbers() -> None:
    grid = Grid(lr=np.logspace(-3, -1, 3), width=np.array([64, 128]), seed=range(2))
    config = grid.configs()[0]
    assert config == {"lr": 0.001, "width": 64, "seed": 0}
    assert type(config["lr"]) is float and type(config["width"]) is int


def test_a_record_error_is_not_retried_and_the_command_line_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["sweep", "run", "tests.core.sweep_toy:no_loss", "--lr", "0.1", "--out", str(tmp_path)]
    assert cli_main([*argv, "--backend", "inline", "--no-progress"]) == 1
    shown = capsys.readouterr().out
    assert "1 failed" in shown and "lacks ['loss']; each record needs 'step' and 'loss'" in shown
    (run,) = read_runs(tmp_path)
    assert run["attempts"] == 1  # the same records would come again: not retried


def test_a_new_training_function_may_take_a_folder_holding_no_runs(tmp_path: Path) -> None:
    (tmp_path / "sweep.json").write_text(json.dumps({"grid": {"lr": [0.1]}, "train": "__main__:<lambda>"}))
    done = run_sweep(TOY, Grid(lr=[0.1]), tmp_path, backend="inline", progress=False)
    assert done.trained == 1
    assert json.loads((tmp_path / "sweep.json").read_text())["train"] == TOY


def test_a_report_of_failed_runs_only_draws_without_error(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    grid = Grid(lr=[0.1, 0.5], mode=["always_raise"])
    run_sweep(TOY, grid, tmp_path, backend="inline", retries=0, progress=False)
    summary = write_report(tmp_path)
    assert summary["counts"]["failed"] == 2 and (tmp_path / "sweep-transfer.png").exists()


def test_ctrl_c_keeps_what_finished_and_says_how_to_resume(tmp_path: Path) -> None:
    from maxp_core.sweep.runner import SweepInterrupted

    grid = Grid(lr=[0.1, 0.2, 0.5], mode=["interrupt"])
    with pytest.raises(SweepInterrupted, match="2 runs trained this time are saved"):
        run_sweep(TOY, grid, tmp_path, backend="inline", progress=False)
    assert len(read_runs(tmp_path)) == 2


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"backend": "slurm"}, "backend"),
        ({"retries": -1}, "retries"),
        ({"divergence_factor": 0.5}, "divergence_factor must be above 1"),
        ({"jobs": 0}, "jobs"),
        ({"cpus_per_run": 0}, "cpus_per_run"),
        ({"gpus_per_run": -1}, "gpus_per_run"),
    ],
)
def test_a_bad_option_is_refused_naming_it(tmp_path: Path, option: dict, message: str) -> None:
    with pytest.raises(MaxPError, match=message):
        run_sweep(TOY, Grid(lr=[0.1]), tmp_path, progress=False, **option)
