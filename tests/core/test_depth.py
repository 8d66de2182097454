"""Depth and topology scaling (maxp_core.depth) against enumeration, the paper's worked
examples, and activations measured through a dense DAG."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings

import maxp_core as mc
from maxp_core import MaxPError, Node, OpGraph, chain
from maxp_core.depth import (
    BranchScaling,
    ChenScaling,
    chen_lr_factor,
    depth_factors,
    init_in_degrees,
    path_statistics,
    residual_branch_outputs,
)
from maxp_core.errors import GraphError
from tests.core.strategies import dags


def enumerate_path_depths(graph: OpGraph, offset: int = 0) -> list[int]:
    """Every source-to-sink path's depth, by walking all paths (exponential, small graphs only)."""
    depths: list[int] = []

    def walk(i: int, depth: int) -> None:
        depth += int(graph.nodes[i].has_weight)
        if graph.is_sink(i):
            depths.append(depth + offset)
        for s in graph.succ_indices(i):
            walk(s, depth)

    for i in range(len(graph)):
        if graph.is_source(i):
            walk(i, 0)
    return depths


@settings(max_examples=60, deadline=None)
@given(dags(min_nodes=3, max_nodes=10))
def test_path_statistics_match_enumeration(graph: OpGraph) -> None:
    for offset in (0, 3):
        depths = enumerate_path_depths(graph, offset)
        stats = path_statistics(graph, offset)
        assert stats.count == len(depths)
        assert stats.depth_sum == sum(depths)
        assert stats.square_sum == sum(d**2 for d in depths)
        assert stats.cube_sum == sum(d**3 for d in depths)
        assert (stats.shortest, stats.longest) == (min(depths), max(depths))


def chen_mlp_cell(num_vertices: int, edges: list[tuple[int, int]], after: int = 2) -> OpGraph:
    """Chen et al.'s MLP: a stem layer into vertex 0, a cell whose edges are weighted layers
    between activation vertices, then ``after`` layers out of the last vertex (stem plus
    ``after`` = the paper's offset of 3 layers outside the cell).

    Edge ``(i, j)`` reads vertex ``i``, the sum of the edges into it.
    """
    into = {v: [f"e{i}{j}" for i, j in edges if j == v] for v in range(num_vertices)}
    into[0] = ["stem"]
    nodes = [Node("stem", a=-0.5)]
    nodes += [Node(f"e{i}{j}", a=0.0, preds=tuple(into[i])) for i, j in edges]
    last = tuple(into[num_vertices - 1])
    for k in range(after - 1):
        nodes.append(Node(f"post{k}", a=0.0, preds=last))
        last = (f"post{k}",)
    nodes.append(Node("readout", a=0.5, preds=last))
    return OpGraph(nodes)


def test_chen_worked_example_chain_mlp() -> None:
    """A 5-vertex chain cell, base input -> hidden -> output: (7/3)^(-3/2) = 0.281."""
    cell = chen_mlp_cell(5, [(0, 1), (1, 2), (2, 3), (3, 4)])
    assert path_statistics(cell).cube_sum == 7**3
    assert chen_lr_factor(cell, base=3) == pytest.approx((7 / 3) ** -1.5)
    assert round(chen_lr_factor(cell, base=3), 3) == 0.281


def test_chen_worked_example_dense_mlp_dag() -> None:
    """Every edge of a 5-vertex DAG: path depths 7, 6, 6, 5, 6, 5, 5, 4 and a factor of 0.137."""
    cell = chen_mlp_cell(5, list(itertools.combinations(range(5), 2)))
    depths = sorted(enumerate_path_depths(cell), reverse=True)
    assert depths == sorted([7, 6, 6, 5, 6, 5, 5, 4], reverse=True)
    assert path_statistics(cell).cube_sum == 343 + 3 * 216 + 3 * 125 + 64
    assert chen_lr_factor(cell, base=3) == pytest.approx(math.sqrt(27 / 1430))
    assert round(chen_lr_factor(cell, base=3), 3) == 0.137


def nas_bench_cell(ops: dict[tuple[int, int], str]) -> OpGraph:
    """A NAS-Bench-201 cell (4 vertices, an op on each of the 6 edges) between a stem
    convolution and a readout: a convolution is a weighted layer, pooling an activation-only
    node and a skip an identity (the vertex passes straight on)."""
    nodes = [Node("stem", a=-0.5)]
    vertex: dict[int, tuple[str, ...]] = {0: ("stem",)}
    for j in range(1, 4):
        terms: list[str] = []
        for i in range(j):
            op = ops[(i, j)]
            if op == "skip":
                terms += vertex[i]
            elif op != "none":
                nodes.append(Node(f"{op}{i}{j}", a=0.0, has_weight=op == "conv", preds=vertex[i]))
                terms.append(f"{op}{i}{j}")
        vertex[j] = tuple(dict.fromkeys(terms))
    nodes.append(Node("readout", a=0.5, preds=vertex[3]))
    return OpGraph(nodes)


