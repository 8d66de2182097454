"""Command line: ``python -m maxp_core {solve,graph,depth,table,alignments,plot,demo,sweep}``.

``graph FILE.json`` lists the graph's nodes with their solved c and r (``--dot``
prints graphviz DOT). ``depth FILE.json`` prints the graph's input-to-output path
statistics and Chen et al.'s learning-rate factor and initial scales
(:mod:`maxp_core.depth`) against a base chain (``--base``) or graph (``--base-graph``).
``solve FILE.json`` (``-`` reads stdin) solves the LP of a graph described in JSON and
prints the :class:`~maxp_core.lp.Solution` as JSON. ``table`` prints the (a, b, c) of a
named parametrization; with ``--alignments TABLE.json`` it prints the c each layer gets from
a measured alignment table (:mod:`maxp_core.tables`), on a chain of ``--layers`` layers or on
the graph of ``--graph FILE.json``, next to the preset's c. ``alignments LOG.jsonl`` builds
that table from a run's metrics log (:mod:`maxp_core.metrics`) and ``--out`` writes it;
``plot LOG.jsonl --out FILE.png`` draws the run's per-layer rates and alignments. ``demo``
prints named parametrizations next to the LP solved with measured-looking alignments.
``sweep run`` / ``sweep report`` sweep a training function's learning rates
(:mod:`maxp_core.sweep.cli`). Bad input exits with status 2 and one line on stderr.

Input of ``solve``::

    {"optimizer": "adam", "feature_learning": false, "solver": "highs",
     "c_fixed": {"name": value},
     "nodes": [{"name": "emb", "a": -0.5, "b": 0.5, "alpha": 1, "omega": 0.5, "u": 1,
                "has_weight": true, "preds": [], "merge": "min"}, ...]}

A node without ``preds`` is a source; a node no other node lists is a sink. ``b``,
``alpha``, ``omega`` and ``u`` are required for weight-bearing nodes only; ``"b": "inf"``
declares a zero initial weight. ``merge`` is ``"min"`` (inputs add), ``"product"``
(inputs multiply) or ``"sum"``; a multiplying node may list ``"zero_inputs"`` (inputs
that are zero at initialization), and an activation-only node ``"contraction": true``
(``x @ y^T`` over a width-sized axis, see :mod:`maxp_core.formulation`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from maxp_core import validate
from maxp_core.errors import MaxPError
from maxp_core.graph import MERGES, Node, OpGraph, chain
from maxp_core.jsonfiles import parse_json, read_text
from maxp_core.lp import SOLVERS, StabilityLP
from maxp_core.parametrizations import (
    AB_TABLE,
    PARAMETRIZATIONS,
    LayerExponents,
    chain_roles,
    named_parametrization,
)
from maxp_core.sweep import cli as sweep_cli
from maxp_core.tables import layer_kind
from maxp_core.text import format_table

EXIT_BAD_INPUT = 2

_TOP_KEYS = {"optimizer", "feature_learning", "solver", "c_fixed", "nodes"}
_NODE_KEYS = {
    "name", "a", "b", "alpha", "omega", "u", "has_weight", "preds", "merge", "role",
    "zero_inputs", "contraction",
}  # fmt: skip
_WEIGHT_NUMBERS = ("b", "alpha", "omega", "u")


class InputError(MaxPError):
    """The JSON given to ``solve`` does not describe a graph."""


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{where} must be a number, got {_short(value)}")
    try:
        return validate.real_number(value, where)
    except MaxPError as err:
        raise InputError(str(err)) from None


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a huge input never floods the message."""
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 256 else "an integer too large"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _node_from_json(entry: Any, k: int) -> Node:
    if not isinstance(entry, dict):
        raise InputError(f"nodes[{k}] must be an object, got {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(f"nodes[{k}] needs a non-empty string 'name', got {name!r}")
    where = f"node {name!r}"
    unknown = sorted(set(entry) - _NODE_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown keys {unknown}; expected some of {sorted(_NODE_KEYS)}")
    has_weight = entry.get("has_weight", True)
    if not isinstance(has_weight, bool):
        raise InputError(f"{where}: has_weight must be true or false, got {has_weight!r}")
    required = ("a", *_WEIGHT_NUMBERS) if has_weight else ("a",)
    missing = [key for key in required if key not in entry]
    if missing:
        raise InputError(f"{where}: missing {missing}")
    zero_init = has_weight and entry.get("b") in ("inf", math.inf)  # JSON Infinity reads as inf
    numbers = {
        key: _number(entry[key], f"{where}: {key}")
        for key in ("a", *_WEIGHT_NUMBERS)
        if key in entry and not (key == "b" and zero_init)
    }
    if zero_init:
        numbers["b"] = math.inf
    preds = _names(entry.get("preds", []), f"{where}: preds")
    merge = entry.get("merge", "min")
    if merge not in MERGES:
        raise InputError(f"{where}: merge must be one of {list(MERGES)}, got {merge!r}")
    contraction = entry.get("contraction", False)
    if not isinstance(contraction, bool):
        raise InputError(f"{where}: contraction must be true or false, got {_short(contraction)}")
    return Node(
        name=name,
        has_weight=has_weight,
        preds=preds,
        merge=merge,
        role=entry.get("role"),
        zero_inputs=_names(entry.get("zero_inputs", []), f"{where}: zero_inputs"),
        contraction=contraction,
        **numbers,
    )


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise InputError(f"{where} must be a list of node names, got {_short(value)}")
    return tuple(value)


def lp_from_json(spec: Any) -> tuple[StabilityLP, dict[str, float]]:
    """Build the LP and the pinned values described by a ``solve`` input document.

    Raises:
      MaxPError: the document is malformed or the graph is invalid; the message names
        the key, node or number at fault.
    """
    if not isinstance(spec, dict):
        raise InputError(f"the input must be a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _TOP_KEYS)
    if unknown:
        raise InputError(f"unknown keys {unknown}; expected some of {sorted(_TOP_KEYS)}")
    nodes = spec.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise InputError("'nodes' must be a non-empty list of node objects")
    graph = OpGraph([_node_from_json(entry, k) for k, entry in enumerate(nodes)])
    feature_learning = spec.get("feature_learning", False)
    if not isinstance(feature_learning, bool):
        raise InputError(f"feature_learning must be true or false, got {feature_learning!r}")
    solver = spec.get("solver", "highs")
    if solver not in SOLVERS:
        raise InputError(f"solver must be one of {list(SOLVERS)}, got {solver!r}")
    c_fixed = spec.get("c_fixed", {})
    if not isinstance(c_fixed, dict):
        raise InputError(f"c_fixed must be an object {{name: value}}, got {c_fixed!r}")
    pins = {str(k): _number(v, f"c_fixed[{k!r}]") for k, v in c_fixed.items()}
    optimizer = spec.get("optimizer", "adam")
    if not isinstance(optimizer, str):
        raise InputError(f"optimizer must be 'adam' or 'sgd', got {_short(optimizer)}")
    lp = StabilityLP(
        graph,
        optimizer=optimizer,
        feature_learning=feature_learning,
        c_fixed=pins,
        solver=solver,
    )
    return lp, pins


def solve_json(spec: Any) -> dict[str, Any]:
    """Solve a ``solve`` input document; return the JSON-ready answer."""
    lp, _ = lp_from_json(spec)
    return lp.solve().to_json()


def _cmd_solve(args: argparse.Namespace, out: TextIO) -> int:
    json.dump(solve_json(_read_spec(args.file)), out, indent=2)
    out.write("\n")
    return 0


def _read_spec(path: str) -> Any:
    try:
        content = sys.stdin.read() if path == "-" else read_text(path, "graph description")
    except OSError as err:  # stdin itself
        raise InputError(f"cannot read {path}: {err.strerror}") from None
    except MaxPError as err:
        raise InputError(str(err)) from None
    return parse_spec(content, "stdin" if path == "-" else path)


def parse_spec(content: str, source: str = "the input") -> Any:
    """Parse a ``solve`` document; a leading byte-order mark is allowed.

    Raises:
      InputError: not JSON, nested too deeply, or holding an integer too large to read.
    """
    try:
        return parse_json(content.removeprefix("\ufeff"), source)
    except MaxPError as err:
        raise InputError(str(err)) from None


def _cmd_graph(args: argparse.Namespace, out: TextIO) -> int:
    from maxp_core.render import describe_graph, to_dot

    lp, _ = lp_from_json(_read_spec(args.file))
    solution = lp.solve()
    out.write(to_dot(lp.graph, solution) if args.dot else describe_graph(lp.graph, solution) + "\n")
    return 0


def _cmd_depth(args: argparse.Namespace, out: TextIO) -> int:
    from maxp_core.depth import ChenScaling, path_statistics

    lp, _ = lp_from_json(_read_spec(args.file))
    graph = lp.graph
    base: Any = 3 if args.base is None else args.base
    if args.base_graph:
        base = lp_from_json(_read_spec(args.base_graph))[0].graph
    rule = ChenScaling(
        base=base,
        offset=args.offset,
        kernel_size=args.kernel_size,
        base_kernel_size=args.base_kernel_size,
        init=None if args.init == "none" else args.init,
    )
    stats = path_statistics(graph, args.offset)
    factors = rule.factors(graph, "adam")
    base_text = f"a chain of {base} layers" if isinstance(base, int) else args.base_graph
    out.write(
        f"{stats.count} input-to-output paths, depth {stats.shortest}..{stats.longest} "
        f"(mean {stats.mean_depth:.4g}), sum of depth^3 = {stats.cube_sum}\n"
        f"learning-rate factor against {base_text}: {rule.lr_factor(graph):.6g}\n"
    )
    rows = [
        (name, graph.role(name).value, round(factors.init[name] ** -2), factors.init[name], factors.lr[name])
        for name in factors.lr
    ]
    header = ("layer", "role", f"in-degree ({args.init})", "init std x", "lr x")
    out.write(format_table(rows, header) + "\n")
    return 0


def _cmd_table(args: argparse.Namespace, out: TextIO) -> int:
    if args.alignments:
        return _table_from_alignments(args, out)
    if args.graph:
        raise InputError("table --graph solves a graph with an alignment table: give --alignments too")
    layers = named_parametrization(args.parametrization, args.layers, args.optimizer, args.alignment)
    rows: list[tuple[Any, ...]] = [
        (layer.name, layer.role.value, layer.a, layer.b, layer.c) for layer in layers
    ]
    title = f"{args.parametrization} / {args.optimizer} / {args.alignment} alignment / {args.layers} layers"
    header: tuple[str, ...] = ("layer", "role", "a", "b", "c")
    if args.width is not None:
        rows = [(*row, *_rates_at_width(layer, args)) for row, layer in zip(rows, layers, strict=True)]
        header = (*header, "multiplier", "init scale" if args.base_width else "init std", "lr")
        base = f", base width {args.base_width:g}" if args.base_width else ""
        title += f" / width {args.width:g}{base} / lr {args.lr:g}"
    out.write(title + "\n" + format_table(rows, header) + "\n")
    return 0


def _rates_at_width(layer: LayerExponents, args: argparse.Namespace) -> tuple[float, float, float]:
    """A layer's multiplier, init (std, or the scale of a standard init with a base width) and lr."""
    init = layer.init_scale(args.width, args.base_width) if args.base_width else float(args.width) ** -layer.b
    return (
        layer.multiplier(args.width, args.base_width),
        init,
        layer.learning_rate(args.lr, args.width, args.base_width),
    )


def _table_from_alignments(args: argparse.Namespace, out: TextIO) -> int:
    """The c-table an alignment table implies, next to the preset's c."""
    from maxp_core.tables import AlignmentTable, resolve_overrides

    table = AlignmentTable.read(args.alignments)
    if args.graph:
        graph = lp_from_json(_read_spec(args.graph))[0].graph
    else:
        roles = chain_roles(args.layers)
        ab = [AB_TABLE[args.parametrization][role] for role in roles]
        names = [f"{role.value}{k}" for k, role in enumerate(roles)]
        graph = chain(
            args.layers, a=[x[0] for x in ab], b=[x[1] for x in ab], alignment=args.alignment, names=names
        )
    weighted = [n.name for n in graph.nodes if n.has_weight]
    fixed = resolve_overrides([(name, graph.role(name).value) for name in weighted], table)
    numbers = {weighted[k]: triple for k, triple in fixed.items()}
    measured = graph.with_numbers(
        alpha={n: t[0] for n, t in numbers.items()},
        omega={n: t[1] for n, t in numbers.items()},
        u={n: t[2] for n, t in numbers.items()},
    )
    preset_c = StabilityLP(graph, args.optimizer).solve().c
    table_lp = StabilityLP(measured, args.optimizer)
    if table_lp.tie_rule == "preset":  # anchored at the preset's c, as the adapters train with
        table_lp.reference_c = preset_c
    table_c = table_lp.solve().c
    rows = []
    for name in weighted:
        node = measured.node(name)
        kind = layer_kind(name, graph.role(name).value)
        rows.append((name, kind, node.alpha, node.omega, node.u, preset_c[name], table_c[name]))
    header = ("layer", "kind", "alpha", "omega", "u", f"c ({args.alignment})", "c (table)")
    out.write(f"{args.alignments} ({args.optimizer}):\n" + format_table(rows, header) + "\n")
    return 0


def _cmd_alignments(args: argparse.Namespace, out: TextIO) -> int:
    from maxp_core.metrics import read_metrics
    from maxp_core.tables import measure_table

    table = measure_table(read_metrics(args.file), args.fraction, {"log": args.file})
    rows = [(kind, *triple, table.layers[kind]) for kind, triple in table.alignments.items()]
    out.write(format_table(rows, ("kind", "alpha", "omega", "u", "layers")) + "\n")
    if args.out:
        out.write(f"written to {table.write(args.out)}\n")
    return 0


def _cmd_plot(args: argparse.Namespace, out: TextIO) -> int:
    from maxp_core.metrics import plot_metrics, read_metrics

    out.write(f"written to {plot_metrics(read_metrics(args.file), args.out, args.file)}\n")
    return 0


#: Alignments of the kind measured in training: the embedding moves freely, hidden
#: layers settle between random (0.5) and full (1) alignment, the readout lags.
DEMO_ALIGNMENTS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.5, 1.0),
    (0.78, 0.5, 0.71),
    (0.74, 0.5, 0.66),
    (0.69, 0.5, 0.62),
    (0.61, 0.5, 0.55),
)


def _cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    num_layers = len(DEMO_ALIGNMENTS)
    roles = chain_roles(num_layers)
    header = ("parametrization", "optimizer", "alignment", "sum(c)", *(f"c{k}" for k in range(num_layers)))
    rows: list[tuple[Any, ...]] = []
    for param in PARAMETRIZATIONS:
        for optimizer in ("adam", "sgd"):
            for preset in ("full", "no"):
                layers = named_parametrization(param, num_layers, optimizer, preset)
                cs = [layer.c for layer in layers]
                rows.append((param, optimizer, preset, sum(cs), *cs))
            ab = [AB_TABLE[param][role] for role in roles]
            graph = chain(num_layers, a=[x[0] for x in ab], b=[x[1] for x in ab], alignment=DEMO_ALIGNMENTS)
            sol = StabilityLP(graph, optimizer).solve()
            rows.append((param, optimizer, "measured", sol.objective, *sol.c.values()))
    out.write(
        f"Learning-rate exponents c (lr = base * width^-c) of a {num_layers}-layer network\n"
        "(embedding, hidden..., readout); 'measured' uses the per-layer (alpha, omega, u)\n"
        f"{[tuple(t) for t in DEMO_ALIGNMENTS]}\n\n"
    )
    out.write(format_table(rows, header) + "\n")
    by_key = {row[:3]: row for row in rows}
    full, measured = by_key[("mup", "adam", "full")], by_key[("mup", "adam", "measured")]
    out.write(
        f"\nmuP + Adam: sum(c) falls from {full[3]:.3g} (full alignment) to {measured[3]:.3g} with the "
        "measured alignments; the first hidden layer's learning rate gains a factor "
        f"width^{full[5] - measured[5]:.3g}.\n"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m maxp_core", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    solve = sub.add_parser("solve", help="solve the LP of a graph given as JSON")
    solve.add_argument("file", help="JSON file, or - for stdin")
    graph = sub.add_parser("graph", help="list a JSON graph's nodes with a, b, c and r (or print DOT)")
    graph.add_argument("file", help="JSON file, or - for stdin")
    graph.add_argument("--dot", action="store_true", help="print graphviz DOT instead of a table")
    depth = sub.add_parser("depth", help="path statistics and Chen et al.'s depth/topology factors")
    depth.add_argument("file", help="JSON file, or - for stdin")
    base = depth.add_mutually_exclusive_group()
    # No default here: argparse would then take an explicit "--base 3" for an absent option and
    # let --base-graph pass beside it; the chain of 3 is filled in when neither is given.
    base.add_argument("--base", type=int, help="base: a chain of this many layers (default 3)")
    base.add_argument("--base-graph", help="base: a graph given as JSON")
    depth.add_argument("--offset", type=int, default=0, help="layers every path passes outside the graph")
    depth.add_argument("--kernel-size", type=int, default=1)
    depth.add_argument("--base-kernel-size", type=int, default=1)
    depth.add_argument("--init", choices=("target", "source", "none"), default="target")
    table = sub.add_parser("table", help="print the a/b/c table of a named parametrization")
    table.add_argument("--parametrization", "-p", choices=PARAMETRIZATIONS, default="mup")
    table.add_argument("--optimizer", "-o", choices=("adam", "sgd"), default="adam")
    table.add_argument("--alignment", "-a", choices=("full", "no"), default="full")
    table.add_argument("--layers", "-l", type=int, default=4)
    table.add_argument("--alignments", help="an alignment table (JSON): print the c it implies")
    table.add_argument("--graph", help="with --alignments: the graph (JSON) to solve instead of a chain")
    table.add_argument("--width", type=float, help="print each layer's multiplier, init and lr at this width")
    table.add_argument(
        "--base-width", type=float, help="with --width: the width at which --lr was tuned (default: 1)"
    )
    table.add_argument("--lr", type=float, default=1.0, help="with --width: the lr prefactor (default 1)")
    measured = sub.add_parser("alignments", help="the alignment table of a run's metrics log (JSONL)")
    measured.add_argument("file", help="a metrics log written by MetricsLog")
    measured.add_argument("--fraction", type=float, default=0.5, help="share of the run to average over")
    measured.add_argument("--out", help="write the table (JSON) here")
    plot = sub.add_parser("plot", help="draw a metrics log's per-layer rates and alignments (PNG)")
    plot.add_argument("file", help="a metrics log written by MetricsLog")
    plot.add_argument("--out", required=True, help="the PNG to write")
    sub.add_parser("demo", help="named parametrizations and the LP with measured-looking alignments")
    sweep_cli.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    out = sys.stdout if out is None else out
    commands = {
        "solve": _cmd_solve,
        "graph": _cmd_graph,
        "depth": _cmd_depth,
        "table": _cmd_table,
        "alignments": _cmd_alignments,
        "plot": _cmd_plot,
        "demo": _cmd_demo,
        "sweep": sweep_cli.run_command,
    }
    try:
        return commands[args.command](args, out)
    except MaxPError as err:
        _report(str(err))
    except RecursionError:
        _report("the input is nested too deeply to be a graph description")
    except Exception as err:  # every input gets one line, never a traceback
        _report(f"unexpected {type(err).__name__}: {err}")
    return EXIT_BAD_INPUT


def _report(message: str) -> None:
    print(f"error: {' '.join(message.split())}"[:2000], file=sys.stderr)


__all__ = ["DEMO_ALIGNMENTS", "lp_from_json", "main", "solve_json"]
