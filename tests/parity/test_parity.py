"""PyTorch and JAX give the same numbers: same LP inputs, c, rates, alignments and losses.

Float32 on CPU, 200 steps, tolerances of DESIGN section 6, for the MLP and for the 2-block
GPT. A failure names the first step and layer where the quantity leaves its tolerance.
"""

import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")

from benchmarks.parity_runs import (
    PARITY_SETUPS,
    Gap,
    GptSetup,
    Setup,
    batches,
    compare,
    compare_metrics,
    run_jax,
    run_jax_gpt,
    run_torch,
    run_torch_gpt,
    same_core_gap,
    token_batches,
)
from examples.flax_models import flax_to_torch_name


def assert_within_tolerance(gaps: list[Gap]) -> None:
    failures = [g for g in gaps if g.first_failure is not None]
    assert not failures, "; ".join(
        f"{g.quantity}: {g.largest:.3g} > {g.tolerance:g} first at {g.first_failure}" for g in failures
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
    assert_within_tolerance(gaps)
    optimizer = "adam" if setup.optimizer == "adamw" else "sgd"
    assert same_core_gap(torch_trace, torch_trace.op_graph, jax_trace.op_graph, optimizer) <= 1e-9
    if setup.dynamic:
        assert torch_trace.c[-1] != torch_trace.c[0]  # the re-solves moved c


def test_gpt_parity() -> None:
    """The 2-block GPT (attention, SwiGLU, LayerNorm, embeddings), AdamW, dynamic: step by step."""
    setup = GptSetup()
    data = token_batches(setup)
    torch_trace, initial = run_torch_gpt(setup, data)
    jax_trace = run_jax_gpt(setup, data, initial, torch_trace.layers)
    assert_within_tolerance(compare(setup, torch_trace, jax_trace) + compare_metrics(torch_trace, jax_trace))
    gap = same_core_gap(torch_trace, torch_trace.op_graph, jax_trace.op_graph, "adam", flax_to_torch_name)
    assert gap <= 1e-9
    assert torch_trace.c[-1] != torch_trace.c[0]  # the re-solves moved c
    assert torch_trace.losses[-1] < 0.9 * torch_trace.losses[0]  # it learned the bigrams
