"""Graph listing and DOT output, against the graph and solution they show."""

import io
import json
import re

from maxp_core import Node, OpGraph, StabilityLP
from maxp_core.cli import main
from maxp_core.render import describe_graph, to_dot


def attention_graph() -> OpGraph:
    return OpGraph(
        [
            Node("e", a=-0.5, b=0.5),
            Node("q", a=0.0, b=0.5, preds=("e",)),
            Node("k", a=0.0, b=0.5, preds=("e",)),
            Node("scores", a=1.0, has_weight=False, preds=("q", "k"), merge="sum"),
            Node("out", a=0.5, b=0.5, preds=("scores", "e")),
        ]
    )


def test_listing_has_one_row_per_node_with_its_numbers() -> None:
    graph = attention_graph()
    sol = StabilityLP(graph).solve()
    rows = describe_graph(graph, sol).splitlines()[2:]
    assert len(rows) == len(graph)
    by_name = {row.split()[0]: row.split() for row in rows}
    assert by_name["scores"][1] == "activation"
    assert by_name["scores"][-2] == "-"  # no c without a weight
    assert float(by_name["scores"][-1]) == sol.r["scores"]
    assert float(by_name["q"][-2]) == sol.c["q"]


def test_dot_has_every_node_and_edge() -> None:
    graph = attention_graph()
    sol = StabilityLP(graph).solve()
    dot = to_dot(graph, sol)
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', dot)
    assert sorted(edges) == sorted((p, n.name) for n in graph.nodes for p in n.preds)
    assert dot.count("shape=box") == 4 and dot.count("shape=ellipse") == 1
    assert dot.count("style=dashed") == 2  # the multiplied inputs of the scores
    assert f"c={sol.c['q']:.4g}" in dot


def test_graph_command(tmp_path) -> None:
    spec = {
        "nodes": [
            {
                "name": n.name,
                "a": n.a,
                "b": n.b,
                "alpha": 1,
                "omega": 0.5,
                "u": 1,
                "has_weight": n.has_weight,
                "preds": list(n.preds),
                "merge": n.merge,
            }
            for n in attention_graph().nodes
        ]
    }
    path = tmp_path / "g.json"
    path.write_text(json.dumps(spec))
    text, dot = io.StringIO(), io.StringIO()
    assert main(["graph", str(path)], out=text) == 0
    assert main(["graph", str(path), "--dot"], out=dot) == 0
    assert text.getvalue() == describe_graph(attention_graph(), StabilityLP(attention_graph()).solve()) + "\n"
    assert dot.getvalue().startswith("digraph maxp {")
