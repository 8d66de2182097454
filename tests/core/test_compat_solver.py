"""The published maxP's names on this project's LP: tables, solvers and graph classes.

Expectations are typed from the research notes on the published library (its verified
reference outputs and its table), or derived by hand from the published formulas; the
residuals of a chain are recomputed here by a function of the test's own.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maxp_core import (
    GraphError,
    InfeasibleError,
    MaxPError,
    MaxPWarning,
    Node,
    StabilityError,
    StabilityLP,
    chain,
)
from maxp_core import OpGraph as CoreGraph
from maxp_core.compat.abc import ABCParametrization, get_abc_parametrization
from maxp_core.compat.dag import DagNode, MergeType, OpGraph, from_core, to_core
from maxp_core.compat.solver import (
    find_c,
    find_c_adam,
    find_c_dag,
    find_c_dag_adam,
    find_c_dag_sgd,
    find_c_sgd,
)

FULL = (1.0, 0.5, 1.0)
NO = (0.5, 0.5, 0.5)

# --- get_abc_parametrization ------------------------------------------------------------

#: The published table (first, hidden, last), typed from the notes, section 2.2.
PUBLISHED_A = {"mup": (-0.5, 0.0, 0.5), "ntk": (0.0, 0.5, 0.5), "mfp": (0.0, 0.5, 1.0), "sp": (0.0, 0.0, 0.0)}
PUBLISHED_B = {"mup": (0.5, 0.5, 0.5), "ntk": (0.0, 0.0, 0.0), "mfp": (0.0, 0.0, 0.0), "sp": (0.0, 0.5, 0.5)}
PUBLISHED_C = {
    ("mup", "adam", "full"): (0.5, 1.0, 0.5),
    ("mup", "sgd", "full"): (0.0, 0.0, 0.0),
    ("mup", "adam", "no"): (0.5, 0.5, 0.0),
    ("mup", "sgd", "no"): (0.0, -0.5, 0.0),
    ("ntk", "adam", "full"): (0.0, 0.5, 0.5),
    ("ntk", "sgd", "full"): (-0.5, -0.5, 0.0),
    ("ntk", "adam", "no"): (0.0, 0.0, 0.0),
    ("ntk", "sgd", "no"): (-0.5, -1.0, -0.5),
    ("mfp", "adam", "full"): (0.0, 0.5, 0.0),
    ("mfp", "sgd", "full"): (-1.0, -1.0, -1.0),
    ("mfp", "adam", "no"): (0.0, 0.0, 0.5),  # the flagged entry: the LP gives -0.5 last
    ("mfp", "sgd", "no"): (-1.0, -1.5, -1.0),
    ("sp", "adam", "full"): (0.0, 1.0, 1.0),
    ("sp", "sgd", "full"): (-0.5, 0.5, 1.0),
    ("sp", "adam", "no"): (0.0, 0.5, 0.5),
    ("sp", "sgd", "no"): (-0.5, 0.0, 0.5),
}
FLAGGED = ("mfp", "adam", "no")


def by_position(first: float, hidden: float, last: float, n: int) -> list[float]:
    return [first] + [hidden] * (n - 2) + [last]


@pytest.mark.parametrize("key", sorted(PUBLISHED_C))
@pytest.mark.parametrize("n_layers", [2, 3, 4, 7])
def test_abc_reproduces_the_published_table(key: tuple[str, str, str], n_layers: int) -> None:
    param, optimizer, alignment = key
    got = get_abc_parametrization(n_layers, param, optimizer, alignment)
    first, hidden, last = PUBLISHED_C[key]
    if key == FLAGGED:
        last = -0.5  # readout: a + c - alpha >= 0 with a = 1, alpha = 0.5
    assert got.al == by_position(*PUBLISHED_A[param], n_layers)
    assert got.bl == by_position(*PUBLISHED_B[param], n_layers)
    assert got.cl == pytest.approx(by_position(first, hidden, last, n_layers), abs=1e-12)
    assert got.name == f"{param}-{optimizer}-{alignment}"


def hand_c(param: str, optimizer: str, alignment: str, n: int) -> list[float]:
    """``c`` by hand from the published LP (notes, section 5), for ``n >= 3``.

    Adam: each layer is stable exactly when ``a + c - alpha >= 0`` (the embedding: ``a + c
    >= 0``), the other terms hold with every earlier ``r = 0``, so each ``c`` sits at its
    bound. SGD: the gradient scale is ``g = min(a_L + b_L, 2 a_L + c_L)``; every other layer
    needs ``c >= alpha - g - 2a`` (embedding ``-g - 2a``), so ``g`` is best at its largest,
    ``a_L + b_L``, which needs ``c_L >= b_L - a_L``; the readout itself needs ``c_L >= alpha -
    2 a_L``.
    """
    a = by_position(*PUBLISHED_A[param], n)
    b = by_position(*PUBLISHED_B[param], n)
    alpha = FULL[0] if alignment == "full" else NO[0]
    if optimizer == "adam":
        return [-a[0]] + [alpha - x for x in a[1:]]
    c_last = max(alpha - 2 * a[-1], b[-1] - a[-1])
    g = a[-1] + b[-1]
    return [-g - 2 * a[0]] + [alpha - g - 2 * x for x in a[1:-1]] + [c_last]


@pytest.mark.parametrize("key", sorted(PUBLISHED_C))
@pytest.mark.parametrize("n_layers", [3, 5])
def test_abc_c_equals_the_hand_derivation(key: tuple[str, str, str], n_layers: int) -> None:
    assert get_abc_parametrization(n_layers, *key).cl == pytest.approx(hand_c(*key, n_layers), abs=1e-12)


@pytest.mark.parametrize("key", sorted(PUBLISHED_C))
def test_abc_c_is_stable_and_tight(key: tuple[str, str, str]) -> None:
    param, optimizer, alignment = key
    p = get_abc_parametrization(5, param, optimizer, alignment)
    triple = FULL if alignment == "full" else NO
    lists = [[x] * 5 for x in triple]
    assert_optimal_point(p.al, p.bl, *lists, p.cl, optimizer)


def test_abc_published_examples() -> None:
    assert get_abc_parametrization(n_layers=4, parametrization="mup") == ABCParametrization(
        al=[-0.5, 0.0, 0.0, 0.5], bl=[0.5] * 4, cl=[0.5, 1.0, 1.0, 0.5], name="mup-adam-full"
    )
    two = get_abc_parametrization(2)
    assert (two.al, two.bl, two.cl) == ([-0.5, 0.5], [0.5, 0.5], [0.5, 0.5])
    assert [f.name for f in dataclasses.fields(ABCParametrization)] == ["al", "bl", "cl", "name"]


def test_abc_names_are_case_insensitive() -> None:
    assert get_abc_parametrization(3, "MuP", "SGD", "No") == get_abc_parametrization(3, "mup", "sgd", "no")
    assert get_abc_parametrization(3, "NTK").name == "ntk-adam-full"


@pytest.mark.parametrize(
    ("args", "phrase", "valid"),
    [
        ((1,), "n_layers must be >= 2", "got 1"),
        ((0,), "n_layers must be >= 2", "got 0"),
        ((2.5,), "n_layers must be >= 2", "got 2.5"),
        ((3, "muq"), "Unknown parametrization", "'sp', 'ntk', 'mup', 'mfp'"),
        ((3, "mup", "rmsprop"), "Unknown optimizer", "'adam', 'sgd'"),
        ((3, "mup", "adam", "half"), "Unknown alignment", "'full', 'no'"),
    ],
)
def test_abc_errors(args: tuple[object, ...], phrase: str, valid: str) -> None:
    with pytest.raises(MaxPError) as info:
        get_abc_parametrization(*args)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert phrase in str(info.value)
    assert valid in str(info.value)


# --- a chain's residuals by the published formulas ---------------------------------------


def chain_residuals(
    al: list[float],
    bl: list[float],
    alpha: list[float],
    omega: list[float],
    u: list[float],
    cl: list[float],
    optimizer: str,
) -> list[float]:
    """The published ``r_l`` of a chain given ``c`` (notes, section 5)."""
    last = len(al) - 1
    g = min(al[last] + bl[last], 2 * al[last] + cl[last])
    r: list[float] = []
    for i in range(len(al)):
        lr = al[i] + cl[i] if optimizer == "adam" else 2 * al[i] + cl[i] + (g if i < last else 0.0)
        if i == 0:
            r.append(lr)
        elif i < last:
            r.append(min(lr - alpha[i], lr + r[-1] - u[i], 0.5 + r[-1] - omega[i]))
        else:
            r.append(min(al[i] + bl[i] + r[-1] - omega[i], lr - alpha[i], lr + r[-1] - u[i]))
    return r


def assert_optimal_point(
    al: list[float],
    bl: list[float],
    alpha: list[float],
    omega: list[float],
    u: list[float],
    cl: list[float],
    optimizer: str,
) -> None:
    """Every ``r >= 0``, and lowering any one ``c`` by 1e-3 makes some ``r`` negative."""
    r = chain_residuals(al, bl, alpha, omega, u, cl, optimizer)
    assert min(r) >= -1e-9, r
    for k in range(len(cl)):
        lowered = [c - 1e-3 * (j == k) for j, c in enumerate(cl)]
        assert min(chain_residuals(al, bl, alpha, omega, u, lowered, optimizer)) < -5e-4, k


# --- chain form: the published verified outputs ----------------------------------------

Z3 = [0.0] * 3
REFERENCE = [
    (find_c_adam, ([0, 0.5, 0.5], [0, 0, 0], Z3, Z3, Z3), [0.0, -0.5, -0.5], [0.0, 0.0, 0.0]),
    (find_c_sgd, ([0, 0.5, 0.5], [0, 0, 0], Z3, Z3, Z3), [-0.5, -1.5, -0.5], [0.0, 0.0, 0.5]),
    (find_c_adam, ([-0.5, 0, 0.5], [0.5] * 3, Z3, Z3, Z3), [0.5, 0.0, -0.5], [0.0, 0.0, 0.0]),
    (find_c_sgd, ([-0.5, 0, 0.5], [0.5] * 3, Z3, Z3, Z3), [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]),
    (
        find_c_adam,
        ([-0.5, 0, 0, 0.5], [0.5] * 4, [1.0] * 4, [0.5] * 4, [1.0] * 4),
        [0.5, 1.0, 1.0, 0.5],
        [0.0] * 4,
    ),
    (
        find_c_adam,
        ([-0.5, 0, 0, 0.5], [0.5] * 4, [0.5] * 4, [0.5] * 4, [0.5] * 4),
        [0.5, 0.5, 0.5, 0.0],
        [0.0] * 4,
    ),
]


@pytest.mark.parametrize(("entry", "args", "cl", "rl"), REFERENCE)
def test_chain_reference_outputs(
    entry: object, args: tuple[list[float], ...], cl: list[float], rl: list[float]
) -> None:
    got_c, got_r = entry(*args)  # type: ignore[operator]
    assert isinstance(got_c, list) and isinstance(got_r, list)
    assert all(isinstance(x, float) for x in got_c + got_r)
    assert got_c == pytest.approx(cl, abs=1e-9)
    assert got_r == pytest.approx(rl, abs=1e-9)
    optimizer = "adam" if entry is find_c_adam else "sgd"
    assert find_c(*args, optimizer_type=optimizer.upper()) == (got_c, got_r)


def test_chain_solvers_agree_and_big_m_is_ignored() -> None:
    args = ([-0.5, 0, 0, 0.5], [0.5] * 4, [0.9, 0.7, 0.6, 0.8], [0.5, 0.4, 0.6, 0.3], [0.8, 0.5, 0.9, 0.7])
    highs = find_c(*args)
    assert find_c(*args, solver="clarabel")[0] == pytest.approx(highs[0], abs=1e-6)
    assert find_c(*args, solver="HiGHS", M=1e-3) == highs
    assert find_c_adam(*args, None, False, 0.5) == highs


@pytest.mark.parametrize(
    ("al", "bl", "layer", "total", "need"),
    [
        ([0.1, 0.5, 0.5], [0, 0, 0], 0, 0.1, "must equal 0.0"),
        ([0.0, 0.5, 0.5], [0, 0.25, 0], 1, 0.75, "must equal 0.5"),
        ([0.0, 0.5, 0.2], [0, 0, 0.1], 2, 0.3, "must be at least 0.5"),
    ],
)
def test_chain_stability_errors_name_the_layer(
    al: list[float], bl: list[float], layer: int, total: float, need: str
) -> None:
    with pytest.raises(StabilityError) as info:
        find_c(al, bl, Z3, Z3, Z3)
    text = str(info.value)
    assert f"al[{layer}] + bl[{layer}]" in text
    assert f"= {total!r}" in text
    assert need in text and "stability at initialization" in text


def test_chain_input_errors() -> None:
    with pytest.raises(MaxPError, match="same length"):
        find_c([0, 0.5], [0, 0, 0], Z3, Z3, Z3)
    with pytest.raises(MaxPError, match="at least 2 layers"):
        find_c([0.0], [0.5], [0.0], [0.0], [0.0])
    with pytest.raises(MaxPError, match=r"Unknown optimizer_type: 'adafactor'\. Must be 'adam' or 'sgd'"):
        find_c([0, 0.5, 0.5], [0, 0, 0], Z3, Z3, Z3, "adafactor")
    with pytest.raises(MaxPError, match=r"alpha\[1\] = 1\.5"):
        find_c([0, 0.5, 0.5], [0, 0, 0], [0.0, 1.5, 0.0], Z3, Z3)
    with pytest.raises(MaxPError, match="unknown solver 'cbc'"):
        find_c([0, 0.5, 0.5], [0, 0, 0], Z3, Z3, Z3, solver="cbc")
    with pytest.raises(TypeError, match=r"find_c_sgd\(al, bl, alpha, omega, u, solver=None"):
        find_c_sgd([0, 0.5, 0.5], [0, 0, 0], Z3, Z3, Z3, optimizer_type="adam")


def test_a_pulp_solver_object_is_ignored_with_a_warning() -> None:
    class PULP_CBC_CMD:  # a stand-in: any non-string solver
        msg = False

    with pytest.warns(MaxPWarning, match="is not used: this backend solves an exact LP"):
        cl, _ = find_c_adam([0, 0.5, 0.5], [0, 0, 0], Z3, Z3, Z3, solver=PULP_CBC_CMD())
    assert cl == find_c_adam([0, 0.5, 0.5], [0, 0, 0], Z3, Z3, Z3)[0]


def test_infeasible_chain_raises_a_value_error() -> None:
    # The readout needs a + b + r_1 - omega >= 0, i.e. r_1 >= 0.5 with a + b = 0.5 and
    # omega = 1; feature learning asks r_1 == 0.
    args = ([-0.5, 0, 0.5], [0.5, 0.5, 0.0], [1.0] * 3, [0.5, 0.5, 1.0], [1.0] * 3)
    assert find_c(*args)[1][1] == pytest.approx(0.5)
    with pytest.raises(InfeasibleError, match="LP solver did not find an optimal solution") as info:
        find_c(*args, feature_learning=True)
    assert isinstance(info.value, ValueError)


def test_feature_learning_pins_the_last_hidden_residual() -> None:
    cl, rl = find_c([-0.5, 0, 0, 0.5], [0.5] * 4, [1.0] * 4, [0.5] * 4, [1.0] * 4, feature_learning=True)
    assert rl[2] == pytest.approx(0.0, abs=1e-9)
    assert cl == pytest.approx([0.5, 1.0, 1.0, 0.5])


GRID = [x / 4 for x in range(-4, 5)]
ALIGN = [x / 10 for x in range(11)]


@st.composite
def stable_chains(draw: st.DrawFn) -> tuple[list[float], ...]:
    n = draw(st.integers(2, 6))
    al = [draw(st.sampled_from(GRID)) for _ in range(n)]
    extra = draw(st.sampled_from([0.0, 0.25, 0.5]))
    bl = [-al[0]] + [0.5 - a for a in al[1:-1]] + [0.5 + extra - al[-1]]
    lists = [[draw(st.sampled_from(ALIGN)) for _ in range(n)] for _ in range(3)]
    return (al, bl, *lists)


@settings(max_examples=60, deadline=None)
@given(stable_chains(), st.sampled_from(["adam", "sgd"]))
def test_chain_answers_are_optimal_points_of_the_published_lp(
    args: tuple[list[float], ...], optimizer: str
) -> None:
    cl, rl = find_c(*args, optimizer_type=optimizer)
    assert rl == pytest.approx(chain_residuals(*args, cl, optimizer), abs=1e-9)
    assert_optimal_point(*args, cl, optimizer)


def compat_chain(
    al: list[float], bl: list[float], alpha: list[float], omega: list[float], u: list[float]
) -> OpGraph:
    """The chain as a published-style graph, built by hand."""
    names = [f"l{i}" for i in range(len(al))]
    nodes = {}
    for i, name in enumerate(names):
        nodes[name] = DagNode(
            name,
            al[i],
            bl[i],
            "hidden",
            True,
            8,
            names[i - 1 : i] if i else [],
            names[i + 1 : i + 2],
            MergeType.MIN,
            alpha[i],
            omega[i],
            u[i],
        )
    return OpGraph(nodes)


@settings(max_examples=40, deadline=None)
@given(stable_chains(), st.sampled_from(["adam", "sgd"]))
def test_chain_form_equals_graph_form(args: tuple[list[float], ...], optimizer: str) -> None:
    cl, rl = find_c(*args, optimizer_type=optimizer)
    by_node = find_c(compat_chain(*args), optimizer)
    assert list(by_node) == [f"l{i}" for i in range(len(cl))]
    assert [c for c, _ in by_node.values()] == pytest.approx(cl, abs=1e-9)
    assert [r for _, r in by_node.values()] == pytest.approx(rl, abs=1e-9)


# --- graph form -------------------------------------------------------------------------


def build(*specs: tuple[object, ...]) -> OpGraph:
    """``(name, a, b, layer_type, has_weight, preds[, merge])`` -> a graph with edges both ways."""
    nodes: dict[str, DagNode] = {}
    for name, a, b, layer_type, weighted, preds, *merge in specs:
        nodes[name] = DagNode(  # type: ignore[arg-type]
            name, a, b, layer_type, weighted, 16 if weighted else 0, list(preds), [], *merge
        )
    for node in nodes.values():
        for pred in node.predecessors:
            nodes[pred].successors.append(node.name)
    return OpGraph(nodes)


def emb_h_head() -> OpGraph:
    return build(
        ("emb", -0.5, 0.5, "embedding", True, []),
        ("h", 0.0, 0.5, "hidden", True, ["emb"]),
        ("head", 0.5, 0.5, "readout", True, ["h"]),
    )


def test_graph_reference_outputs() -> None:
    graph = emb_h_head()
    assert find_c(graph) == {"emb": (0.5, 0.0), "h": (1.0, 0.0), "head": (0.5, 0.0)}
    assert find_c_sgd(graph) == {"emb": (0.0, 0.0), "h": (0.0, 0.0), "head": (0.0, 0.0)}
    for node in graph.nodes.values():
        node.alpha = node.omega = node.u = 0.0
    assert [c for c, _ in find_c_adam(graph).values()] == [0.5, 0.0, -0.5]
    two = build(("emb", -0.5, 0.5, "embedding", True, []), ("head", 0.5, 0.5, "readout", True, ["emb"]))
    assert [c for c, _ in find_c_dag_adam(two).values()] == [0.5, 0.5]
    assert [c for c, _ in find_c_dag_sgd(two).values()] == [0.0, 0.0]


def tutorial_block() -> OpGraph:
    """One block of the published tutorial's transformer, as its tracer records it (notes, 8.2)."""
    qkv, score, proj = "blocks.0.attn.qkv", "blocks.0.attn.attn_score", "blocks.0.attn.proj"
    gate, up, down = "blocks.0.mlp.gate", "blocks.0.mlp.up", "blocks.0.mlp.down"
    return build(
        ("tok_emb", -0.5, 0.5, "embedding", True, []),
        ("pos_emb", -0.5, 0.5, "embedding", True, []),
        ("_add_0", 0.0, 0.0, "merge", False, ["tok_emb", "pos_emb"]),
        (qkv, 0.0, 0.5, "hidden", True, ["_add_0"]),
        (score, 0.5, 0.5, "readout", False, [qkv]),
        ("_add_1", 0.0, 0.0, "merge", False, [score, qkv]),
        (proj, 0.0, 0.5, "hidden", True, ["_add_1"]),
        ("_add_2", 0.0, 0.0, "merge", False, ["_add_0", proj]),
        (gate, 0.0, 0.5, "hidden", True, ["_add_2"]),
        (up, 0.0, 0.5, "hidden", True, ["_add_2"]),
        ("_mul_3", 0.0, 0.0, "merge", False, [gate, up], MergeType.SUM),
        (down, 0.0, 0.5, "hidden", True, ["_mul_3"]),
        ("_add_4", 0.0, 0.0, "merge", False, ["_add_2", down]),
        ("head", 0.5, 0.5, "readout", True, ["_add_4"]),
    )


