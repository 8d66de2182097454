"""The tie rule: which optimal ``c`` the LP returns when ``sum(c)`` has a whole face of optima."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.tie_rule import attention_graph
from maxp_core import InfeasibleError, MaxPError, Node, OpGraph, StabilityLP, chain
from tests.core.strategies import Instance, chains, dags, instances

FULL = dict(alpha=1.0, omega=0.5, u=1.0)
O_MEASURED = (0.0, 0.5, 1.0)
MEASURED = {k: {"o": v} for k, v in zip(("alpha", "omega", "u"), O_MEASURED, strict=True)}
PRESET_C = {"emb": 0.5, "q": 1.0, "k": 1.0, "v": 1.0, "o": 1.0, "out": 0.5}


def attn(o_align: tuple[float, float, float] = O_MEASURED, v_b: float = math.inf) -> OpGraph:
    """The attention block of the benchmark: zero v, o at ``o_align``."""
    return attention_graph(o_align, v_b)


def preset_attn() -> OpGraph:
    """The block as the adapters build it: every alignment at the ``"full"`` preset."""
    return attn(o_align=(FULL["alpha"], FULL["omega"], FULL["u"]))


def rounded(c: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) + 0.0 for k, v in c.items()}


@pytest.mark.parametrize("solver", ["highs", "clarabel"])
def test_attention_block_preset_keeps_v_and_o_at_one_later_moves_all_to_o(solver: str) -> None:
    """The optimal face of the attention block with ``o`` measured at ``(0, 0.5, 1)``, by hand.

    Adam, ``lr = a + c``. ``emb`` (a source): ``r = c - 0.5``, so ``c_emb >= 0.5``; at the
    optimum ``r_emb = 0``. ``q, k`` (a = 0, b = 1/2, full): ``r = min(c - 1, c + r_emb - 1,
    r_emb)`` gives ``c >= 1``; ``out`` (a = b = 1/2): ``c_out >= 0.5``. ``v`` starts at zero
    (b = inf, no omega term): ``r_v = min(c_v - 1, c_v + r_emb - 1) = c_v - 1``. ``ctx =
    scores @ v`` multiplies by a factor that is zero at init, so only sets containing ``v``
    count: ``r_ctx = r_v``. ``o`` (a = 0, b = 1/2, alpha = 0, omega = 1/2, u = 1):
    ``r_o = min(c_o, c_o + r_v - 1, r_v)``. So ``r >= 0`` asks ``c_v >= 1``, ``c_o >= 0`` and
    ``c_v + c_o >= 2``: the least ``c_v + c_o`` is 2, reached on the whole segment
    ``c_v + c_o = 2, c_v in [1, 2]`` (raising ``c_emb`` helps neither).

    ``"later"`` minimises ``sum_k sqrt(p_k) c_k`` with ``v`` the 4th weighted node
    (``sqrt(7)``) and ``o`` the 5th (``sqrt(11)``): on the segment that is
    ``(sqrt(7) - sqrt(11)) c_v + const``, least at ``c_v = 2, c_o = 0``. With ``o`` fully
    aligned (the preset) its ``alpha`` term asks ``c_o >= 1``, so the preset's ``c`` is the
    single point ``c_v = c_o = 1``; it lies on the segment, so ``"preset"`` (nearest the
    reference) returns it.
    """
    picked = {}
    for rule in ("preset", "later"):
        lp = StabilityLP(preset_attn(), tie_rule=rule, solver=solver)
        assert rounded(lp.solve().c) == PRESET_C  # the first solve: the preset's c, unique
        picked[rule] = lp.solve(**MEASURED)
    assert rounded(picked["preset"].c) == PRESET_C
    assert rounded(picked["later"].c) == dict(PRESET_C, v=2.0, o=0.0)
    # The same face under both rules: only the point on it differs.
    assert picked["preset"].objective == pytest.approx(5.0, abs=1e-7)
    assert picked["later"].objective == pytest.approx(5.0, abs=1e-7)
    assert min(picked["preset"].r.values()) >= -1e-9


def test_the_reference_is_the_first_solve_with_the_graphs_own_numbers() -> None:
    """Built on the measured graph itself, the first solve (by the ``"later"`` rule) is the anchor."""
    lp = StabilityLP(attn())
    assert lp.tie_rule == "preset"
    assert lp.reference_c is None
    first = lp.solve()
    assert rounded(first.c) == dict(PRESET_C, v=2.0, o=0.0)
    assert lp.reference_c is not None and rounded(lp.reference_c) == rounded(first.c)
    # Solving other numbers first still anchors to the graph's own numbers.
    lp = StabilityLP(preset_attn())
    assert rounded(lp.solve(**MEASURED).c) == PRESET_C
    assert lp.reference_c is not None and rounded(lp.reference_c) == PRESET_C


@pytest.mark.parametrize("solver", ["highs", "clarabel"])
def test_explicit_reference_is_honoured(solver: str) -> None:
    on_face = dict(PRESET_C, v=1.5, o=0.5)
    lp = StabilityLP(attn(), reference_c=on_face, solver=solver)
    assert rounded(lp.solve().c) == on_face
    assert lp.reference_c == on_face
    # Off the face the weights decide: sqrt(7)|c_v - 3| + sqrt(11)|c_o - 3| on c_v + c_o = 2
    # is least where c_o (the heavier weight) is largest, c_o = 1.
    lp = StabilityLP(attn(), reference_c=dict(PRESET_C, v=3.0, o=3.0), solver=solver)
    assert rounded(lp.solve().c) == PRESET_C


@pytest.mark.parametrize("solver", ["highs", "clarabel"])
def test_a_new_reference_needs_no_rebuild(solver: str) -> None:
    lp = StabilityLP(attn(), solver=solver)
    lp.solve()
    backend = lp._backend
    for reference in (PRESET_C, dict(PRESET_C, v=1.25, o=0.75), dict(PRESET_C, v=2.0, o=0.0)):
        lp.reference_c = reference
        again = lp.solve()
        fresh = StabilityLP(attn(), reference_c=reference, solver=solver).solve()
        assert lp._backend is backend
        assert again.c == pytest.approx(fresh.c, abs=1e-9 if solver == "highs" else 1e-7)
        assert rounded(again.c) == reference
    lp.reference_c = None  # back to the default anchor, taken again at the next solve
    assert lp.reference_c is None
    assert rounded(lp.solve().c) == dict(PRESET_C, v=2.0, o=0.0)
    assert lp._backend is backend


def test_a_pinned_node_may_be_left_out_of_the_reference() -> None:
    reference = {k: v for k, v in PRESET_C.items() if k != "emb"}
    lp = StabilityLP(attn(), c_fixed={"emb": 0.5}, reference_c=reference)
    assert rounded(lp.solve().c) == PRESET_C
    assert lp.reference_c == reference


def test_the_later_rule_is_the_former_answer() -> None:
    """A 32-layer chain with a tie (see test_lp_properties): ``"later"`` gives later layers the
    larger learning rates; the first solve of ``"preset"`` is the same point."""
    rng = np.random.default_rng(1)
    triples = rng.uniform([0.2, 0.3, 0.2], [1.0, 0.5, 1.0], size=(32, 3))
    graph = chain(32, alignment=[tuple(t) for t in triples])
    later = StabilityLP(graph, tie_rule="later").solve()
    preset = StabilityLP(graph).solve()
    assert preset.c == pytest.approx(later.c, abs=1e-9)


def test_warm_resolves_return_the_same_point() -> None:
    lp = StabilityLP(preset_attn())
    first = lp.solve(**MEASURED)
    lp.solve(alpha=[0.7] * 8, u=[0.7] * 8)
    assert lp.solve(**MEASURED).c == pytest.approx(first.c, abs=1e-9)


@pytest.mark.parametrize("tie_rule", ["preset", "later"])
def test_a_solve_repeats_to_the_last_bit_whatever_solves_came_before(tie_rule: str) -> None:
    """What a resumed run relies on: the answer to the same numbers is the same to the last
    bit from a fresh LP as from one warm-started along a history of other solves."""
    rng = np.random.default_rng(0)
    for depth in (8, 24, 64):
        graph = chain(depth)
        kept = StabilityLP(graph, tie_rule=tie_rule)
        for _ in range(12):
            triples = rng.uniform([0.2, 0.2, 0.2], [1.0, 0.6, 1.0], size=(depth, 3))
            numbers = {key: triples[:, j].tolist() for j, key in enumerate(("alpha", "omega", "u"))}
            after_history = kept.solve(**numbers).c
            fresh = StabilityLP(graph, tie_rule=tie_rule).solve(**numbers).c
            assert list(after_history.values()) == list(fresh.values()), depth


def test_bad_tie_rule_and_reference_give_clear_errors() -> None:
    with pytest.raises(MaxPError, match=r"tie_rule must be one of \['preset', 'later'\], got 'earlier'"):
        StabilityLP(attn(), tie_rule="earlier")
    with pytest.raises(MaxPError, match="tie_rule must be one of"):
        StabilityLP(attn(), tie_rule=None)  # type: ignore[arg-type]
    with pytest.raises(MaxPError, match="tie_rule='later', which takes no reference"):
        StabilityLP(attn(), tie_rule="later", reference_c=PRESET_C)
    with pytest.raises(MaxPError, match="reference_c must be a mapping"):
        StabilityLP(attn(), reference_c=[0.5, 1, 1, 1, 1, 0.5])  # type: ignore[arg-type]
    with pytest.raises(MaxPError, match="no node named 'w'"):
        StabilityLP(attn(), reference_c=dict(PRESET_C, w=1.0))
    with pytest.raises(MaxPError, match="reference_c names 'scores', which has no weight"):
        StabilityLP(attn(), reference_c=dict(PRESET_C, scores=1.0))
    with pytest.raises(MaxPError, match=r"no value for weighted nodes \['o', 'out'\]"):
        StabilityLP(attn(), reference_c={k: PRESET_C[k] for k in ("emb", "q", "k", "v")})
    with pytest.raises(MaxPError, match=r"reference_c\['v'\] = nan is not a finite number"):
        StabilityLP(attn(), reference_c=dict(PRESET_C, v=math.nan))
    with pytest.raises(MaxPError, match=r"reference_c\['v'\] must be a real number"):
        StabilityLP(attn(), reference_c=dict(PRESET_C, v="1"))
    with pytest.raises(MaxPError, match="reference_c keys must be node names"):
        StabilityLP(attn(), reference_c={**PRESET_C, 3: 1.0})  # type: ignore[dict-item]
    lp = StabilityLP(attn(), tie_rule="later")
    with pytest.raises(MaxPError, match="takes no reference"):
        lp.reference_c = PRESET_C


def with_preset_alignments(graph: OpGraph) -> OpGraph:
    n = len(graph)
    return graph.with_numbers(**{k: [v] * n for k, v in FULL.items()})


def solve_measured(inst: Instance, rule: str, solver: str):
    """The LP built on the preset graph (its first solve is the anchor), re-solved with the
    instance's own alignments."""
    lp = StabilityLP(
        with_preset_alignments(inst.graph),
        inst.optimizer,
        feature_learning=inst.feature_learning,
        c_fixed=inst.c_fixed,
        solver=solver,
        tie_rule=rule,
    )
    numbers = {k: [getattr(node, k) for node in inst.graph.nodes] for k in FULL}
    try:
        return lp.solve(**numbers)
    except InfeasibleError:
        return None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(st.one_of(chains(), dags())))
