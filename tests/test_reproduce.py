"""The committed results still describe today's code.

One committed run per method of every CPU sweep (its best rate at the smallest size, seed
0) is trained again for its first steps, in a fresh process on one CPU thread as the sweeps
train (:mod:`benchmarks.threads`); the losses must match the committed ones to float
precision. A failure names the run, the first step that differs and the command that
regenerates the stale arm (:mod:`benchmarks.reproduce`).
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")

from benchmarks.reproduce import RESULTS_ROOT, TIE_RULE_SAMPLE, all_checks, mismatch, sweep_args
from benchmarks.threads import SINGLE_THREAD_ENV, XLA_SINGLE_THREAD

CHECKS = all_checks()


@pytest.fixture(scope="module")
def replayed() -> dict[str, str | None]:
    """Every sampled run replayed by ``python -m benchmarks.reproduce --json``: {label: problem}."""
    env = {**os.environ, **SINGLE_THREAD_ENV, "XLA_FLAGS": XLA_SINGLE_THREAD}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.reproduce", "--json"],
        cwd=RESULTS_ROOT.parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_cpu_sweep_and_method_is_checked() -> None:
    covered = {(c.sweep_dir, c.record["method"]) for c in CHECKS}
    for sweep_dir in {c.sweep_dir for c in CHECKS}:
        methods = sweep_args(sweep_dir)["methods"]
        if sweep_dir.parent.name == "tie_rule":
            methods = [m for m in methods if m in TIE_RULE_SAMPLE]
        assert {(sweep_dir, m) for m in methods} <= covered
    assert {"digits-torch", "digits-jax"} <= {c.sweep_dir.name for c in CHECKS if c.kind == "sweep"}
    assert {c.sweep_dir.parent.name for c in CHECKS} == {"sweep", "tie_rule", "depth"}


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.label)
def test_committed_run_reproduces(check, replayed) -> None:
    assert "code" in check.record, f"{check.path} does not record the code version that made it"
    assert replayed[check.label] is None, replayed[check.label]


def test_a_changed_loss_is_reported_with_the_command_that_regenerates_it() -> None:
    source = next(c for c in CHECKS if c.sweep_dir.name == "digits-torch" and c.record["method"] == "maxp")
    replayed = [float(v) for v in source.record["losses"][:10]]
    replayed[6] *= 1.001  # today's code would give another loss from step 7 on
    problem = mismatch(source, replayed)
    assert problem is not None
    assert "at step 7" in problem and source.path.name in problem
    assert "--retrain maxp" in problem and "--framework torch" in problem
    assert mismatch(source, replayed[:6]) is None