def test_worked_example_residual_adds_and_gated_product() -> None:
    result = find_c(tutorial_block())
    assert list(result)[:3] == ["pos_emb", "tok_emb", "_add_0"]  # ready nodes by name
    weighted = {name: c for name, (c, _) in result.items() if c is not None}
    assert weighted == {
        "pos_emb": 0.5,
        "tok_emb": 0.5,
        "blocks.0.attn.qkv": 1.0,
        "blocks.0.attn.proj": 1.0,
        "blocks.0.mlp.gate": 1.0,
        "blocks.0.mlp.up": 1.0,
        "blocks.0.mlp.down": 1.0,
        "head": 0.5,
    }
    assert result["blocks.0.attn.attn_score"] == (None, 0.5)
    assert all(r == 0.0 for name, (_, r) in result.items() if name != "blocks.0.attn.attn_score")
    assert find_c_dag(tutorial_block(), "SGD") == find_c_sgd(tutorial_block())


def gated_sources(zero_inputs: list[str]) -> OpGraph:
    graph = build(
        ("emb", -0.5, 0.5, "embedding", True, []),
        ("s1", 0.5, 0.0, "hidden", False, ["emb"]),
        ("s2", 0.25, 0.0, "hidden", False, ["emb"]),
        ("_mul_0", 0.0, 0.0, "merge", False, ["s1", "s2"], MergeType.SUM),
        ("head", 0.5, 0.5, "readout", True, ["_mul_0"]),
    )
    graph.nodes["_mul_0"].zero_inputs = zero_inputs
    return graph