def test_highs_and_clarabel_agree_under_preset_on_random_graphs(inst: Instance) -> None:
    first, second = solve_measured(inst, "preset", "highs"), solve_measured(inst, "preset", "clarabel")
    assert (first is None) == (second is None)
    if first is not None:
        np.testing.assert_allclose(list(first.c.values()), list(second.c.values()), atol=1e-6)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(st.one_of(chains(), dags())))
def test_both_rules_reach_the_same_optimum(inst: Instance) -> None:
    preset, later = solve_measured(inst, "preset", "highs"), solve_measured(inst, "later", "highs")
    assert (preset is None) == (later is None)
    if preset is not None and later is not None:
        assert preset.objective == pytest.approx(later.objective, abs=1e-7)
        assert min(preset.r.values()) >= -1e-7


@pytest.mark.parametrize("solver", ["highs", "clarabel"])
def test_reference_alignment_anchors_an_overridden_graph_to_the_preset_answer(solver: str) -> None:
    """The graph carries o's override; anchoring to its own first answer keeps the "later"
    choice (c_v = 2, c_o = 0), anchoring to the preset's answer (every alignment "full")
    gives c_v = c_o = 1, the answer of :func:`preset_attn`."""
    own = StabilityLP(attn(), solver=solver).solve().c
    assert rounded(own)["v"] == 2.0 and rounded(own)["o"] == 0.0
    anchored = StabilityLP(attn(), solver=solver, reference_alignment=(1.0, 0.5, 1.0)).solve().c
    assert rounded(anchored) == rounded(StabilityLP(preset_attn(), solver=solver).solve().c)
    assert sum(anchored.values()) == pytest.approx(sum(own.values()), abs=1e-6)
    with pytest.raises(MaxPError, match="reference_alignment"):
        StabilityLP(attn(), reference_alignment=(1.0, 0.5))


