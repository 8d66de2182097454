"""``python -m maxp_core``: solve, table, demo, and one-line errors with exit status 2."""

import io
import json
import math
import subprocess
import sys

import pytest

from maxp_core import Node, OpGraph, StabilityLP, chain, named_parametrization
from maxp_core.cli import main
from tests.core.test_graph_rules import gated


def node(name, a, b, preds=(), alpha=1.0, omega=0.5, u=1.0, **extra):
    return {
        "name": name,
        "a": a,
        "b": b,
        "alpha": alpha,
        "omega": omega,
        "u": u,
        "preds": list(preds),
        **extra,
    }


MLP = {
    "optimizer": "adam",
    "nodes": [
        node("emb", -0.5, 0.5),
        node("h1", 0, 0.5, ["emb"]),
        node("h2", 0, 0.5, ["h1"]),
        node("out", 0.5, 0.5, ["h2"]),
    ],
}


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "maxp_core", *args], input=stdin, capture_output=True, text=True, check=False
    )


def test_solve_from_stdin_prints_the_solution() -> None:
    done = run("solve", "-", stdin=json.dumps(MLP))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["status"] == "optimal" and out["solver"] == "highs"
    assert out["c"] == pytest.approx({"emb": 0.5, "h1": 1.0, "h2": 1.0, "out": 0.5})
    assert set(out["r"]) == {"emb", "h1", "h2", "out"}
    assert out["objective"] == pytest.approx(3.0)


def test_solve_file_matches_the_library(tmp_path) -> None:
    spec = {
        "optimizer": "sgd",
        "solver": "clarabel",
        "feature_learning": True,
        "nodes": [
            node("emb", -0.5, 0.5, alpha=0.8),
            node("h", 0, 0.5, ["emb"], alpha=0.7, u=0.6),
            node("gate", 0.0, 0.0, ["emb", "h"], has_weight=False, merge="sum"),
            node("out", 0.5, 0.5, ["gate"], alpha=0.9),
        ],
    }
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(spec))
    buffer = io.StringIO()
    assert main(["solve", str(path)], out=buffer) == 0
    got = json.loads(buffer.getvalue())
    from maxp_core.cli import lp_from_json

    lp, _ = lp_from_json(spec)
    assert lp.optimizer == "sgd" and lp.feature_learning and lp.solver == "clarabel"
    expected = StabilityLP(lp.graph, "sgd", feature_learning=True).solve()
    assert got["c"] == pytest.approx(expected.c, abs=1e-6)
    assert got["solver"] == "clarabel"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", "must be a JSON object"),
        (json.dumps({"nodes": []}), "'nodes' must be a non-empty list"),
        (json.dumps({**MLP, "optimiser": "adam"}), "unknown keys \\['optimiser'\\]"),
        (json.dumps({**MLP, "optimizer": "lion"}), "unknown optimizer 'lion'"),
        (json.dumps({**MLP, "solver": "cbc"}), "solver must be one of"),
        (json.dumps({**MLP, "c_fixed": {"h1": "big"}}), "c_fixed\\['h1'\\] must be a number"),
        (
            json.dumps({"nodes": [{"name": "x", "a": 0}]}),
            "node 'x': missing \\['b', 'alpha', 'omega', 'u'\\]",
        ),
        (json.dumps({"nodes": [node("x", 0, 0), node("y", 0.5, 0.5, ["z"])]}), "predecessor 'z'.*dangling"),
        (json.dumps({"nodes": [node("x", 0, 0), node("x", 0.5, 0.5, ["x"])]}), "duplicate node name 'x'"),
        (json.dumps({"nodes": [node("x", 0, 0.5), node("y", 0.5, 0.5, ["x"])]}), "layer 'x' \\(embedding\\)"),
        (
            json.dumps({"nodes": [node("x", 0, 0), {**node("y", 0.5, 0.5, ["x"]), "merge": "max"}]}),
            "merge must be",
        ),
        (json.dumps({**MLP, "c_fixed": {"h1": -5}}), "no learning rates keep every node stable.*h1"),
    ],
)
def test_bad_input_exits_2_with_one_line(spec: str, message: str) -> None:
    done = run("solve", "-", stdin=spec)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert __import__("re").search(message, lines[0]), lines[0]


def test_missing_file_exits_2() -> None:
    done = run("solve", "/nonexistent/graph.json")
    assert (
        done.returncode == 2
        and "cannot read the graph description /nonexistent/graph.json: No such file" in done.stderr
    )