def test_a_product_of_order_one_factors_is_as_large_as_the_larger_update() -> None:
    # r(s1) = 0.5, r(s2) = 0.25: the product's update is dominated by the larger factor
    # update (r_in = 0.25); with both factors zero at initialization it is the
    # published sum 0.75.
    assert find_c(gated_sources([]))["_mul_0"] == (None, 0.25)
    assert find_c(gated_sources(["s1", "s2"]))["_mul_0"] == (None, 0.75)


def test_graph_form_pins_and_ignores_warm_start() -> None:
    graph = emb_h_head()
    free = find_c(graph)
    assert find_c(graph, c_prev={"emb": 3.0, "h": 3.0, "head": 3.0}, M=0.1) == free
    pinned = find_c(graph, c_fixed={"h": 1.5})
    assert pinned["h"] == (1.5, 0.0)  # r = min(1.5 - 1, 1.5 + 0 - 1, 0.5 + 0 - 0.5)
    assert pinned["head"][0] == pytest.approx(0.5)
    with pytest.raises(InfeasibleError, match="LP solver did not find an optimal solution"):
        find_c(graph, c_fixed={"h": 0.2})


def test_graph_form_takes_the_core_graph_and_keyword_graph() -> None:
    core = chain(3)
    assert find_c(core) == find_c(graph=from_core(core)) == find_c_dag_adam(core)
    assert list(find_c(core)) == ["layer0", "layer1", "layer2"]


