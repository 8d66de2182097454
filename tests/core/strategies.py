"""Hypothesis strategies for random op graphs that are stable at initialization."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import strategies as st

from maxp_core import Node, OpGraph

#: Alignments on a 0.01 grid in [0, 1]: enough variety, and readable when a case fails.
alignments = st.integers(0, 100).map(lambda k: k / 100)


@dataclass(frozen=True)
class Instance:
    """One LP to solve: graph, optimizer, feature learning, pinned c."""

    graph: OpGraph
    optimizer: str
    feature_learning: bool
    c_fixed: dict[str, float]


@st.composite
def _numbers(draw: st.DrawFn, role: str) -> dict[str, float]:
    a = draw(st.sampled_from([-0.5, 0.0, 0.5, 1.0]))
    if role == "embedding":
        b = -a
    elif role == "hidden":
        b = 0.5 - a
    else:
        b = 0.5 - a + draw(st.sampled_from([0.0, 0.5]))
    return {"a": a, "b": b, "alpha": draw(alignments), "omega": draw(alignments), "u": draw(alignments)}


@st.composite
def chains(draw: st.DrawFn, min_layers: int = 2, max_layers: int = 8) -> OpGraph:
    """A chain with random stable (a, b) and random alignments."""
    num = draw(st.integers(min_layers, max_layers))
    nodes = []
    for i in range(num):
        role = "embedding" if i == 0 else "readout" if i == num - 1 else "hidden"
        preds = (f"l{i - 1}",) if i else ()
        nodes.append(Node(name=f"l{i}", preds=preds, **draw(_numbers(role))))
    return OpGraph(nodes)


@st.composite
def dags(draw: st.DrawFn, min_nodes: int = 3, max_nodes: int = 9) -> OpGraph:
    """A DAG: one or two weighted sources, random edges to earlier nodes, some
    activation-only interior nodes (some of them contractions), ``min``, ``product`` and
    ``sum`` merges, factors zero at initialization, zero-initialized weights; the last
    node is a weighted sink."""
    num = draw(st.integers(min_nodes, max_nodes))
    two_sources = draw(st.booleans())
    preds: list[tuple[int, ...]] = []
    for i in range(num):
        if i == 0 or (i == 1 and two_sources):
            preds.append(())
        elif i == 1:
            preds.append((0,))
        else:
            chosen = draw(st.lists(st.integers(0, i - 1), min_size=1, max_size=3, unique=True))
            if i == 2 and two_sources:
                chosen = sorted({0, 1, *chosen})
            preds.append(tuple(chosen))
    consumed = {p for ps in preds for p in ps}
    nodes = []
    for i in range(num):
        source, sink = not preds[i], i not in consumed
        weighted = source or i == num - 1 or not draw(st.integers(0, 3).map(lambda k: k == 0))
        merge = draw(st.sampled_from(["min", "product", "sum"])) if len(preds[i]) > 1 else "min"
        names = tuple(f"n{p}" for p in preds[i])
        contraction = not weighted and len(names) in (1, 2) and draw(st.booleans())
        multiplies = contraction or (len(names) > 1 and merge != "min")
        zero: tuple[str, ...] = ()
        if multiplies:
            zero = tuple(p for p in names if draw(st.integers(0, 2).map(lambda k: k == 0)))
        if weighted:
            role = "embedding" if source else "readout" if sink else "hidden"
            numbers = draw(_numbers(role))
            if i != num - 1 and draw(st.integers(0, 4).map(lambda k: k == 0)):
                numbers["b"] = math.inf  # a zero initial weight (SGD needs one readout that is not)
            nodes.append(Node(name=f"n{i}", preds=names, merge=merge, zero_inputs=zero, **numbers))
        else:
            a = draw(st.sampled_from([0.0, 0.5, 1.0]))
            aligned = {k: draw(alignments) for k in ("alpha", "omega", "u")}
            nodes.append(
                Node(
                    name=f"n{i}",
                    a=a,
                    has_weight=False,
                    preds=names,
                    merge=merge,
                    zero_inputs=zero,
                    contraction=contraction,
                    **aligned,
                )
            )
    return OpGraph(nodes)


@st.composite
def instances(draw: st.DrawFn, graphs: st.SearchStrategy[OpGraph]) -> Instance:
    """A graph with an optimizer, sometimes feature learning, sometimes a pinned c."""
    graph = draw(graphs)
    optimizer = draw(st.sampled_from(["adam", "sgd"]))
    feature_learning = draw(st.integers(0, 3).map(lambda k: k == 0))
    c_fixed: dict[str, float] = {}
    if draw(st.integers(0, 3).map(lambda k: k == 0)):
        name = graph.nodes[draw(st.sampled_from(graph.weighted))].name
        c_fixed[name] = draw(st.integers(-4, 8).map(lambda k: k / 4))
    return Instance(graph, optimizer, feature_learning, c_fixed)
