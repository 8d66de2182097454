"""maxp_core and its command line under bad input: a clear error naming the culprit, never a
silently wrong learning rate or a raw traceback."""

import io
import json
import math

import numpy as np
import pytest

import maxp_core as mc
from maxp_core import MaxPError, Node, OpGraph, StabilityLP, chain
from maxp_core.cli import main

# --- the command line: exit 2 and one line on stderr for every bad input ----------------------


def node(name, a=0.0, b=0.5, alpha=1.0, omega=0.5, u=1.0, **extra):
    return {"name": name, "a": a, "b": b, "alpha": alpha, "omega": omega, "u": u, **extra}


def graph(*nodes, **top):
    if not nodes:
        nodes = (node("emb", a=-0.5), node("h", preds=["emb"]), node("out", a=0.5, preds=["h"]))
    return {"nodes": list(nodes), **top}


def with_node(index, **changes):
    nodes = [node("emb", a=-0.5), node("h", preds=["emb"]), node("out", a=0.5, preds=["h"])]
    nodes[index] = {**nodes[index], **changes}
    return graph(*nodes)


BAD_DOCUMENTS = [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (
        json.dumps(with_node(1, alpha=0)).replace('"alpha": 0', '"alpha": ' + "9" * 400),
        "alpha is an integer of 400 digits, too large",
    ),
    (json.dumps(with_node(1, a=0)).replace('"a": 0', '"a": ' + "9" * 5000), "cannot be read"),
    ("", "not valid JSON"),
    ("{", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ("3", "must be a JSON object"),
    (json.dumps({"nodes": {}}), "'nodes' must be a non-empty list"),
    (json.dumps({"nodes": []}), "'nodes' must be a non-empty list"),
    (json.dumps(graph(extra=1)), r"unknown keys \['extra'\]"),
    (json.dumps(graph("emb")), r"nodes\[0\] must be an object"),
    (json.dumps(with_node(1, alpha=1.5)), "node 'h': alpha = 1.5 is out of range"),
    (json.dumps(with_node(1, alpha=-0.1)), "node 'h': alpha = -0.1 is out of range"),
    (json.dumps(with_node(1, omega=2)), "node 'h': omega = 2"),
    (json.dumps(with_node(1, u=-1)), "node 'h': u = -1"),
    (json.dumps(with_node(1, a=1e20)), "node 'h': a = 1e\\+20 is out of range"),
    (json.dumps(with_node(1, b=-1e300)), "node 'h': b = -1e\\+300 is out of range"),
    (json.dumps(with_node(1, alpha=float("nan"))), "node 'h': alpha = nan is not a finite number"),
    (json.dumps(with_node(1, a=float("inf"))), "node 'h': a = inf is not a finite number"),
    (json.dumps(with_node(1, a="0")), "node 'h': a must be a number, got '0'"),
    (json.dumps(with_node(1, a=True)), "node 'h': a must be a number, got True"),
    (json.dumps(with_node(1, a=None)), "node 'h': a must be a number, got None"),
    (json.dumps(with_node(1, a=[0])), r"node 'h': a must be a number, got \[0\]"),
    (json.dumps(with_node(1, preds="emb")), "node 'h': preds must be a list of node names"),
    (json.dumps(with_node(1, preds=[1])), "node 'h': preds must be a list of node names"),
    (json.dumps(with_node(1, preds=["nope"])), "predecessor 'nope'"),
    (json.dumps(with_node(1, merge=["min"])), "node 'h': merge must be one of"),
    (json.dumps(with_node(1, has_weight="yes")), "node 'h': has_weight must be true or false"),
    (json.dumps(with_node(1, role="boss")), "unknown role 'boss'"),
    (json.dumps(with_node(1, name=5)), "needs a non-empty string 'name'"),
    (json.dumps(with_node(1, bogus=1)), r"node 'h': unknown keys \['bogus'\]"),
    (json.dumps(graph(optimizer=3)), "optimizer must be 'adam' or 'sgd', got 3"),
    (json.dumps(graph(optimizer="adagrad")), "unknown optimizer 'adagrad'"),
    (json.dumps(graph(feature_learning="no")), "feature_learning must be true or false"),
    (json.dumps(graph(solver=5)), "solver must be one of"),
    (json.dumps(graph(c_fixed=[1])), "c_fixed must be an object"),
    (json.dumps(graph(c_fixed={"h": None})), r"c_fixed\['h'\] must be a number, got None"),
    (json.dumps(graph(c_fixed={"h": 1e30})), r"node 'h': pinned c = 1e\+30 is out of range"),
    (json.dumps(graph(c_fixed={"nope": 0.5})), "no node named 'nope'"),
    (json.dumps(with_node(1, a=0.5)), r"layer 'h' \(hidden\): a \+ b"),
]


@pytest.mark.parametrize(("document", "message"), BAD_DOCUMENTS, ids=[m for _, m in BAD_DOCUMENTS])
def test_cli_bad_input_is_one_line_and_exit_2(document, message, tmp_path, capsys) -> None:
    path = tmp_path / "graph.json"
    path.write_text(document, encoding="utf-8")
    out = io.StringIO()
    assert main(["solve", str(path)], out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err[:300]
    assert "Traceback" not in err
    assert __import__("re").search(message, err), err[:300]
    assert out.getvalue() == ""


def test_cli_reads_a_byte_order_mark_and_rejects_non_utf8(tmp_path, capsys) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(graph()).encode())
    out = io.StringIO()
    assert main(["solve", str(path)], out) == 0
    assert json.loads(out.getvalue())["c"] == StabilityLP(chain(3, names=["emb", "h", "out"])).solve().c
    path.write_bytes(b'{"nodes": "\xff"}')
    assert main(["solve", str(path)], io.StringIO()) == 2
    assert "not UTF-8" in capsys.readouterr().err


# --- the core API ------------------------------------------------------------------------------

LP = StabilityLP(chain(3))

BAD_CALLS = [
    (lambda: mc.named_parametrization("mup", 4.5), "at least 2 layers.*4.5"),
    (lambda: mc.named_parametrization("mup", "4"), "at least 2 layers.*'4'"),
    (lambda: mc.named_parametrization("mup", True), "at least 2 layers.*True"),
    (lambda: mc.named_parametrization("mup", 1), "at least 2 layers"),
    (lambda: mc.named_parametrization("mu", 4), "unknown parametrization 'mu'"),
    (lambda: mc.named_parametrization(["mup"], 4), "unknown parametrization"),
    (lambda: mc.named_parametrization("mup", 4, optimizer="adagrad"), "unknown optimizer 'adagrad'"),
    (lambda: mc.named_parametrization("mup", 4, optimizer=None), "unknown optimizer None"),
    (lambda: mc.named_parametrization("mup", 4, alignment="partial"), "unknown alignment preset 'partial'"),
    (lambda: mc.named_parametrization("mup", 4, alignment=["full"]), "unknown alignment preset"),
    (lambda: mc.default_ab("mup", "middle"), "unknown role 'middle'"),
    (lambda: chain(2.5), "at least 2 layers.*2.5"),
    (lambda: chain(1), "at least 2 layers"),
    (lambda: chain(None), "at least 2 layers.*None"),
    (lambda: chain(3, a=[0.0, 0.5]), "got 2 values for a"),
    (lambda: chain(3, a=5), "a must be a sequence"),
    (lambda: chain(3, alignment=(1.5, 0.5, 1.0)), "alpha = 1.5 is out of range"),
    (lambda: chain(3, alignment=(0.5, 0.5)), "must be three numbers"),
    (lambda: chain(3, alignment="half"), "unknown alignment preset 'half'"),
    (lambda: chain(3, alignment=[(1, 0.5, 1)] * 2), "got 2 values for alignment"),
    (lambda: chain(3, b=[0.5, "x", 0.5]), "b of layer 1 must be a real number"),
    (lambda: OpGraph(None), "iterable of Node, got NoneType"),
    (lambda: OpGraph("abc"), "iterable of Node, got str"),
    (lambda: OpGraph([1, 2]), "node 0 of the graph is a int"),
    (lambda: OpGraph([]), "the graph is empty"),
    (lambda: OpGraph([Node("x", a=0.0, alpha=2.0)]), "node 'x': alpha = 2.0 is out of range"),
    (lambda: OpGraph([Node("x", a=0.0, omega=-0.5)]), "node 'x': omega = -0.5 is out of range"),
    (lambda: OpGraph([Node("x", a=1e20)]), "node 'x': a = 1e\\+20 is out of range"),
    (lambda: OpGraph([Node("x", a=float("nan"))]), "node 'x': a = nan is not a finite number"),
    (lambda: OpGraph([Node("x", a="0")]), "node 'x': a must be a real number"),
    (lambda: OpGraph([Node("x", a=1j)]), "node 'x': a must be a real number, got complex"),
    (lambda: OpGraph([Node("x", a=0.0, has_weight="yes")]), "node 'x': has_weight must be True or False"),
    (lambda: OpGraph([Node("x", a=0.0), Node("y", a=0.0, preds="x")]), "preds must be a tuple"),
    (lambda: OpGraph([Node("x", a=0.0)], check_stability="no"), "check_stability must be True or False"),
    (lambda: StabilityLP("x"), "StabilityLP needs an OpGraph.*got str"),
    (lambda: StabilityLP(None), "StabilityLP needs an OpGraph.*got NoneType"),
    (lambda: StabilityLP(chain(3), optimizer="adagrad"), "unknown optimizer 'adagrad'"),
    (lambda: StabilityLP(chain(3), feature_learning="no"), "feature_learning must be True or False"),
    (lambda: StabilityLP(chain(3), solver=5), "unknown solver 5"),
    (lambda: StabilityLP(chain(3), c_fixed={"layer0": None}), "node 'layer0': pinned c must be a real"),
    (lambda: StabilityLP(chain(3), c_fixed={"layer0": "0.5"}), "node 'layer0': pinned c must be a real"),
    (lambda: StabilityLP(chain(3), c_fixed={"layer0": 1e20}), "node 'layer0': pinned c = 1e\\+20"),
    (lambda: StabilityLP(chain(3), c_fixed=[0.5]), "c_fixed must be a mapping"),
    (lambda: StabilityLP(chain(3), c_fixed={0: 0.5}), "c_fixed keys must be node names"),
    (lambda: StabilityLP(chain(3), pinned="layer0"), "pinned must be a sequence of node names"),
    (lambda: StabilityLP(chain(3), pinned=["nope"]), "no node named 'nope'"),
    (lambda: LP.solve(alpha=["a"] * 3), "alpha .* must hold real numbers"),
    (lambda: LP.solve(alpha=[1.5] * 3), "node 'layer0': alpha = 1.5 is out of range"),
    (lambda: LP.solve(alpha=[0.5, -0.1, 0.5]), "node 'layer1': alpha = -0.1 is out of range"),
    (lambda: LP.solve(alpha=[1 + 1j] * 3), "must hold real numbers, got complex"),
    (lambda: LP.solve(alpha=[1.0] * 2), "alpha: expected 3 values"),
    (lambda: LP.solve(alpha=[[1.0] * 3]), "alpha: expected 3 values"),
    (lambda: LP.solve(omega={"layer1": 2}), "node 'layer1': omega = 2.0 is out of range"),
    (lambda: LP.solve(u={"nope": 0.5}), "no node named 'nope'"),
    (lambda: LP.solve(u={"layer1": None}), "node 'layer1': u must be a real number"),
    (lambda: LP.solve(a=[0.0, 0.0, 0.5]), r"layer 'layer0' \(embedding\): a \+ b"),
    (lambda: LP.solve(b={"layer1": 1.0}), r"layer 'layer1' \(hidden\): a \+ b"),
    (lambda: LP.solve(a=[1e25, 0.0, 0.5]), "node 'layer0': a = 1e\\+25 is out of range"),
    (lambda: LP.solve(beta=[1.0] * 3), "unknown number fields"),
    (lambda: LP.solve(c_fixed={"layer0": 0.5}), "not pinned when the LP was built"),
    (lambda: LP.solve(c_fixed=0.5), "c_fixed must be a mapping"),
    (lambda: chain(3).with_numbers(alpha={"nope": 0.5}), r"alpha names \['nope'\]"),
    (lambda: chain(3).with_numbers(alpha=[0.5]), "alpha: expected 3 values"),
    (lambda: chain(3).with_numbers(alpha=[0.5, 0.5, 7.0]), "node 'layer2': alpha = 7.0 is out of range"),
    (lambda: mc.ema_update(np.zeros(2), np.ones(2), 2.0), "EMA decay = 2.0 is out of range"),
    (lambda: mc.check_ema_decay("alignment_ema", True), "alignment_ema must be a real number"),
    (lambda: mc.check_ema_decay("alignment_ema", 1.0), "alignment_ema = 1.0 is out of range"),
    (lambda: mc.SolveSchedule(-5), "warmup_steps must be an integer >= 0, got -5"),
    (lambda: mc.SolveSchedule(2.7), "warmup_steps must be an integer >= 0, got float 2.7"),
    (lambda: mc.SolveSchedule(0, 0), "solve_interval must be an integer >= 1"),
    (lambda: mc.WSDSchedule(0, 10, 10, "cosine", 1.5), "min_factor must be in"),
    (lambda: mc.WSDSchedule(0, 10, 10, "cosine", float("nan")), "min_factor = nan"),
    (lambda: mc.WSDSchedule(0, 10, 10, "exp"), "unknown decay_type 'exp'"),
    (lambda: mc.log_rms_alignment(np.ones((3, 8)) * 1j, np.ones((4, 8))), "must hold real numbers"),
    (lambda: mc.log_rms_alignment(np.ones((3, 8)), np.ones((4, 8), complex)), "matrix must hold real"),
    (lambda: mc.log_rms_alignment(np.array([["a"] * 8]), np.ones((4, 8))), "must hold real numbers"),
    (lambda: mc.log_rms_alignment(np.ones((3, 16)), np.ones((4, 8))), "input has 16 features .* contracts 8"),
    (lambda: mc.log_rms_alignment(np.float64(1.0), np.ones((4, 8))), "at least one axis"),
    (lambda: mc.log_rms_alignment(np.ones((3, 8)), np.ones((4, 8)), fan_in=2.7), "fan_in must be an integer"),
    (lambda: mc.spectral_alignment(np.ones((3, 16)), np.ones((4, 8))), "input has 16 features"),
    (lambda: mc.alignment(np.ones((3, 8)), np.ones((4, 8)), "l2"), "unknown alignment mode 'l2'"),
    (lambda: mc.layer_alignment(np.ones((3, 8)), np.ones((2, 8)), np.eye(4, 8), np.eye(4, 8)), "inputs"),
    (lambda: mc.layer_alignment(np.ones((3, 8)), np.ones((3, 8)), np.eye(4, 8), np.eye(5, 8)), "weights"),
    (lambda: mc.alignment_of_layers([(np.ones((3, 8)), np.ones((3, 8)))]), r"must be a \(z0, z, w0, w\)"),
    (lambda: mc.alignment_of_layers([]), "at least one layer"),
    (lambda: mc.alignment_of_layers([(np.ones((3, 8)),) * 4], mode="l2"), "unknown alignment mode"),
    (lambda: mc.validate.alignment_triple((0.5, 0.5), "override"), "override must be three numbers"),
    (lambda: mc.validate.real_number(10**400, "x"), "x is an integer of 401 digits, too large"),
]


@pytest.mark.parametrize(("call", "message"), BAD_CALLS, ids=[m for _, m in BAD_CALLS])
def test_core_bad_input_is_a_clear_maxp_error(call, message) -> None:
    with pytest.raises(MaxPError, match=message):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: Node("x", a=np.float32(-0.5), b=np.float64(0.5), alpha=np.int64(1)),
        lambda: chain(np.int64(3), a=[np.float32(-0.5), np.int64(0), 0.5]),
        lambda: mc.SolveSchedule(np.int64(0), np.int32(2)),
        lambda: StabilityLP(chain(3), c_fixed={"layer0": np.float32(0.5)}),
        lambda: mc.named_parametrization("MuP", np.int64(3)),
        lambda: mc.check_ema_decay("ema", np.float32(0.5)),
    ],
)
def test_numpy_scalars_are_valid_numbers(call) -> None:
    call()
    graph = OpGraph(
        [Node("e", a=np.float32(-0.5), b=np.float32(0.5)), Node("o", a=np.float32(0.5), preds=("e",))]
    )
    assert StabilityLP(graph).solve().c == StabilityLP(chain(2, names=["e", "o"])).solve().c