EDGES = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_chen_worked_example_nas_bench_cells() -> None:
    """All 3x3 convolutions: path depths 4, 3, 3, 2 against a base depth of 1, a factor of
    0.089 before the kernel; all average pooling: 4 paths of depth 1, a factor of 0.5.

    The paper's code counts a path's convolutions in the cell plus one. Here the stem and the
    readout are in the graph, so every path is one layer deeper than the paper counts it.
    """
    convs = nas_bench_cell(dict.fromkeys(EDGES, "conv"))
    assert sorted(d - 2 for d in enumerate_path_depths(convs)) == [1, 2, 2, 3]
    # The paper's depths count the cell's layers plus one: offset -1 of our two outer layers.
    in_cell = [d - 1 for d in enumerate_path_depths(convs)]
    assert sorted(in_cell) == [2, 3, 3, 4]
    assert math.sqrt(1 / sum(d**3 for d in in_cell)) == pytest.approx(0.0891, abs=5e-5)
    pools = nas_bench_cell(dict.fromkeys(EDGES, "pool"))
    stats = path_statistics(pools)
    assert stats.count == 4 and stats.shortest == stats.longest == 2  # stem and readout only
    assert chen_lr_factor(pools, base=2) == pytest.approx(0.5)
    single = nas_bench_cell({e: "conv" if e == (0, 3) else "none" for e in EDGES})
    assert chen_lr_factor(convs, base=single) == pytest.approx(
        math.sqrt(3**3 / sum((d + 2) ** 3 for d in [1, 2, 2, 3]))  # stem + cell + readout
    )
    # The kernel-size factor multiplies on top: 3x3 convolutions against a 1x1 base.
    assert chen_lr_factor(convs, base=single, kernel_size=3) == pytest.approx(
        chen_lr_factor(convs, base=single) / 3
    )


@pytest.mark.parametrize(("depth", "base"), [(3, 3), (6, 3), (12, 3), (16, 2), (5, 7)])
def test_chain_factor_is_depth_ratio_to_the_minus_three_halves(depth: int, base: int) -> None:
    assert chen_lr_factor(chain(depth), base=base) == pytest.approx((depth / base) ** -1.5)
    assert chen_lr_factor(chain(depth), base=chain(base)) == pytest.approx((depth / base) ** -1.5)
    factors = ChenScaling(base=base).factors(chain(depth), "sgd")
    assert list(factors.lr.values()) == pytest.approx([(depth / base) ** -1.5] * depth)
    assert set(factors.init.values()) == {1.0}  # a chain has no sums


def dense_preactivation_dag(num_vertices: int) -> OpGraph:
    """x_j = relu(sum_{i<j} W_ij x_i): edge (i, j) reads vertex i, the sum of the edges into i."""
    edges = list(itertools.combinations(range(num_vertices), 2))
    into = {v: tuple(f"e{i}_{j}" for i, j in edges if j == v) for v in range(num_vertices)}
    into[0] = ("stem",)
    nodes = [Node("stem", a=-0.5)] + [Node(f"e{i}_{j}", a=0.0, preds=into[i]) for i, j in edges]
    nodes.append(Node("readout", a=0.5, preds=into[num_vertices - 1]))
    return OpGraph(nodes)


def test_target_init_keeps_activation_rms_through_a_dense_dag() -> None:
    """Pre-activation sums initialised with the target in-degree: every vertex's RMS within
    10% of the input's, where He initialisation without the in-degree grows it."""
    vertices, width, batch = 7, 512, 256
    graph = dense_preactivation_dag(vertices)
    degrees = init_in_degrees(graph, "target")
    assert degrees["e0_1"] == 1 and degrees["e0_6"] == 6 and degrees["e3_5"] == 5
    rng = np.random.default_rng(0)

    def vertex_rms(scaled: bool) -> list[float]:
        x = {0: rng.standard_normal((batch, width))}
        for j in range(1, vertices):
            pre = sum(
                x[i]
                @ (rng.standard_normal((width, width)) * math.sqrt(2 / width))
                * (1 / math.sqrt(degrees[f"e{i}_{j}"]) if scaled else 1.0)
                for i in range(j)
            )
            x[j] = np.maximum(pre, 0.0)
        return [float(np.sqrt(np.mean(x[j] ** 2))) for j in range(vertices)]

    scaled = vertex_rms(True)
    assert max(abs(r / scaled[0] - 1) for r in scaled) < 0.10
    unscaled = vertex_rms(False)
    assert unscaled[-1] / unscaled[0] > 5  # without the in-degree the sums grow


