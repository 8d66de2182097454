"""Products, contractions and zero initial weights in graphs read from jaxprs, against hand-built graphs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import maxp_jax
from examples.flax_models import FlaxGPT, gpt_rules
from maxp_core import MaxPError, Node, OpGraph, StabilityLP

D = 32


def described(graph: OpGraph) -> list[tuple]:
    """``(name, preds, merge, has_weight, b or None, contraction, zero_inputs)`` in node order."""
    return [
        (n.name, n.preds, n.merge, n.has_weight, n.b if n.has_weight else None, n.contraction, n.zero_inputs)
        for n in graph.nodes
    ]


def expected_flax_gpt(blocks: int, zero_v: bool = False) -> list[tuple]:
    """The graph of :class:`FlaxGPT` in trace order, merges numbered as they appear."""

    def layer(name, preds, b=0.5):
        return (name, preds, "min", True, b, False, ())

    def product(name, preds, contraction=False, zero=()):
        return (name, preds, "product", False, None, contraction, zero)

    tok, pos = "params/tok", "params/pos"
    nodes = [layer(tok, ()), layer(pos, ()), ("add1", (tok, pos), "min", False, None, False, ())]
    stream, k = "add1", 1
    for i in range(blocks):
        p, scores = f"params/blocks_{i}/", f"blocks.{i}.scores"
        nodes += [layer(p + "q", (stream,)), layer(p + "k", (stream,))]
        nodes += [product(scores, (p + "q", p + "k"), contraction=True)]
        nodes += [layer(p + "v", (stream,), b=math.inf if zero_v else 0.5)]
        nodes += [product(f"mul{k + 1}", (scores, p + "v"), zero=(p + "v",) if zero_v else ())]
        nodes += [layer(p + "o", (f"mul{k + 1}",))]
        nodes += [(f"add{k + 2}", (stream, p + "o"), "min", False, None, False, ())]
        stream = f"add{k + 2}"
        nodes += [layer(p + "gate", (stream,)), layer(p + "up", (stream,))]
        nodes += [product(f"mul{k + 3}", (p + "gate", p + "up")), layer(p + "down", (f"mul{k + 3}",))]
        nodes += [(f"add{k + 4}", (stream, p + "down"), "min", False, None, False, ())]
        stream, k = f"add{k + 4}", k + 4
    return [*nodes, layer("params/head", (stream,))]


def gpt_spec(blocks: int, zero_v: bool) -> maxp_jax.MaxPSpec:
    model = FlaxGPT(d=D, blocks=blocks, vocab=50, ctx=16)
    ids = jnp.zeros((2, 16), jnp.int32)
    params = model.init(jax.random.key(0), ids)
    rules = gpt_rules()
    if zero_v:
        rules = [
            rules[0],
            maxp_jax.Rule(r"params/blocks_\d+/(q|k|o|gate|up|down)/kernel", "hidden"),
            maxp_jax.Rule(r"params/blocks_\d+/v/kernel", "hidden", b=math.inf),
            rules[2],
        ]
    return maxp_jax.MaxPSpec(params, rules, apply_fn=model.apply, sample_input=ids)


@pytest.mark.parametrize("zero_v", [False, True])
def test_flax_gpt_products_contractions_and_zero_v(zero_v: bool) -> None:
    spec = gpt_spec(2, zero_v)
    assert described(spec.graph) == expected_flax_gpt(2, zero_v)
    # flax initialised v with random weights; the graph reads it as abc_init leaves it.
    assert float(jnp.abs(spec.params["params"]["blocks_0"]["v"]["kernel"]).max()) > 0


def test_an_override_moves_c_from_the_preset_answer() -> None:
    """Zero v and o measured (0, 0.5, 1): c_v + c_o = 2 is the optimal face; the preset's
    answer c_v = c_o = 1 anchors the choice, as in ``tests/torch/test_graph_rules.py``."""
    model = FlaxGPT(d=D, blocks=1, vocab=50, ctx=16)
    ids = jnp.zeros((2, 16), jnp.int32)
    rules = [
        gpt_rules()[0],
        maxp_jax.Rule(r"params/blocks_\d+/(q|k|gate|up|down)/kernel", "hidden"),
        maxp_jax.Rule(r"params/blocks_\d+/v/kernel", "hidden", b=math.inf),
        maxp_jax.Rule(r"params/blocks_\d+/o/kernel", "hidden", alignment=(0.0, 0.5, 1.0)),
        gpt_rules()[2],
    ]
    spec = maxp_jax.MaxPSpec(
        model.init(jax.random.key(0), ids), rules, apply_fn=model.apply, sample_input=ids
    )
    c = {layer.name: float(ci) for layer, ci in zip(spec.layers, spec.c, strict=True)}
    assert c["params/blocks_0/v"] == pytest.approx(1.0, abs=1e-6)
    assert c["params/blocks_0/o"] == pytest.approx(1.0, abs=1e-6)
    later = StabilityLP(spec.graph, "adam", tie_rule="later").solve().c
    assert (later["params/blocks_0/v"], later["params/blocks_0/o"]) == pytest.approx((2.0, 0.0), abs=1e-6)


# --- a gated MLP: e -> (act(g) * u) -> o -------------------------------------------


def gate_params(key: int = 0) -> dict[str, jax.Array]:
    k = jax.random.split(jax.random.key(key), 4)
    shapes = {"e": (8, D), "g": (D, D), "u": (D, D), "o": (D, 3)}
    return {name: jax.random.normal(kk, shape) for kk, (name, shape) in zip(k, shapes.items(), strict=True)}


def gate_rules(gate_b: float | None) -> list[maxp_jax.Rule]:
    return [
        maxp_jax.Rule("e", "embedding"),
        maxp_jax.Rule("g", "hidden", b=gate_b),
        maxp_jax.Rule("u", "hidden"),
        maxp_jax.Rule("o", "readout"),
    ]


def gated(act):
    def apply(p, x):
        h = x @ p["e"]
        return (act(h @ p["g"]) * (h @ p["u"])) @ p["o"]

    return apply


def gate_graph(gate_b: float, zero: tuple[str, ...]) -> OpGraph:
    """The hand-built graph of :func:`gated` (muP exponents, full alignment)."""
    return OpGraph(
        [
            Node("e", a=-0.5, b=0.5),
            Node("g", a=0.0, b=gate_b, preds=("e",)),
            Node("u", a=0.0, b=0.5, preds=("e",)),
            Node("mul1", a=0.0, has_weight=False, preds=("g", "u"), merge="product", zero_inputs=zero),
            Node("o", a=0.5, b=0.5, preds=("mul1",)),
        ]
    )


@pytest.mark.parametrize(
    ("act", "zero"),
    [(jax.nn.silu, ("g",)), (jax.nn.relu, ("g",)), (jnp.tanh, ("g",)), (jax.nn.sigmoid, ())],
    ids=["silu", "relu", "tanh", "sigmoid"],
)
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_zero_gate_is_a_zero_factor_where_the_activation_keeps_zero(act, zero, optimizer) -> None:
    # silu(0) = relu(0) = tanh(0) = 0, sigmoid(0) = 1/2: only the first three leave the factor zero.
    spec = maxp_jax.MaxPSpec(
        gate_params(),
        gate_rules(math.inf),
        optimizer=optimizer,
        apply_fn=gated(act),
        sample_input=jnp.ones((2, 8)),
    )
    expected = gate_graph(math.inf, zero)
    assert described(spec.graph) == described(expected)
    c = StabilityLP(expected, optimizer).solve().c
    np.testing.assert_allclose(spec.c, [c[layer.name] for layer in spec.layers], atol=1e-9)


def test_zero_sample_or_zero_weights_without_b_inf_give_no_zero_factor() -> None:
    x0 = jnp.zeros((2, 8))
    spec = maxp_jax.MaxPSpec(gate_params(), gate_rules(None), apply_fn=gated(jax.nn.silu), sample_input=x0)
    assert described(spec.graph) == described(gate_graph(0.5, ()))
    params = {**gate_params(), "g": jnp.zeros((D, D))}  # zero by the user's hand, not declared
    spec = maxp_jax.MaxPSpec(
        params, gate_rules(None), apply_fn=gated(jax.nn.silu), sample_input=jnp.ones((2, 8))
    )
    assert described(spec.graph) == described(gate_graph(0.5, ()))
    # A declared zero gate stays a zero factor on a zero sample too.
    spec = maxp_jax.MaxPSpec(
        gate_params(), gate_rules(math.inf), apply_fn=gated(jax.nn.silu), sample_input=x0
    )
    assert described(spec.graph) == described(gate_graph(math.inf, ("g",)))


def test_values_not_given_are_not_taken_for_zero() -> None:
    def apply(p, x):
        h = x @ p["e"]
        return (jax.nn.silu(h @ p["g"] + p["shift"]) * (h @ p["u"])) @ p["o"]

    params = {**gate_params(), "shift": jnp.zeros(D)}  # a leaf outside every rule
    x = jnp.ones((2, 8))
    spec = maxp_jax.MaxPSpec(params, gate_rules(math.inf), apply_fn=apply, sample_input=x)
    assert spec.graph.node("mul1").zero_inputs == ("g",)
    params["shift"] = jnp.ones(D)
    spec = maxp_jax.MaxPSpec(params, gate_rules(math.inf), apply_fn=apply, sample_input=x)
    assert spec.graph.node("mul1").zero_inputs == ()
    # Given by shape only, the shift is unknown: the gate is not assumed zero. The declared
    # zero layer needs no values.
    shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), params)
    spec = maxp_jax.MaxPSpec(shapes, gate_rules(math.inf), apply_fn=apply, sample_input=x)
    assert spec.graph.node("mul1").zero_inputs == ()
    spec = maxp_jax.MaxPSpec(shapes, gate_rules(math.inf), apply_fn=gated(jax.nn.silu), sample_input=x)
    assert spec.graph.node("mul1").zero_inputs == ("g",)


def test_quotient_multiplies_by_its_numerator() -> None:
    def ratio(p, x):
        h = x @ p["e"]
        return ((h @ p["g"]) / (h @ p["u"])) @ p["o"]

    x = jnp.ones((2, 8))
    spec = maxp_jax.MaxPSpec(gate_params(), gate_rules(math.inf), apply_fn=ratio, sample_input=x)
    assert described(spec.graph) == described(gate_graph(math.inf, ("g",)))
    # The zero layer as the denominator: the quotient is not zero, so it is no zero factor.
    rules = [*gate_rules(None)[:2], maxp_jax.Rule("u", "hidden", b=math.inf), gate_rules(None)[3]]
    spec = maxp_jax.MaxPSpec(gate_params(), rules, apply_fn=ratio, sample_input=x)
    assert spec.graph.node("mul1").zero_inputs == ()


def test_zero_contraction_factor() -> None:
    # scores = q @ z^T with z from a zero layer: the contraction lists z.
    scores = maxp_jax.activation("zero_scores", lambda q, k: q @ k.T / q.shape[-1], a=1.0)

    def apply(p, x):
        h = x @ p["e"]
        return (scores(h @ p["u"], h @ p["g"]) @ h) @ p["o"]

    spec = maxp_jax.MaxPSpec(
        gate_params(), gate_rules(math.inf), apply_fn=apply, sample_input=jnp.ones((5, 8))
    )
    node = spec.graph.node("zero_scores")
    assert (node.preds, node.contraction, node.zero_inputs) == (("u", "g"), True, ("g",))


# --- Rule(b=inf) ---------------------------------------------------------------------


def layer_params() -> dict[str, dict[str, jax.Array]]:
    """:func:`gate_params` as flax-like modules, ``g`` with a bias."""
    params = {name: {"kernel": w} for name, w in gate_params().items()}
    params["g"]["bias"] = jnp.ones(D)
    return params


@pytest.mark.parametrize("multipliers", ["folded", "explicit"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_rule_b_inf_gives_zero_weights_in_both_multiplier_modes(multipliers: str, optimizer: str) -> None:
    params = layer_params()
    rules = [
        maxp_jax.Rule("e/kernel", "embedding"),
        maxp_jax.Rule("g/.*", "hidden", b=math.inf),
        maxp_jax.Rule("u/kernel", "hidden"),
        maxp_jax.Rule("o/kernel", "readout"),
    ]
    spec = maxp_jax.MaxPSpec(params, rules, optimizer=optimizer, multipliers=multipliers)
    assert [layer.name for layer in spec.layers] == ["e", "g", "u", "o"]
    assert spec.layers[1].b == math.inf and spec.layers[1].extra_paths == ("g/bias",)
    a, b, c = spec.effective_abc()[1]
    assert b == math.inf and math.isfinite(a) and math.isfinite(c)
    assert spec.init_std(2.0)[1] == 0.0
    assert np.all(np.delete(spec.init_std(), 1) > 0)
    new = maxp_jax.abc_init(spec, params, jax.random.key(1))
    assert not np.any(np.asarray(new["g"]["kernel"])) and not np.any(np.asarray(new["g"]["bias"]))
    assert np.all(np.asarray(new["u"]["kernel"]) != 0)
    # The chain graph (no apply_fn) carries b = inf, and the LP solves it.
    expected = OpGraph(
        [
            Node("e", a=-0.5, b=0.5),
            Node("g", a=0.0, b=math.inf, preds=("e",)),
            Node("u", a=0.0, b=0.5, preds=("g",)),
            Node("o", a=0.5, b=0.5, preds=("u",)),
        ]
    )
    assert described(spec.graph) == described(expected)
    c_lp = StabilityLP(expected, optimizer).solve().c
    np.testing.assert_allclose(spec.c, [c_lp[name] for name in "eguo"], atol=1e-9)
    assert np.all(np.isfinite(spec.factors()))


def test_b_inf_skips_the_stability_check() -> None:
    # a + b = inf is unstable by the check for every role; a zero weight is stable whatever a.
    rules = [maxp_jax.Rule("e", "embedding", b=math.inf), *gate_rules(None)[1:]]
    spec = maxp_jax.MaxPSpec(gate_params(), rules)
    assert spec.layers[0].b == math.inf
    with pytest.raises(MaxPError, match="a \\+ b"):
        maxp_jax.MaxPSpec(gate_params(), [maxp_jax.Rule("e", "embedding", b=1.0), *gate_rules(None)[1:]])


@pytest.mark.parametrize("bad", [-math.inf, math.nan, np.float64(np.nan), "inf"])
def test_bad_b_names_the_rule(bad) -> None:
    with pytest.raises(MaxPError, match=r"rule 'params/v/kernel': b"):
        maxp_jax.Rule("params/v/kernel", "hidden", b=bad)


def test_a_and_c_stay_finite() -> None:
    for name in ("a", "c"):
        with pytest.raises(MaxPError, match=rf"rule 'v': {name}"):
            maxp_jax.Rule("v", "hidden", **{name: math.inf})
    assert maxp_jax.Rule("v", "hidden", b=np.float32(np.inf)).b == math.inf