def test_single_weighted_node_with_an_unstable_c_is_an_error_not_optimal() -> None:
    graph = OpGraph([Node("source", a=-0.5)])  # r = a + c = -0.5 at c = 0
    with pytest.raises(mc.InfeasibleError, match=r"source r=-0\.5"):
        StabilityLP(graph).solve()


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(np.float64, 1e160), (np.float64, 1e-170), (np.float32, 1e17), (np.float32, 1e-30), (np.float64, 1.0)],
)
def test_perfect_alignment_is_one_at_any_magnitude(dtype, scale) -> None:
    rng = np.random.default_rng(0)
    v = rng.standard_normal(256)
    y = (np.outer(rng.standard_normal(16), v) * scale).astype(dtype)
    x = (np.stack([v, -3 * v]) * scale).astype(dtype)
    assert mc.log_rms_alignment(x, y) == pytest.approx(1.0, abs=1e-6)
    assert mc.spectral_alignment(x, y) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("x", "why"),
    [
        (np.zeros((0, 32)), "empty"),
        (np.zeros((4, 32)), "all zero"),
        (np.full((4, 32), np.nan), "all NaN"),
        (np.full((4, 32), np.inf), "all inf"),
    ],
)
def test_a_sample_without_information_is_missing_not_zero(x, why) -> None:
    y = np.random.default_rng(1).standard_normal((8, 32))
    assert math.isnan(mc.log_rms_alignment(x, y)), why
    assert math.isnan(mc.spectral_alignment(x, y)), why
    filled, missing = mc.fill_missing(np.array([mc.log_rms_alignment(x, y)]), np.array([0.7]))
    assert filled.tolist() == [0.7] and missing.tolist() == [True]