def test_graph_entry_points_refuse_lists() -> None:
    with pytest.raises(MaxPError, match="find_c_dag takes an OpGraph"):
        find_c_dag([0.0, 0.5])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="c_fixed"):
        find_c([0, 0.5, 0.5], [0, 0, 0], Z3, Z3, Z3, c_fixed={})


def test_graph_stability_error_names_the_node() -> None:
    graph = emb_h_head()
    graph.nodes["h"].b = 1.0
    with pytest.raises(StabilityError, match=r"'h' \(hidden\): a \+ b = 0\.0 \+ 1\.0 = 1\.0"):
        find_c(graph)


# --- graph classes ----------------------------------------------------------------------


def test_dag_node_fields_follow_the_published_order() -> None:
    published = [
        "name", "a", "b", "layer_type", "has_weight", "width_dim", "predecessors", "successors",
        "merge_type", "alpha", "omega", "u",
    ]  # fmt: skip
    assert [f.name for f in dataclasses.fields(DagNode)][: len(published)] == published
    node = DagNode("x", 0.0, 0.5, "hidden", True, 64)
    assert (node.predecessors, node.successors, node.merge_type) == ([], [], MergeType.MIN)
    assert (node.alpha, node.omega, node.u) == (1.0, 0.5, 1.0)
    assert MergeType("min") is MergeType.MIN and MergeType.SUM.value == "sum"


