"""PyTorch and JAX give the same numbers: same LP inputs, c, rates, alignments and losses.

Float32 on CPU, 200 steps, tolerances of DESIGN section 6. A failure names the first step
and layer where the quantity leaves its tolerance.
"""

import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")

from benchmarks.parity_runs import (
    PARITY_SETUPS,
    Setup,
    batches,
    compare,
    compare_metrics,
    run_jax,
    run_torch,
    same_core_gap,
)


@pytest.mark.parametrize(
    "setup",
    PARITY_SETUPS,
    ids=lambda s: f"{s.optimizer}-{'dynamic' if s.dynamic else 'static'}-{s.multipliers}",
)
def test_parity(setup: Setup) -> None:
    data = batches(setup)
    torch_trace, initial = run_torch(setup, data)
    jax_trace = run_jax(setup, data, initial)
    gaps = compare(setup, torch_trace, jax_trace)
    if setup.multipliers == "explicit":  # folded rates are n^-(c + a) by design: compared above
        gaps += compare_metrics(torch_trace, jax_trace)
    failures = [g for g in gaps if g.first_failure is not None]
    assert not failures, "; ".join(
        f"{g.quantity}: {g.largest:.3g} > {g.tolerance:g} first at {g.first_failure}" for g in failures
    )
    optimizer = "adam" if setup.optimizer == "adamw" else "sgd"
    assert same_core_gap(torch_trace, torch_trace.op_graph, jax_trace.op_graph, optimizer) <= 1e-9
    if setup.dynamic:
        assert torch_trace.c[-1] != torch_trace.c[0]  # the re-solves moved c