def test_a_default_reference_follows_the_pins() -> None:
    """The answer must not depend on the order of solves: a new pinned value retakes the
    default reference, so a re-used LP agrees with a fresh one."""
    graph = chain(3, alignment=[(0.3, 0.6, 1.0), (0.8, 0.3, 0.0), (0.2, 0.2, 0.9)])
    reused = StabilityLP(graph, c_fixed={"layer0": 0.6})
    reused.solve()
    again = reused.solve(c_fixed={"layer0": 1.2}).c
    fresh = StabilityLP(graph, c_fixed={"layer0": 1.2}).solve().c
    assert again == pytest.approx(fresh, abs=1e-9)
    # The face at c_0 = 1.2 is c_1 + c_2 = 1.2; the reference taken at c_0 = 0.6 lies elsewhere.
    assert again["layer1"] + again["layer2"] == pytest.approx(1.2, abs=1e-9)


def pinned_source_before_a_sink() -> Instance:
    """Found by :func:`test_both_rules_reach_the_same_optimum`: SGD, feature learning, zero
    embeddings ``n0`` (pinned at 0.25) and ``n1``, an activation-only sink ``n2 = n0 + n1`` and a
    readout ``n3`` of ``n0``, every alignment 0.

    ``g = min(a + b, 2a + c)`` of ``n3`` ``= min(1, c_3 - 1)``; ``r_0 = g - 1 + c_0 = g - 0.75``
    and ``r_1 = g - 1 + c_1`` must both be 0, so ``g = 0.75``, ``c_1 = 0.25``, ``c_3 = 1.75``:
    the one exact optimum, ``sum(c) = 2.25``. The LP relaxes ``r_0 <= g - 0.75``, so its face
    was ``c_1 = 1 - g, c_3 = 1 + g, g in [0.75, 1]``; the preset's ``c`` (``c_3 = 2``) drew
    ``"preset"`` to ``g = 1``, where the exact ``r_0 = 0.25`` broke feature learning.
    """
    nodes = [
        Node("n0", a=-0.5, b=math.inf, alpha=0, omega=0, u=0),
        Node("n1", a=-0.5, b=math.inf, alpha=0, omega=0, u=0),
        Node("n2", a=0.0, b=0.5, alpha=0, omega=0, u=0, has_weight=False, preds=("n0", "n1")),
        Node("n3", a=-0.5, b=1.5, alpha=0, omega=0, u=0, preds=("n0",)),
    ]
    return Instance(OpGraph(nodes), "sgd", True, {"n0": 0.25})