def test_graph_queries() -> None:
    graph = tutorial_block()
    assert [n.name for n in graph.sources()] == ["tok_emb", "pos_emb"]
    assert [n.name for n in graph.sinks()] == ["head"]
    order = [n.name for n in graph.topological_order()]
    assert order.index("blocks.0.mlp.gate") < order.index("blocks.0.mlp.up") < order.index("_mul_3")
    assert OpGraph().nodes == {} and OpGraph(None).nodes == {}


@pytest.mark.parametrize(
    ("edit", "phrase"),
    [
        (lambda g: g.nodes["head"].successors.append("emb"), "Inconsistent edge: 'head' -> 'emb'"),
        (lambda g: g.nodes["h"].predecessors.append("head"), "Inconsistent edge: 'head' -> 'h'"),
        (lambda g: g.nodes["h"].successors.append("nope"), "Successor 'nope' of 'h' not in graph"),
        (lambda g: g.nodes["h"].predecessors.append("nope"), "Predecessor 'nope' of 'h' not in graph"),
        (lambda g: g.nodes.update(x=g.nodes["h"]), "stored under 'x' is named 'h'"),
    ],
)
def test_validate_errors(edit: object, phrase: str) -> None:
    graph = emb_h_head()
    edit(graph)  # type: ignore[operator]
    with pytest.raises(GraphError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        graph.validate()


def test_validate_cycle_and_empty() -> None:
    graph = emb_h_head()
    graph.nodes["head"].successors.append("h")
    graph.nodes["h"].predecessors.append("head")
    with pytest.raises(GraphError, match=r"Graph contains a cycle through nodes \['h', 'head'\]"):
        graph.validate()
    with pytest.raises(GraphError, match=r"Graph has no source nodes \(no predecessors\)"):
        OpGraph().validate()
    with pytest.raises(GraphError, match="Graph contains a cycle"):
        find_c(graph)


def test_to_core_maps_merges_weights_and_numbers() -> None:
    graph = tutorial_block()
    graph.nodes["blocks.0.mlp.up"].alpha = 0.7
    core = to_core(graph)
    assert isinstance(core, CoreGraph)
    assert core.names == tuple(n.name for n in graph.topological_order())
    assert core.node("_mul_3").merge == "product" and core.node("_add_2").merge == "min"
    assert core.node("_add_2").preds == ("_add_0", "blocks.0.attn.proj")
    assert not core.node("blocks.0.attn.attn_score").has_weight
    assert core.node("blocks.0.attn.attn_score").a == 0.5
    assert core.node("blocks.0.mlp.up").alpha == 0.7
    assert all(n.role is None for n in core.nodes)  # roles follow the topology
    with pytest.raises(GraphError, match="merge_type must be"):
        bad = tutorial_block()
        bad.nodes["_mul_3"].merge_type = "max"  # type: ignore[assignment]
        to_core(bad)


def core_attention() -> CoreGraph:
    """A core graph with every kind of node: contraction, products with and without zero
    factors, an all-zero ``sum`` merge and residual adds."""
    return CoreGraph(
        [
            Node("emb", a=-0.5, b=0.5, role="embedding"),
            Node("q", a=0.0, b=0.5, preds=("emb",)),
            Node("k", a=0.0, b=0.5, preds=("emb",)),
            Node("v", a=0.0, b=math.inf, preds=("emb",)),
            Node("scores", a=1.0, has_weight=False, preds=("q", "k"), merge="product", contraction=True),
            Node("mix", a=0.0, has_weight=False, preds=("scores", "v"), merge="product", zero_inputs=("v",)),
            Node("o", a=0.0, b=0.5, preds=("mix",)),
            Node("g", a=0.0, b=math.inf, preds=("emb",)),
            Node("h", a=0.0, b=math.inf, preds=("emb",)),
            Node("gh", a=0.0, has_weight=False, preds=("g", "h"), merge="sum"),
            Node("add", a=0.0, has_weight=False, preds=("emb", "o", "gh")),
            Node("head", a=0.5, b=0.5, preds=("add",), alpha=0.6, omega=0.4, u=0.8),
        ]
    )


def test_from_core_writes_the_published_shape() -> None:
    graph = from_core(core_attention(), width_dims={"emb": 64})
    nodes = graph.nodes
    assert list(nodes) == [n.name for n in core_attention().nodes]
    assert nodes["emb"].width_dim == 64 and nodes["q"].width_dim == 0
    assert [nodes[n].layer_type for n in ("emb", "q", "head", "add", "gh", "scores")] == [
        "embedding", "hidden", "readout", "merge", "merge", "readout",
    ]  # fmt: skip
    assert nodes["scores"].contraction and not nodes["scores"].has_weight
    assert nodes["scores"].merge_type is MergeType.MIN
    assert nodes["mix"].merge_type is MergeType.SUM and nodes["mix"].zero_inputs == ["v"]
    assert nodes["gh"].merge_type is MergeType.SUM and nodes["gh"].zero_inputs == ["g", "h"]
    assert nodes["add"].merge_type is MergeType.MIN
    assert nodes["emb"].successors == ["q", "k", "v", "g", "h", "add"]
    assert (nodes["head"].alpha, nodes["head"].omega, nodes["head"].u) == (0.6, 0.4, 0.8)
    graph.validate()
    with pytest.raises(GraphError, match=r"name \['nope'\]"):
        from_core(core_attention(), layer_types={"nope": "hidden"})


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_core_round_trip_keeps_the_lp(optimizer: str) -> None:
    core = core_attention()
    back = to_core(from_core(core))
    assert sorted(back.names) == sorted(core.names)
    for node in core.nodes:
        other = back.node(node.name)
        same = dataclasses.replace(node, role=None, merge="product" if node.merge == "sum" else node.merge)
        if node.merge == "sum":
            same = dataclasses.replace(same, zero_inputs=node.preds)
        if len(node.preds) < 2 and not node.contraction:
            same = dataclasses.replace(same, merge=other.merge)  # meaningless with one input
        assert other == same
    direct = StabilityLP(core, optimizer).solve()
    result = find_c(from_core(core), optimizer)
    assert {n: c for n, (c, _) in result.items() if c is not None} == pytest.approx(direct.c, abs=1e-9)
    assert {n: r for n, (_, r) in result.items()} == pytest.approx(direct.r, abs=1e-9)


def test_compat_round_trip_is_exact() -> None:
    graph = tutorial_block()
    back = from_core(
        to_core(graph),
        width_dims={n.name: n.width_dim for n in graph.nodes.values()},
        layer_types={n.name: n.layer_type for n in graph.nodes.values()},
    )
    assert back.nodes == {n.name: n for n in graph.topological_order()}


def test_conversions_refuse_the_other_class() -> None:
    with pytest.raises(GraphError, match="already the LP's graph"):
        to_core(chain(3))  # type: ignore[arg-type]
    with pytest.raises(GraphError, match=r"from_core takes a maxp_core\.OpGraph"):
        from_core(emb_h_head())  # type: ignore[arg-type]