def test_source_convention_uses_each_layers_own_input_degree() -> None:
    graph = dense_preactivation_dag(5)
    degrees = init_in_degrees(graph, "source")
    assert degrees == {n: max(len(graph.node(n).preds), 1) for n in degrees}
    assert degrees["stem"] == 1 and degrees["e3_4"] == 3 and degrees["readout"] == 4


def test_target_convention_refuses_a_residual_stream() -> None:
    graph = chain(2)
    nodes = [
        Node("emb", a=-0.5),
        Node("h1", a=0.0, preds=("emb",)),
        Node("h2", a=0.0, preds=("emb", "h1")),
        Node("out", a=0.5, preds=("emb", "h1", "h2")),
    ]
    graph = OpGraph(nodes)
    with pytest.raises(GraphError, match=r"layer 'emb' feeds sums of different in-degree"):
        init_in_degrees(graph, "target")
    with pytest.raises(MaxPError, match="init convention"):
        init_in_degrees(graph, "both")  # type: ignore[arg-type]
    assert ChenScaling(init=None).factors(graph, "adam").init == dict.fromkeys(graph.names, 1.0)


def residual_stream(blocks: int) -> OpGraph:
    """emb, then per block an up (hidden) and a down (hidden, branch output) layer, readout."""
    nodes = [Node("emb", a=-0.5)]
    stream = ["emb"]
    for k in range(blocks):
        nodes.append(Node(f"up{k}", a=0.0, preds=tuple(stream)))
        nodes.append(Node(f"down{k}", a=0.0, preds=(f"up{k}",)))
        stream.append(f"down{k}")
    nodes.append(Node("head", a=0.5, preds=tuple(stream)))
    return OpGraph(nodes)


@pytest.mark.parametrize(("alpha", "optimizer", "power"), [(0.5, "adam", -0.5), (1.0, "adam", 0.0),
                                                          (0.5, "sgd", 0.0), (1.0, "sgd", 1.0)])  # fmt: skip
def test_branch_scaling_by_hand(alpha: float, optimizer: str, power: float) -> None:
    graph = residual_stream(8)
    assert residual_branch_outputs(graph) == tuple(f"down{k}" for k in range(8))
    f = BranchScaling(alpha=alpha, depth=8, base_depth=2).factors(graph, optimizer)
    assert f.multiplier["down2"] == pytest.approx(4**-alpha)
    assert f.multiplier["up2"] == f.multiplier["emb"] == f.multiplier["head"] == 1.0
    assert f.lr["up1"] == f.lr["down3"] == pytest.approx(4**power)
    assert f.lr["emb"] == f.lr["head"] == 1.0
    assert set(f.init.values()) == {1.0}
    init, lr = f.folded("down0", optimizer)
    assert init == pytest.approx(4**-alpha)
    assert lr == pytest.approx(4**power * 4 ** (-alpha * (1 if optimizer == "adam" else 2)))


def test_rules_refuse_bad_arguments() -> None:
    with pytest.raises(GraphError, match="no residual branch"):
        BranchScaling(alpha=1.0, depth=4).factors(chain(5), "adam")
    with pytest.raises(GraphError, match=r"its 4 residual branches .* do not split evenly into 3 blocks"):
        BranchScaling(alpha=1.0, depth=3).factors(residual_stream(4), "adam")
    with pytest.raises(MaxPError, match=r"alpha must lie in \[0.5, 1\]"):
        BranchScaling(alpha=2.0, depth=4)
    with pytest.raises(MaxPError, match="depth"):
        BranchScaling(alpha=1.0, depth=0)
    with pytest.raises(MaxPError, match="base"):
        ChenScaling(base=0)
    with pytest.raises(MaxPError, match="kernel_size"):
        ChenScaling(kernel_size=0)
    with pytest.raises(MaxPError, match="depth must be a ChenScaling or BranchScaling"):
        depth_factors("chen", chain(3), "adam")  # type: ignore[arg-type]
    ones = depth_factors(None, chain(3), "adam")
    assert ones.lr == ones.init == ones.multiplier == dict.fromkeys(chain(3).names, 1.0)