@pytest.mark.parametrize("solver", ["highs", "clarabel"])
def test_a_pinned_source_before_a_sink_does_not_make_preset_infeasible(solver: str) -> None:
    inst = pinned_source_before_a_sink()
    preset, later = solve_measured(inst, "preset", solver), solve_measured(inst, "later", solver)
    assert preset is not None and later is not None
    assert preset.objective == pytest.approx(later.objective, abs=1e-7)
    assert preset.objective == pytest.approx(2.25, abs=1e-7)
    assert preset.c == pytest.approx({"n0": 0.25, "n1": 0.25, "n3": 1.75}, abs=1e-7)
    assert max(abs(preset.r[name]) for name in ("n0", "n1")) <= 1e-7


def test_preset_falls_back_to_later_where_its_point_breaks_feature_learning() -> None:
    """A pinned interior node before the sink: its ``r`` is a min of three terms, which the LP
    cannot make exact. The point nearest the preset's ``c`` (``c_2 = 1``) leaves the exact
    ``r_1 = 0.48``; the ``"later"`` point is exact, and ``"preset"`` returns it."""
    graph = OpGraph(
        [
            Node("l0", a=0.5, b=-0.5, alpha=0.77, omega=0.9, u=0.14),
            Node("l1", a=0.5, b=0.0, alpha=0.51, omega=0.02, u=0.13, preds=("l0",)),
            Node("l2", a=0.0, b=1.0, alpha=0.46, omega=0.77, u=0.0, preds=("l1",)),
        ]
    )
    inst = Instance(graph, "sgd", True, {"l1": -1.0})
    preset, later = solve_measured(inst, "preset", "highs"), solve_measured(inst, "later", "highs")
    assert preset is not None and later is not None
    assert preset.c == pytest.approx(later.c, abs=1e-9)
    assert preset.objective == pytest.approx(-2.0, abs=1e-7)
    assert preset.r["l1"] == pytest.approx(0.0, abs=1e-7)