def test_resolver_keeps_the_last_rates_when_numbers_are_not_finite() -> None:
    def solve(al):
        return np.array(list(LP.solve(alpha=al[:, 0], omega=al[:, 1], u=al[:, 2]).c.values()))

    resolver = mc.Resolver(["layer0", "layer1", "layer2"], solve)
    previous = np.array([mc.alignment_preset("full")] * 3)
    c_prev = solve(previous)
    with pytest.warns(mc.MaxPWarning, match=r"'layer1' are not finite"):
        outcome = resolver(
            measured=np.full((3, 3), 0.3),
            previous=previous,
            c_prev=c_prev,
            nonfinite=np.array([False, True, False]),
            failures=0,
        )
    assert outcome.failed and outcome.c.tolist() == c_prev.tolist()
    assert outcome.alignment.tolist() == previous.tolist()
    # Every later failure is counted; only the 2nd, 4th, 8th ... are told.
    with pytest.warns(mc.MaxPWarning, match=r"\(2 failed so far\)"):
        resolver(measured=previous, previous=previous, c_prev=c_prev, nonfinite=[True] * 3, failures=1)


@pytest.mark.parametrize(
    ("numbers", "pins", "message"),
    [
        (
            np.zeros(4),
            None,
            r"the numbers vector has shape \(4,\); this graph of 3 nodes packs .* into \(15,\)",
        ),
        (np.zeros((3, 5)), None, r"has shape \(3, 5\)"),
        ("abc", None, r"solve_packed takes arrays of numbers"),
        (None, np.zeros(2), r"pin_values has shape \(2,\); this LP pins \[\], one value each"),
    ],
)
def test_solve_packed_names_a_vector_of_the_wrong_shape(numbers, pins, message) -> None:
    from maxp_core.formulation import pack_numbers

    lp = mc.StabilityLP(mc.chain(3))
    with pytest.raises(mc.MaxPError, match=message):
        lp.solve_packed(pack_numbers(lp.graph) if numbers is None else numbers, pins)


@pytest.mark.parametrize("shape", [(4, 0), (0, 0), (2, 0, 3, 0)])
def test_an_empty_feature_axis_is_a_missing_measurement(shape) -> None:
    from maxp_core.alignment import log_rms_alignment

    assert np.isnan(log_rms_alignment(np.zeros(shape), np.zeros((3, shape[-1]))))
