"""The rules for multiplying nodes, contractions and zero initial weights, derived by hand.

The gated block: ``emb -> gate, up``; ``scaled = n^-1/2 * gate`` (an activation-only node,
so its update is ``n^-1/2`` smaller than the gate's); ``mul = scaled * up``; ``down(mul)``;
``out(down)``. Every layer has the "full" alignment except ``down``, whose ``(0, 0.5, 1)``
(``u > alpha``) lets its input residual bind: ``r_down = min(c, c + r_mul - 1, r_mul)`` so
``c_down = 1 - r_mul``. The other layers sit at ``c_emb = 0.5``, ``c_gate = c_up = 1``
(raising a factor's r costs two c for one gained), where ``r_scaled = 0.5``, ``r_up = 0``:

- factors of order one: ``r_mul = min(0.5, 0) = 0`` and ``c_down = 1``;
- ``up`` zero where it is multiplied: only changes of ``up`` count, ``r_mul = min(r_up,
  r_scaled + r_up) = 0``, ``c_down = 1``;
- ``scaled`` zero there: ``r_mul = min(r_scaled, r_scaled + r_up) = 0.5``, ``c_down = 0.5``;
- both zero (what ``merge="sum"`` states): ``r_mul = 0.5 + 0``, ``c_down = 0.5``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from maxp_core import GraphError, MaxPError, Node, OpGraph, StabilityLP
from maxp_core.formulation import exact_residuals, pack_numbers

FULL = {"alpha": 1.0, "omega": 0.5, "u": 1.0}


def gated(merge: str = "product", zero: tuple[str, ...] = (), up_b: float = 0.5) -> OpGraph:
    return OpGraph(
        [
            Node("emb", a=-0.5, b=0.5, **FULL),
            Node("gate", a=0.0, b=0.5, preds=("emb",), **FULL),
            Node("up", a=0.0, b=up_b, preds=("emb",), **FULL),
            Node("scaled", a=0.5, has_weight=False, preds=("gate",)),
            Node("mul", a=0.0, has_weight=False, preds=("scaled", "up"), merge=merge, zero_inputs=zero),
            Node("down", a=0.0, b=0.5, preds=("mul",), alpha=0.0, omega=0.5, u=1.0),
            Node("out", a=0.5, b=0.5, preds=("down",), **FULL),
        ]
    )


@pytest.mark.parametrize(
    ("merge", "zero", "r_mul"),
    [
        ("product", (), 0.0),
        ("product", ("up",), 0.0),
        ("product", ("scaled",), 0.5),
        ("product", ("scaled", "up"), 0.5),
        ("sum", (), 0.5),
    ],
)
@pytest.mark.parametrize("solver", ["highs", "clarabel"])
def test_gated_block_matches_the_hand_derivation(
    merge: str, zero: tuple[str, ...], r_mul: float, solver: str
) -> None:
    solution = StabilityLP(gated(merge, zero), "adam", solver=solver).solve()
    expected = {"emb": 0.5, "gate": 1.0, "up": 1.0, "down": 1.0 - r_mul, "out": 0.5}
    for name, c in expected.items():
        assert solution.c[name] == pytest.approx(c, abs=1e-6), name
    assert solution.r["scaled"] == pytest.approx(0.5, abs=1e-6)
    assert solution.r["mul"] == pytest.approx(r_mul, abs=1e-6)


def test_a_zero_initial_weight_has_no_omega_term() -> None:
    """``up`` with b = inf: ``r_up = min(c_up - 1, c_up + r_emb - 1) = c_up - 1``, no cap at r_emb.

    Raising ``c_up`` then raises ``r_mul = r_up`` one for one and lowers ``c_down`` as much,
    so every ``c_up`` in [1, 2] with ``c_down = 2 - c_up`` is optimal. With no reference
    alignment the "preset" tie rule anchors to the graph's own first answer, which the
    "later" rule picks: the later layer's larger rate (``c_down = 0``).
    """
    graph = gated("product", ("up",), up_b=math.inf)
    assert graph.node("up").zero_init and not graph.node("gate").zero_init
    solution = StabilityLP(graph, "adam").solve()
    assert solution.objective == pytest.approx(4.0, abs=1e-6)
    assert solution.c["up"] + solution.c["down"] == pytest.approx(2.0, abs=1e-6)
    assert solution.c["down"] == pytest.approx(0.0, abs=1e-6)
    c = np.array([0.5, 1.0, 1.7, 0.0, 0.0, 0.3, 0.5])  # in node order; activation-only entries unused
    r, _ = exact_residuals(graph, "adam", c, pack_numbers(graph))
    assert r[graph.index("up")] == pytest.approx(0.7)  # c_up - alpha; r_emb = 0 no longer caps it
    # With a finite b the omega term a + b + r_emb - omega = 0 + 0.5 + 0 - 0.5 caps it at 0.
    finite = gated("product", ("up",))
    r, _ = exact_residuals(finite, "adam", c, pack_numbers(finite))
    assert r[finite.index("up")] == pytest.approx(0.0)


def attention(contraction: bool, merge: str, zero_q: bool = False) -> OpGraph:
    """emb -> q, k, v; scores(q, k) with a = 1; ctx = attn @ v; o(ctx) with (0, 0.5, 1); readout."""
    scores_merge = merge if not contraction else "product"
    return OpGraph(
        [
            Node("emb", a=-0.5, b=0.5, **FULL),
            *(Node(name, a=0.0, b=0.5, preds=("emb",), **FULL) for name in ("q", "k", "v")),
            Node(
                "scores",
                a=1.0,
                has_weight=False,
                preds=("q", "k"),
                merge=scores_merge,
                contraction=contraction,
                zero_inputs=("q",) if zero_q else (),
                **FULL,
            ),
            Node("ctx", a=0.0, has_weight=False, preds=("scores", "v"), merge=merge),
            Node("o", a=0.0, b=0.5, preds=("ctx",), alpha=0.0, omega=0.5, u=1.0),
            Node("out", a=0.5, b=0.5, preds=("o",), **FULL),
        ]
    )


def test_attention_scores_as_a_contraction() -> None:
    """``r_scores = min(a + r_k - alpha, a + r_q - omega, a + r_q + r_k - u) = min(0, 0.5, 0) = 0``.

    The summed rule of a plain product said ``r_scores = r_q + r_k + a = 1`` and with it
    ``r_ctx = 1``, which let ``o`` run at ``c = 0``: an update that grows with width. The
    contraction and the product rule give ``r_ctx = 0`` and ``c_o = 1``.
    """
    old = StabilityLP(attention(contraction=False, merge="sum"), "adam").solve()
    assert old.r["scores"] == pytest.approx(1.0, abs=1e-6)
    assert old.c["o"] == pytest.approx(0.0, abs=1e-6)
    new = StabilityLP(attention(contraction=True, merge="product"), "adam").solve()
    assert new.r["scores"] == pytest.approx(0.0, abs=1e-6)
    assert new.r["ctx"] == pytest.approx(0.0, abs=1e-6)
    assert new.c["o"] == pytest.approx(1.0, abs=1e-6)
    # q zero at init: no x0 @ dy term, r_scores = min(1 + r_q - 0.5, r_q + r_k) = 0 still.
    zero_q = StabilityLP(attention(contraction=True, merge="product", zero_q=True), "adam").solve()
    assert zero_q.r["scores"] == pytest.approx(0.0, abs=1e-6)


def test_contraction_terms_at_given_exponents() -> None:
    """The three terms, evaluated at c where r_q = 0.25 and r_k = 0.75 (hand arithmetic)."""
    graph = attention(contraction=True, merge="product")
    order = {name: k for k, name in enumerate(graph.names)}
    c = np.zeros(len(graph))
    c[order["emb"]], c[order["q"]], c[order["k"]], c[order["v"]] = 1.5, 1.25, 1.75, 1.0
    c[order["o"]], c[order["out"]] = 1.0, 0.5
    r, _ = exact_residuals(graph, "adam", c, pack_numbers(graph))
    assert r[order["emb"]] == pytest.approx(1.0)
    assert (r[order["q"]], r[order["k"]]) == pytest.approx((0.25, 0.75))
    # min(1 + 0.75 - 1, 1 + 0.25 - 0.5, 1 + 0.25 + 0.75 - 1) = min(0.75, 0.75, 1.0)
    assert r[order["scores"]] == pytest.approx(0.75)
    self_scores = Node("self", a=1.0, has_weight=False, preds=("q",), contraction=True)
    one_input = OpGraph([*graph.nodes[:4], self_scores])
    r, _ = exact_residuals(one_input, "adam", c[:5], pack_numbers(one_input))
    # x @ x^T: min(1 + 0.25 - 1, 1 + 0.25 - 0.5, 1 + 0.5 - 1) = 0.25
    assert r[4] == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (Node("mul", a=0.0, has_weight=False, preds=("a", "b"), zero_inputs=("a",)), "only applies where"),
        (Node("mul", a=0.0, has_weight=False, preds=("a", "b"), merge="product", zero_inputs=("c",)), "'c'"),
        (Node("mul", a=0.0, has_weight=True, preds=("a", "b"), contraction=True), "activation-only"),
        (Node("mul", a=0.0, has_weight=False, preds=("a", "b"), contraction="yes"), "contraction"),
        (Node("mul", a=0.0, has_weight=False, preds=("a", "b"), merge="product", zero_inputs="a"), "tuple"),
    ],
)
def test_bad_product_declarations_name_the_node(node: Node, message: str) -> None:
    sources = [Node("a", a=-0.5, b=0.5), Node("b", a=-0.5, b=0.5)]
    with pytest.raises(GraphError, match=message):
        OpGraph([*sources, node, Node("out", a=0.5, b=0.5, preds=("mul",))])


def test_zero_initial_weights_and_their_limits() -> None:
    with pytest.raises(GraphError, match=r"node 'x': b = -inf is not a finite number; b = inf"):
        OpGraph([Node("x", a=0.0, b=-math.inf)])
    with pytest.raises(MaxPError, match="whether a weight starts at zero"):
        StabilityLP(gated(), "adam").solve(b={"up": math.inf})
    sgd_zero_readout = OpGraph([Node("e", a=-0.5, b=0.5), Node("o", a=0.5, b=math.inf, preds=("e",))])
    with pytest.raises(MaxPError, match="every readout zero-initialized"):
        StabilityLP(sgd_zero_readout, "sgd")
    # Adam with a zero readout: r_o = a + c - alpha = c - 0.5, so c_o = 0.5.
    assert StabilityLP(sgd_zero_readout, "adam").solve().c["o"] == pytest.approx(0.5, abs=1e-6)


def test_feature_learning_through_a_parameter_free_node_is_exact() -> None:
    """``n6 = n2 + 0`` (parameter-free) is the only input of the sink, so feature learning needs
    the exact ``r[n2] = 0``. ``n3`` reads ``n0 + n1 + n2`` (all zero at init) and would gain from
    a slack ``r[n2] > 0``; the LP once took it and then refused the instance. Now it returns
    the exact optimum of the mixed-integer form."""
    from tests.core import reference

    zero_w = {"a": -0.5, "b": math.inf, "alpha": 0.0, "omega": 0.0}
    graph = OpGraph(
        [
            Node("n0", u=0.0, **zero_w),
            Node("n1", u=0.0, **zero_w),
            Node("n2", preds=("n0", "n1"), u=0.0, **zero_w),
            Node(
                "n3",
                preds=("n0", "n1", "n2"),
                merge="product",
                zero_inputs=("n0", "n1", "n2"),
                u=0.01,
                **zero_w,
            ),
            Node("n4", a=0.0, has_weight=False, preds=("n0", "n3")),
            Node("n5", a=0.0, has_weight=False, preds=("n0", "n1")),
            Node("n6", a=0.0, has_weight=False, preds=("n2",)),
            Node("n7", a=-0.5, b=1.0, alpha=0.0, omega=0.0, u=0.0, preds=("n6",)),
        ],
        check_stability=False,
    )
    solution = StabilityLP(graph, "adam", feature_learning=True).solve()
    assert solution.r["n6"] == pytest.approx(0.0, abs=1e-9)
    exact = reference.milp_optimum(graph, "adam", feature_learning=True)
    assert solution.objective == pytest.approx(exact, abs=1e-6)
