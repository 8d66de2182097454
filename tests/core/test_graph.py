"""Roles, stability at initialization and graph validation: each bad input gets its error."""

import re

import pytest

from maxp_core import (
    GraphError,
    InfeasibleError,
    MaxPError,
    Node,
    OpGraph,
    Role,
    StabilityError,
    StabilityLP,
    chain,
    check_init_stability,
)


def weighted(name, a=0.0, b=0.5, preds=(), **kw):
    return Node(name=name, a=a, b=b, preds=tuple(preds), **kw)


def mlp(*extra):
    return [
        weighted("emb", -0.5, 0.5),
        weighted("h", 0.0, 0.5, ["emb"]),
        weighted("out", 0.5, 0.5, ["h"]),
        *extra,
    ]


@pytest.mark.parametrize(
    ("role", "a", "b", "ok"),
    [
        ("embedding", -0.5, 0.5, True),
        ("embedding", 0.0, 0.5, False),
        ("hidden", 0.0, 0.5, True),
        ("hidden", 0.5, 0.5, False),
        ("readout", 0.5, 0.5, True),
        ("readout", 1.0, 0.0, True),
        ("readout", 0.0, 0.0, False),
    ],
)
def test_stability_at_init(role: str, a: float, b: float, ok: bool) -> None:
    if ok:
        check_init_stability("fc", role, a, b)
        return
    with pytest.raises(StabilityError, match=rf"'fc' \({role}\): a \+ b = {a} \+ {b}"):
        check_init_stability("fc", role, a, b)


def test_unstable_layer_in_graph_names_it() -> None:
    nodes = mlp()
    nodes[1] = weighted("h", 0.0, 1.0, ["emb"])
    with pytest.raises(StabilityError, match=r"layer 'h' \(hidden\).*needs a \+ b = 0.5"):
        OpGraph(nodes)


def test_unknown_role() -> None:
    with pytest.raises(MaxPError, match="unknown role 'middle'"):
        Role.parse("middle", layer="fc")


def test_declared_role_must_match_place() -> None:
    nodes = mlp()
    nodes[1] = weighted("h", 0.0, 0.5, ["emb"], role=Role.READOUT)
    with pytest.raises(GraphError, match="'h' is declared 'readout' but sits in the graph as 'hidden'"):
        OpGraph(nodes)


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([], "the graph is empty"),
        ([*mlp(), weighted("h", 0.0, 0.5, ["emb"])], "duplicate node name 'h'"),
        (
            [weighted("emb", -0.5, 0.5), weighted("out", 0.5, 0.5, ["nowhere"])],
            "predecessor 'nowhere'.*dangling",
        ),
        ([weighted("x", 0.5, 0.5, ["x"]), weighted("y", 0.5, 0.5, ["x"])], "'x' lists itself"),
        (
            [weighted("e", -0.5, 0.5), weighted("p", 0, 0.5, ["e", "q"]), weighted("q", 0, 0.5, ["p"])],
            r"cycle through nodes \['p', 'q'\]",
        ),
        ([*mlp(), weighted("lonely", -0.5, 0.5)], "'lonely' has neither predecessors nor successors"),
        ([weighted("emb", -0.5, float("nan")), weighted("out", 0.5, 0.5, ["emb"])], "'emb': b = nan"),
        (
            [weighted("emb", -0.5, 0.5), weighted("out", 0.5, 0.5, ["emb"], merge="max")],
            "unknown merge 'max'",
        ),
        (
            [weighted("emb", -0.5, 0.5), weighted("out", 0.5, 0.5, ["emb", "emb"])],
            "lists a predecessor twice",
        ),
    ],
)
def test_invalid_graphs(nodes, message: str) -> None:
    with pytest.raises(GraphError, match=message):
        OpGraph(nodes)


def test_chain_builder_validates_lengths() -> None:
    with pytest.raises(GraphError, match="at least 2 layers"):
        chain(1)
    with pytest.raises(GraphError, match="got 2 values for a"):
        chain(3, a=[0.0, 0.5])


def test_single_weighted_node_skips_the_lp_and_says_what_c_it_gets() -> None:
    graph = OpGraph(
        [Node("attn_scores", a=0.5, has_weight=False), weighted("only", 1.0, 0.0, ["attn_scores"])]
    )
    sol = StabilityLP(graph).solve()
    assert sol.solver == "none"
    assert sol.c == {"only": 0.0}
    assert sol.r["only"] == pytest.approx(0.0)  # a + c - alpha = 1 + 0 - 1
    assert "only weight-bearing node" in sol.note and "c = 0" in sol.note
    assert sol.to_json()["note"] == sol.note


def test_single_weighted_node_that_c_0_leaves_unstable_is_an_error_not_optimal() -> None:
    # a = 0.5: with c = 0, r = a + c - alpha = -0.5. Reporting "optimal" would hide it.
    graph = OpGraph(
        [Node("attn_scores", a=0.5, has_weight=False), weighted("only", 0.5, 0.0, ["attn_scores"])]
    )
    with pytest.raises(InfeasibleError, match=r"only r=-0\.5"):
        StabilityLP(graph).solve()
    assert StabilityLP(graph, c_fixed={"only": 0.5}).solve().r["only"] == pytest.approx(0.0)