def test_table_prints_the_named_parametrization() -> None:
    buffer = io.StringIO()
    assert (
        main(
            [
                "table",
                "--parametrization",
                "mup",
                "--optimizer",
                "adam",
                "--alignment",
                "full",
                "--layers",
                "4",
            ],
            out=buffer,
        )
        == 0
    )
    lines = buffer.getvalue().splitlines()
    rows = [line.split() for line in lines[3:]]
    expected = named_parametrization("mup", 4, "adam", "full")
    assert [row[0] for row in rows] == [layer.name for layer in expected]
    assert [float(row[4]) for row in rows] == [layer.c for layer in expected]
    assert [float(row[2]) for row in rows] == [-0.5, 0.0, 0.0, 0.5]


def test_table_with_too_few_layers_exits_2() -> None:
    done = run("table", "--layers", "1")
    assert done.returncode == 2 and "at least 2 layers" in done.stderr


def test_demo_runs_and_solves_measured_alignments() -> None:
    buffer = io.StringIO()
    assert main(["demo"], out=buffer) == 0
    text = buffer.getvalue()
    measured = [row for row in map(str.split, text.splitlines()) if row[2:3] == ["measured"]]
    assert len(measured) == 8  # four parametrizations x two optimizers
    mup_adam = next(row for row in measured if row[:2] == ["mup", "adam"])
    from maxp_core.cli import DEMO_ALIGNMENTS

    expected = StabilityLP(chain(len(DEMO_ALIGNMENTS), alignment=DEMO_ALIGNMENTS), "adam").solve()
    assert float(mup_adam[3]) == pytest.approx(expected.objective, abs=5e-3)


def test_solve_reads_products_contractions_and_zero_initial_weights(tmp_path) -> None:
    """The gated block of tests/core/test_graph_rules.py, plus a contraction, as JSON: the
    same c as the library."""
    spec = {
        "nodes": [
            node("emb", -0.5, 0.5),
            node("gate", 0, 0.5, ["emb"]),
            node("up", 0, "inf", ["emb"]),
            {"name": "scaled", "a": 0.5, "has_weight": False, "preds": ["gate"]},
            {"name": "self", "a": 1.0, "has_weight": False, "preds": ["gate"], "contraction": True},
            {"name": "mul", "a": 0.0, "has_weight": False, "preds": ["scaled", "up"], "merge": "product",
             "zero_inputs": ["up"]},
            node("down", 0, 0.5, ["mul"], alpha=0.0),
            node("out", 0.5, 0.5, ["down", "self"]),
        ]
    }  # fmt: skip
    path = tmp_path / "gated.json"
    path.write_text(json.dumps(spec))
    buffer = io.StringIO()
    assert main(["solve", str(path)], out=buffer) == 0
    out = json.loads(buffer.getvalue())
    library = gated("product", ("up",), up_b=math.inf)
    nodes = [n for n in library.nodes if n.name != "out"]
    nodes += [
        Node("self", a=1.0, has_weight=False, preds=("gate",), contraction=True),
        Node("out", a=0.5, b=0.5, preds=("down", "self")),
    ]
    assert out["c"] == pytest.approx(StabilityLP(OpGraph(nodes)).solve().c, abs=1e-9)
    bad = {"nodes": [{**spec["nodes"][0]}, {**spec["nodes"][4], "contraction": "yes"}]}
    path.write_text(json.dumps(bad))
    done = run("solve", str(path))
    assert done.returncode == 2 and "contraction must be true or false" in done.stderr


def test_depth_prints_path_statistics_and_chen_factors(tmp_path) -> None:
    """A skip from h1 to the readout: paths of depth 3 and 4, factor sqrt(27 / (27 + 64))."""
    skip = {**MLP, "nodes": [*MLP["nodes"][:3], node("out", 0.5, 0.5, ["h1", "h2"])]}
    path = tmp_path / "skip.json"
    path.write_text(json.dumps(skip))
    buffer = io.StringIO()
    assert main(["depth", str(path), "--init", "source"], out=buffer) == 0
    text = buffer.getvalue()
    assert "2 input-to-output paths, depth 3..4" in text and "sum of depth^3 = 91" in text
    assert f"{math.sqrt(27 / 91):.6g}" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()[3:]}
    assert rows["out"][2:4] == ["2", "0.7071"]  # the readout sums two inputs
    assert rows["h2"][2:4] == ["1", "1"]
    base = tmp_path / "base.json"
    base.write_text(json.dumps(MLP))
    buffer = io.StringIO()
    assert main(["depth", str(path), "--base-graph", str(base), "--init", "none"], out=buffer) == 0
    assert run("depth", str(path)).stderr.startswith("error: layer 'h1' feeds sums of different in-degree")
    assert f"{math.sqrt(64 / 91):.6g}" in buffer.getvalue()
    done = run("depth", str(path), "--base", "0")
    assert done.returncode == 2 and "base" in done.stderr and "got 0" in done.stderr