def test_nested_additions_are_one_sum() -> None:
    """A tracer records a + b + c as two binary additions: the in-degree is still 3."""
    nodes = [
        Node("stem", a=-0.5),
        *(Node(f"h{k}", a=0.0, preds=("stem",)) for k in range(3)),
        Node("add0", a=0.0, has_weight=False, preds=("h0", "h1")),
        Node("add1", a=0.0, has_weight=False, preds=("add0", "h2")),
        Node("out", a=0.5, preds=("add1",)),
    ]
    graph = OpGraph(nodes)
    assert init_in_degrees(graph, "target") == {"stem": 1, "h0": 3, "h1": 3, "h2": 3, "out": 1}
    assert init_in_degrees(graph, "source")["out"] == 3
    assert path_statistics(graph).count == 3 and path_statistics(graph).cube_sum == 3 * 27
    assert residual_branch_outputs(graph) == ("h0", "h1", "h2")


def _weightless() -> mc.OpGraph:
    return mc.OpGraph(
        [mc.Node("a", a=0.0, has_weight=False), mc.Node("b", a=0.0, has_weight=False, preds=("a",))]
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: ChenScaling(base=_weightless()).factors(mc.chain(4), "adam"),
            r"the base \(a base graph of 2 nodes\) has no weighted layer",
        ),
        (lambda: chen_lr_factor(_weightless(), 3), r"the graph has no weighted layer on any path"),
        (lambda: ChenScaling(base=3).factors(_weightless(), "adam"), r"the graph has no weighted layer"),
        (
            lambda: chen_lr_factor(mc.chain(4), 10**400),
            r"against a chain of about 10\^400 layers is inf: out of range",
        ),
        (lambda: chen_lr_factor(mc.chain(4), 10**5000), r"about 10\^5000 layers"),
        (lambda: ChenScaling().factors("graph", "adam"), r"ChenScaling.factors needs an OpGraph, got str"),
        (lambda: ChenScaling(base="graph"), r"ChenScaling base .* must be an integer >= 1, got str 'graph'"),
        (
            lambda: BranchScaling(alpha=0.5, depth=10**400),
            r"depth / base_depth = about 10\^400 / 1 is out of a float's range",
        ),
        (
            lambda: BranchScaling(alpha=1.0, depth=4, base_depth=10**400),
            r"depth / base_depth = 4 / about 10\^400 is out of a float's range",
        ),
        (lambda: BranchScaling(alpha=0.5, depth=10**5000), r"about 10\^5000 / 1 is out of a float's range"),
    ],
)
def test_a_depth_rule_that_would_scale_a_rate_by_zero_or_infinity_is_refused(call, message) -> None:
    with pytest.raises(mc.MaxPError, match=message):
        call()


def test_the_cli_refuses_a_weightless_base_graph(tmp_path, capsys) -> None:
    from maxp_core.cli import main

    target = {
        "nodes": [
            {"name": "x", "a": -0.5, "b": 0.5, "alpha": 1, "omega": 0.5, "u": 1},
            {"name": "y", "a": 0.5, "b": 0.5, "alpha": 1, "omega": 0.5, "u": 1, "preds": ["x"]},
        ]
    }
    base = {
        "nodes": [
            {"name": "p", "a": 0, "has_weight": False},
            {"name": "q", "a": 0, "has_weight": False, "preds": ["p"]},
        ]
    }
    (tmp_path / "g.json").write_text(json.dumps(target))
    (tmp_path / "b.json").write_text(json.dumps(base))
    assert main(["depth", str(tmp_path / "g.json"), "--base-graph", str(tmp_path / "b.json")]) == 2
    assert "has no weighted layer" in capsys.readouterr().err


def test_the_cli_refuses_a_base_chain_and_a_base_graph_together(tmp_path, capsys) -> None:
    """``--base 3`` is the default's value: it must still count as given, not vanish beside a graph."""
    from maxp_core.cli import main

    full = {"b": 0.5, "alpha": 1, "omega": 0.5, "u": 1}
    graph = {"nodes": [{"name": "x", "a": -0.5, **full}, {"name": "y", "a": 0.5, "preds": ["x"], **full}]}
    (tmp_path / "g.json").write_text(json.dumps(graph))
    with pytest.raises(SystemExit) as exit_:
        main(["depth", str(tmp_path / "g.json"), "--base", "3", "--base-graph", str(tmp_path / "g.json")])
    assert exit_.value.code == 2
    assert "not allowed with argument --base" in capsys.readouterr().err
    assert main(["depth", str(tmp_path / "g.json"), "--base", "0"]) == 2
    assert "must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["depth", str(tmp_path / "g.json")]) == 0
    assert "against a chain of 3 layers" in capsys.readouterr().out