def test_activation_only_nodes_and_merges_enter_the_lp() -> None:
    # q and k feed an activation-only score node (a = 1 for 1/d attention); its output
    # multiplies v elementwise-style through a "sum" merge into the output layer.
    nodes = [
        weighted("x", -0.5, 0.5),
        weighted("q", 0.0, 0.5, ["x"]),
        weighted("k", 0.0, 0.5, ["x"]),
        Node("scores", a=1.0, has_weight=False, preds=("q", "k"), merge="sum"),
        weighted("v", 0.0, 0.5, ["x"]),
        weighted("out", 0.5, 0.5, ["scores", "v"]),
    ]
    sol = StabilityLP(OpGraph(nodes), "adam").solve()
    # Hand derivation with full alignment: x is a source (c = 0.5). q, k, v are hidden
    # with r_in = 0: c = alpha - a = 1. scores: r = r_q + r_k + a = 1 (so the min-merged
    # input of out is min(1, r_v = 0) = 0), and out: c = alpha - a = 0.5.
    assert sol.c == pytest.approx({"x": 0.5, "q": 1.0, "k": 1.0, "v": 1.0, "out": 0.5})
    assert sol.r["scores"] == pytest.approx(1.0)


def test_pinned_c_that_cannot_be_stable_names_nodes_and_constraints() -> None:
    lp = StabilityLP(chain(4), "adam", c_fixed={"layer2": 0.0})
    with pytest.raises(InfeasibleError) as info:
        lp.solve()
    text = str(info.value)
    assert "'layer2'" in text
    assert re.search(r"layer2: r <= .*alpha", text)


def test_pinned_c_is_honoured_and_others_adapt() -> None:
    lp = StabilityLP(chain(4), "adam", pinned=["layer0"])
    sol = lp.solve(c_fixed={"layer0": 1.5})
    assert sol.c["layer0"] == 1.5
    assert sol.r["layer0"] == pytest.approx(1.0)


def test_pin_errors() -> None:
    graph = OpGraph(
        [*mlp()[:2], Node("act", a=0.0, has_weight=False, preds=("h",)), weighted("out", 0.5, 0.5, ["act"])]
    )
    with pytest.raises(MaxPError, match="'act' has no weight"):
        StabilityLP(graph, c_fixed={"act": 0.0})
    lp = StabilityLP(chain(3), pinned=["layer1"])
    with pytest.raises(MaxPError, match=r"pinned nodes \['layer1'\] have no c_fixed value"):
        lp.solve()
    with pytest.raises(MaxPError, match="'layer0', which was not pinned"):
        lp.solve(c_fixed={"layer0": 1.0, "layer1": 1.0})
    with pytest.raises(MaxPError, match="'layer1': pinned c = inf"):
        lp.solve(c_fixed={"layer1": float("inf")})


def test_feature_learning_infeasible_when_readout_input_cannot_reach_zero() -> None:
    # The readout reads an activation-only node with a = 0.5: its r = r_in + 0.5 > 0.
    graph = OpGraph(
        [
            weighted("emb", -0.5, 0.5),
            Node("act", a=0.5, has_weight=False, preds=("emb",)),
            weighted("out", 0.5, 0.5, ["act"]),
        ]
    )
    assert StabilityLP(graph, "adam").solve().r["act"] == pytest.approx(0.5)
    # act = r_emb + 0.5 == 0 would need r_emb = -0.5: the LP itself finds no stable point.
    with pytest.raises(
        InfeasibleError, match=r"emb: r >= 0.*short by 0\.5.*feature learning requires r == 0 on \['act'\]"
    ):
        StabilityLP(graph, "adam", feature_learning=True).solve()


def test_bad_numbers_in_a_resolve() -> None:
    lp = StabilityLP(chain(3))
    with pytest.raises(MaxPError, match="node 'layer1': alpha = nan"):
        lp.solve(alpha={"layer1": float("nan")})
    with pytest.raises(MaxPError, match="alpha: expected 3 values"):
        lp.solve(alpha=[1.0, 1.0])
    with pytest.raises(MaxPError, match="unknown number fields"):
        lp.solve(beta=[1.0, 1.0, 1.0])
    with pytest.raises(MaxPError, match="unknown solver 'gurobi'"):
        StabilityLP(chain(3), solver="gurobi")
    with pytest.raises(MaxPError, match="unknown optimizer 'adamw'"):
        StabilityLP(chain(3), "adamw")


def test_sgd_needs_a_weighted_sink() -> None:
    graph = OpGraph([*mlp()[:2], Node("act", a=0.0, has_weight=False, preds=("h",))])
    with pytest.raises(MaxPError, match="SGD needs at least one weight-bearing sink"):
        StabilityLP(graph, "sgd")


def test_problem_is_dpp_and_resolves_without_rebuilding() -> None:
    lp = StabilityLP(chain(6), "adam", solver="clarabel")
    assert lp.problem.is_dpp()
    first = lp.solve()
    backend = lp._backend
    second = lp.solve(alpha=[0.7] * 6, u=[0.7] * 6)
    assert lp._backend is backend
    assert second.objective < first.objective
