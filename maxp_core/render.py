"""Show an op graph: a text listing and a graphviz DOT picture, with a, b, c and r per node.

Examples:
  >>> from maxp_core.graph import chain
  >>> from maxp_core.lp import StabilityLP
  >>> g = chain(3)
  >>> print(describe_graph(g, StabilityLP(g).solve()))
    node       role  inputs  merge     a    b    c  r
  ------  ---------  ------  -----  ----  ---  ---  -
  layer0  embedding       -      -  -0.5  0.5  0.5  0
  layer1     hidden  layer0    min     0  0.5    1  0
  layer2    readout  layer1    min   0.5  0.5  0.5  0
"""

from __future__ import annotations

from collections.abc import Callable

from maxp_core.graph import OpGraph
from maxp_core.lp import Solution
from maxp_core.roles import role_from_position


def _kind(graph: OpGraph, i: int) -> str:
    if not graph.nodes[i].has_weight:
        return "activation"
    return role_from_position(is_source=graph.is_source(i), is_sink=graph.is_sink(i)).value


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value + 0.0:.4g}"


def describe_graph(graph: OpGraph, solution: Solution | None = None) -> str:
    """One row per node: role (or ``activation``), inputs, merge, a, b, and c, r if solved."""
    from maxp_core.text import format_table

    rows = []
    for i, node in enumerate(graph.nodes):
        c = solution.c.get(node.name) if solution is not None else None
        r = solution.r.get(node.name) if solution is not None else None
        rows.append(
            (
                node.name,
                _kind(graph, i),
                ", ".join(node.preds) or "-",
                node.merge if len(node.preds) > 0 else "-",
                _number(node.a),
                _number(node.b) if node.has_weight else "-",
                _number(c),
                _number(r),
            )
        )
    return format_table(rows, ("node", "role", "inputs", "merge", "a", "b", "c", "r"))


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _quote(*lines: str) -> str:
    """A DOT string; several lines are joined with DOT's own ``\\n``."""
    return '"' + "\\n".join(_escape(line) for line in lines) + '"'


def to_dot(graph: OpGraph, solution: Solution | None = None) -> str:
    """A graphviz DOT digraph: weighted nodes as boxes, activation-only ops as ellipses,
    ``sum`` (multiplied) inputs drawn dashed. Render with ``dot -Tpng``."""
    lines = ["digraph maxp {", "  rankdir=LR;", "  node [fontname=Helvetica, fontsize=10];"]
    for i, node in enumerate(graph.nodes):
        label = [node.name, _kind(graph, i), f"a={_number(node.a)}"]
        if node.has_weight:
            label.append(f"b={_number(node.b)}")
        if solution is not None:
            if node.name in solution.c:
                label.append(f"c={_number(solution.c[node.name])}")
            label.append(f"r={_number(solution.r.get(node.name))}")
        shape = "box" if node.has_weight else "ellipse"
        lines.append(f"  {_quote(node.name)} [shape={shape}, label={_quote(*label)}];")
    for node in graph.nodes:
        style = ", style=dashed" if node.multiplies else ""
        for pred in node.preds:
            lines.append(f"  {_quote(pred)} -> {_quote(node.name)} [arrowsize=0.6{style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _is_merge(name: str) -> bool:
    # GraphRecorder names merges "add<k>" / "mul<k>" (with "_" appended on a clash).
    stem = name.rstrip("_")
    return stem[:3] in ("add", "mul") and stem[3:].isdigit()


def canonical_form(
    graph: OpGraph, rename: Callable[[str], str] = lambda name: name
) -> dict[str, tuple[tuple[str, ...], str, bool, float, float | None, bool, tuple[str, ...]]]:
    """A traced graph keyed by framework-free names, to compare traces of one network.

    Layers are keyed by ``rename(name)``; merge nodes (whose numbering depends on the
    order a framework happens to trace in) by what they merge, e.g. ``min[blocks.0.o,add1]``
    becomes ``min[...]`` of the canonical names of its inputs. Each value is
    ``(sorted inputs, merge, has_weight, a, b or None, contraction, sorted zero inputs)``.

    Examples:
      >>> from maxp_core.tracing import GraphRecorder
      >>> rec = GraphRecorder()
      >>> x = rec.layer("emb", [], a=-0.5, b=0.5)
      >>> h = rec.layer("fc", [x], a=0.0)
      >>> _ = rec.layer("out", [rec.combine("add", [x, h])], a=0.5)
      >>> canonical_form(rec.graph())["min[emb,fc]"]
      (('emb', 'fc'), 'min', False, 0.0, None, False, ())
    """
    names: dict[str, str] = {}
    for node in graph.nodes:  # topological order: inputs are named first
        if not node.has_weight and _is_merge(node.name):
            names[node.name] = f"{node.merge}[{','.join(sorted(names[p] for p in node.preds))}]"
        else:
            names[node.name] = rename(node.name)
    return {
        names[n.name]: (
            tuple(sorted(names[p] for p in n.preds)),
            n.merge,
            n.has_weight,
            n.a,
            n.b if n.has_weight else None,
            n.contraction,
            tuple(sorted(names[p] for p in n.zero_inputs)),
        )
        for n in graph.nodes
    }
