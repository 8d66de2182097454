"""The sweep tool: tasks, divergence stop, resume without redoing runs, both frameworks, parallel jobs."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("torch")

from benchmarks.sweep import TABLE_FRACTION, main, make_trainer, maxp_against_mup, summarize
from benchmarks.sweep_tasks import diverged, load_task
from examples.common import CHAR_VOCAB, stdlib_text
from maxp_core.metrics import MetricsRun
from maxp_core.tables import AlignmentTable, measure_table


def test_stdlib_text_is_the_standard_library_sources() -> None:
    import string

    text = stdlib_text()
    assert 3e6 < len(text) < 2e7  # about 4.7 MB on CPython 3.11/3.12
    assert text.max() < CHAR_VOCAB
    decoded = bytes(text[:200_000]).decode("ascii")
    assert "def " in decoded and "import " in decoded
    assert np.mean([c in string.printable for c in decoded]) > 0.99


def test_char_batches_are_next_character_pairs() -> None:
    task = load_task("chars")
    x, y = task.sample(np.random.default_rng(0))
    assert x.shape == y.shape == (task.batch, task.context)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    x2, _ = task.sample(np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)  # the seed fixes the batches


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_divergence_stops_early(framework: str) -> None:
    run = make_trainer(load_task("digits"), framework, "sp", 64, "cpu")(30.0, 0, 60)
    assert run["diverged"] and run["steps"] < 60 and run["final_train_loss"] == float("inf")
    assert diverged(run["losses"][-1], run["losses"][0])
    assert not any(diverged(v, run["losses"][0]) for v in run["losses"][:-1])


# In JAX, maxP's re-solve is compiled into the step, which takes 10 s longer to compile for
# this GPT than muP's fixed rates; the JAX trainer's maxP path is tested on digits below and
# maxP's re-solves on this flax GPT in tests/parity/test_graphs.py.
@pytest.mark.parametrize(("framework", "method"), [("torch", "maxp"), ("jax", "mup-full")])
def test_char_transformer_learns(framework: str, method: str) -> None:
    run = make_trainer(load_task("chars"), framework, method, 32, "cpu")(0.3, 0, 40)
    assert not run["diverged"]
    # Starts near a uniform guess over the alphabet and learns the character frequencies at least.
    assert abs(run["losses"][0] - math.log(CHAR_VOCAB)) < 0.5
    assert run["final_train_loss"] < 3.5 and run["test_loss"] < 3.6


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_maxp_digits_mlp_learns_and_records_its_run(framework: str) -> None:
    # 30 steps: past maxP's warm-up of 20 steps, so the rates are re-solved during the run.
    run = make_trainer(load_task("digits"), framework, "maxp", 64, "cpu")(0.1, 0, 30)
    assert {"method", "width", "lr", "seed", "losses", "diverged", "test_loss"} <= set(run)
    assert (run["framework"], run["method"], run["width"], run["steps"]) == (framework, "maxp", 64, 30)
    assert not run["diverged"] and len(run["losses"]) == 30
    # Starts near a uniform guess over the ten digits and learns them.
    assert abs(run["losses"][0] - math.log(10)) < 0.2
    assert run["final_train_loss"] < 1.2 and run["test_loss"] < 1.0


def sweep_args(tmp_path, widths: tuple[str, ...], methods: tuple[str, ...], jobs: str) -> list[str]:
    return [
        "--framework",
        "torch",
        "--widths",
        *widths,
        "--lrs",
        "0.01",
        "0.1",
        "--methods",
        *methods,
        "--steps",
        "25",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        "--jobs",
        jobs,
    ]


# The sweep's machinery does not depend on the framework or the method (each framework's trainer
# is tested above). With two jobs, the two (method, width) groups go one to each worker process;
# SP's runs are the cheapest.
@pytest.mark.parametrize(
    ("jobs", "methods"), [("1", ("sp", "maxp")), ("2", ("sp",))], ids=["one-job", "two-jobs"]
)
def test_sweep_writes_runs_and_resumes(tmp_path, jobs: str, methods: tuple[str, ...]) -> None:
    args = sweep_args(tmp_path, ("32", "64"), methods, jobs)
    assert main(args) == 0
    runs = sorted((tmp_path / "runs").glob("*.json"))
    assert len(runs) == len(methods) * 2 * 2  # methods x widths x rates
    stamps = {p: p.stat().st_mtime_ns for p in runs}
    record = json.loads(runs[0].read_text())
    assert {"method", "width", "lr", "losses", "diverged", "test_loss"} <= set(record)
    assert record["framework"] == "torch" and record["steps_requested"] == 25
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in runs} == stamps  # nothing re-run
    report = (tmp_path / "sweep.md").read_text()
    assert "best lr" in report and (tmp_path / "sweep-transfer.png").exists()
    summary = json.loads((tmp_path / "sweep.json").read_text())["summary"]
    # The reported best rate is the rate with the lowest final loss among the finished runs.
    for method in methods:
        for width in (32, 64):
            finals = {}
            for path in runs:
                r = json.loads(path.read_text())
                if r["method"] == method and r["width"] == width and not r["diverged"]:
                    finals[r["lr"]] = r["final_train_loss"]
            assert summary["best"][method][str(width)]["best_lr"] == min(finals, key=finals.get)


def fake_run(method: str, seed: int, lr: float, loss: float) -> dict:
    return {
        "method": method,
        "width": 64,
        "lr": lr,
        "seed": seed,
        "final_train_loss": loss,
        "test_loss": loss,
        "diverged": False,
    }


def test_paired_verdict_sees_a_consistent_gap_that_seed_noise_hides() -> None:
    # Seeds move both methods by the same large amount (0.5 between seeds); maxP is 0.01 lower on
    # every seed. Unpaired, the 0.01 gap is lost in the 0.5 seed spread; paired, it is the whole story.
    seed_offset = {0: 0.0, 1: 0.5, 2: 0.25}
    runs = [fake_run("mup-full", seed, 0.1, 1.0 + off) for seed, off in seed_offset.items()]
    runs += [fake_run("maxp", seed, 0.1, 0.99 + off) for seed, off in seed_offset.items()]
    runs += [fake_run("maxp", seed, 1.0, 2.0 + off) for seed, off in seed_offset.items()]  # a worse rate
    _, summary = summarize(runs, [64], [0.1, 1.0], ["mup-full", "maxp"])
    maxp, mup = summary["best"]["maxp"][64], summary["best"]["mup-full"][64]
    assert maxp["best_lr"] == 0.1 and maxp["spread"] == pytest.approx(0.5)
    comparison = maxp_against_mup(maxp, mup)
    assert comparison.winner == "maxP" and comparison.maxp_lower == comparison.seeds == 3
    assert comparison.gap == pytest.approx(0.01) and comparison.noise == pytest.approx(0.0, abs=1e-12)
    # One seed where maxP is higher turns the verdict into a tie, whatever the mean says.
    runs.append(fake_run("maxp", 3, 0.1, 1.02))
    runs.append(fake_run("mup-full", 3, 0.1, 1.0))
    _, summary = summarize(runs, [64], [0.1, 1.0], ["mup-full", "maxp"])
    comparison = maxp_against_mup(summary["best"]["maxp"][64], summary["best"]["mup-full"][64])
    assert comparison.winner == "tie" and comparison.maxp_lower == 3 and comparison.seeds == 4


def test_maxp_meas_trains_with_the_table_measured_on_mup_no(tmp_path) -> None:
    # 45 steps: mup-no is measured (without changing its rates) after steps 30 and 40, and its
    # record at the last step carries them. (JAX's measure-only runs: tests/jax/test_measure_only.)
    args = sweep_args(tmp_path, ("16", "32"), ("mup-no", "maxp-meas"), "1")
    args[args.index("--steps") + 1] = "45"
    assert main([*args, "--warmup", "5"]) == 0
    runs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")}
    measured = [r for r in runs.values() if r["method"] == "mup-no" and r["width"] == 16 and r["seed"] == 0]
    best = min(measured, key=lambda r: r["final_train_loss"])
    expected = measure_table(MetricsRun(best["layers"], best["metrics"]), TABLE_FRACTION)
    table = AlignmentTable.read(tmp_path / "table.json")
    assert table.alignments == expected.alignments and table.source["width"] == 16
    assert best["metrics"][-1]["maxp/solves"] == 2 and best["warmup"] == 5
    # mup-no's rates never moved: the logged rate is the prefactor times the preset's factor.
    first, last = best["metrics"][0], best["metrics"][-1]
    assert all(first[k] == last[k] for k in first if k.startswith(("maxp/lr/", "maxp/c/")))
    assert "maxP-meas" in (tmp_path / "sweep.md").read_text()
    assert (tmp_path / "sweep-trajectory-mup-no.png").exists()


def test_basin_counts_the_rates_within_one_and_five_percent_of_the_best() -> None:
    losses = {0.01: 1.2, 0.03: 1.04, 0.1: 1.0, 0.3: 1.009, 1.0: 1.06}
    runs = [fake_run("maxp", 0, lr, loss) for lr, loss in losses.items()]
    _, summary = summarize(runs, [64], list(losses), ["maxp"])
    entry = summary["best"]["maxp"][64]
    assert (entry["best_lr"], entry["basin_1"], entry["basin_5"]) == (0.1, 2, 3)
