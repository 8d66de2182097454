"""The LP against an exact mixed-integer formulation, and the optimum's defining properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maxp_core import InfeasibleError, StabilityLP, chain
from tests.core import reference
from tests.core.strategies import Instance, chains, dags, instances

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
graphs = st.one_of(chains(), dags())


def solve(inst: Instance, solver: str = "highs"):
    lp = StabilityLP(
        inst.graph,
        inst.optimizer,
        feature_learning=inst.feature_learning,
        c_fixed=inst.c_fixed,
        solver=solver,
    )
    try:
        return lp.solve()
    except InfeasibleError:
        return None


def pinned_before_a_sink(inst: Instance) -> bool:
    """Feature learning with a pinned c on a predecessor of a sink: the LP's known limit."""
    before_sinks = {inst.graph.nodes[i].name for i in inst.graph.feature_learning_nodes}
    return inst.feature_learning and bool(set(inst.c_fixed) & before_sinks)


@PROPERTY_SETTINGS
@given(instances(graphs))
def test_objective_equals_exact_milp(inst: Instance) -> None:
    sol = solve(inst)
    exact = reference.milp_optimum(
        inst.graph, inst.optimizer, feature_learning=inst.feature_learning, c_fixed=inst.c_fixed
    )
    if sol is None:
        if exact is not None and pinned_before_a_sink(inst):
            return  # the one case the LP refuses although it is feasible (see maxp_core.lp)
        assert exact is None, f"the LP says infeasible but the MILP finds sum(c) = {exact}"
        return
    assert max(abs(v) for v in sol.c.values()) < reference.C_BOX - 1, "instance outside the MILP's box"
    assert exact is not None, f"the MILP says infeasible but the LP finds {sol.c}"
    assert sol.objective == pytest.approx(exact, abs=1e-6)


@PROPERTY_SETTINGS
@given(instances(graphs))
def test_every_constraint_holds_and_no_c_can_drop(inst: Instance) -> None:
    sol = solve(inst)
    if sol is None:
        return
    r, g = reference.exact_residuals(inst.graph, inst.optimizer, sol.c)
    for name, value in r.items():
        assert value >= -1e-7, f"node {name} unstable: r = {value}"
        assert sol.r[name] == pytest.approx(value, abs=1e-9), f"reported r of {name} is not the exact min"
    if inst.optimizer == "sgd":
        assert sol.g == pytest.approx(g, abs=1e-9)
    fl_nodes = {p for s in reference.sinks(inst.graph) for p in inst.graph.node(s).preds}
    if inst.feature_learning:
        for name in fl_nodes:
            assert r[name] == pytest.approx(0.0, abs=1e-7), f"feature learning: r of {name} is {r[name]}"
    for name in sol.c:
        if name in inst.c_fixed:
            assert sol.c[name] == inst.c_fixed[name]
            continue
        lowered = dict(sol.c, **{name: sol.c[name] - 1e-3})
        r_low, _ = reference.exact_residuals(inst.graph, inst.optimizer, lowered)
        assert min(r_low.values()) < -1e-5, f"c of {name} can drop by 1e-3 and every node stays stable"


@settings(max_examples=25, deadline=None)
@given(instances(st.one_of(chains(), dags())))
def test_highs_and_clarabel_agree_on_random_graphs(inst: Instance) -> None:
    first, second = solve(inst, "highs"), solve(inst, "clarabel")
    assert (first is None) == (second is None)
    if first is not None:
        np.testing.assert_allclose(list(first.c.values()), list(second.c.values()), atol=1e-6)


def random_chain(num_layers: int, seed: int):
    rng = np.random.default_rng(seed)
    triples = rng.uniform([0.2, 0.3, 0.2], [1.0, 0.5, 1.0], size=(num_layers, 3))
    return chain(num_layers, alignment=[tuple(t) for t in triples])


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("num_layers", [4, 32, 128])
def test_highs_and_clarabel_agree_on_chains(num_layers: int, optimizer: str) -> None:
    graph = random_chain(num_layers, seed=num_layers)
    by_highs = StabilityLP(graph, optimizer).solve()
    by_clarabel = StabilityLP(graph, optimizer, solver="clarabel").solve()
    np.testing.assert_allclose(list(by_highs.c.values()), list(by_clarabel.c.values()), atol=1e-6)


def test_optimal_face_is_not_a_point_yet_the_answer_is_unique() -> None:
    """A chain where several c are optimal: the tie rule picks the same one from both solvers
    and from a warm re-solve after other numbers."""
    graph = random_chain(32, seed=1)
    lp = StabilityLP(graph, "adam")
    first = lp.solve()
    lp.solve(alpha=[0.9] * 32)  # move the warm start elsewhere
    again = lp.solve()
    assert first.c == pytest.approx(again.c, abs=1e-9)
    # The optimal face has more than one point: moving 0.01 of c from one layer to the
    # next keeps every node stable (and sum(c) fixed) somewhere along this chain.
    names = list(first.c)
    found = False
    for k in range(len(names) - 1):
        for shift in (0.01, -0.01):
            moved = dict(first.c)
            moved[names[k]] += shift
            moved[names[k + 1]] -= shift
            r, _ = reference.exact_residuals(graph, "adam", moved)
            found = found or min(r.values()) >= -1e-9
    assert found, "expected a tie on this instance"


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_1024_layer_chain_solves_exactly(optimizer: str) -> None:
    graph = random_chain(1024, seed=7)
    sol = StabilityLP(graph, optimizer).solve()
    r, _ = reference.exact_residuals(graph, optimizer, sol.c)
    assert min(r.values()) >= -1e-7
    for name in list(sol.c)[::97]:
        lowered = dict(sol.c, **{name: sol.c[name] - 1e-3})
        r_low, _ = reference.exact_residuals(graph, optimizer, lowered)
        assert min(r_low.values()) < -1e-5, f"c of {name} can drop by 1e-3"
