"""Graph discovery from jaxprs: flax nnx, plain functions, marked ops, errors."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import maxp_jax
from maxp_core import MaxPError


class ResMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, d: int = 32, depth: int = 3) -> None:
        self.inp = nnx.Linear(8, d, rngs=rngs)
        self.hidden = nnx.List([nnx.Linear(d, d, rngs=rngs) for _ in range(depth)])
        self.out = nnx.Linear(d, 3, rngs=rngs)

    def __call__(self, x):
        h = self.inp(x)
        for layer in self.hidden:
            h = h + jax.nn.relu(layer(h))
        return self.out(h)


def test_nnx_residual_mlp_graph() -> None:
    graphdef, state = nnx.split(ResMLP(nnx.Rngs(0)))

    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    rules = [
        maxp_jax.Rule("inp/.*", "embedding"),
        maxp_jax.Rule(r"hidden/\d+/.*", "hidden"),
        maxp_jax.Rule("out/.*", "readout"),
    ]
    spec = maxp_jax.MaxPSpec(state, rules, apply_fn=apply, sample_input=jnp.ones((2, 8)))
    assert [(n.name, n.preds) for n in spec.graph.nodes] == [
        ("inp", ()),
        ("hidden/0", ("inp",)),
        ("add1", ("inp", "hidden/0")),
        ("hidden/1", ("add1",)),
        ("add2", ("add1", "hidden/1")),
        ("hidden/2", ("add2",)),
        ("add3", ("add2", "hidden/2")),
        ("out", ("add3",)),
    ]


def test_marked_activation_and_gate() -> None:
    params = {
        "e": jnp.ones((4, 16)),
        "a": jnp.ones((16, 16)),
        "b": jnp.ones((16, 16)),
        "o": jnp.ones((16, 2)),
    }
    scores = maxp_jax.activation("scores", lambda q, k: q @ k.T, a=1.0)

    def apply(p, x):
        h = x @ p["e"]
        gate = jax.nn.sigmoid(h @ p["a"]) * (h @ p["b"])
        return (jax.nn.softmax(scores(gate, h)) @ gate) @ p["o"]

    rules = [maxp_jax.Rule("e", "embedding"), maxp_jax.Rule("a|b", "hidden"), maxp_jax.Rule("o", "readout")]
    spec = maxp_jax.MaxPSpec(params, rules, apply_fn=apply, sample_input=jnp.ones((3, 4)))
    nodes = {n.name: (n.preds, n.merge, n.has_weight, n.contraction) for n in spec.graph.nodes}
    assert nodes["mul1"] == (("a", "b"), "product", False, False)
    assert nodes["scores"] == (("mul1", "e"), "product", False, True)
    assert spec.graph.node("scores").a == 1.0
    assert nodes["mul2"] == (("scores", "mul1"), "product", False, False)
    assert nodes["o"] == (("mul2",), "min", True, False)
    assert all(n.zero_inputs == () for n in spec.graph.nodes)


def test_discovery_errors() -> None:
    params = {"e": jnp.ones((4, 16)), "h": jnp.ones((16, 16)), "o": jnp.ones((16, 2))}
    rules = [maxp_jax.Rule("e", "embedding"), maxp_jax.Rule("h", "hidden"), maxp_jax.Rule("o", "readout")]
    with pytest.raises(MaxPError, match=r"never used the weights of \['h'\]"):
        maxp_jax.MaxPSpec(
            params, rules, apply_fn=lambda p, x: x @ p["e"] @ p["o"], sample_input=jnp.ones((1, 4))
        )
    with pytest.raises(MaxPError, match="h: the weight first meets 'tanh'"):
        maxp_jax.MaxPSpec(
            params,
            rules,
            apply_fn=lambda p, x: x @ p["e"] @ jnp.tanh(p["h"]) @ p["o"],
            sample_input=jnp.ones((1, 4)),
        )
    with pytest.raises(MaxPError, match="give both apply_fn and sample_input"):
        maxp_jax.MaxPSpec(params, rules, apply_fn=lambda p, x: x)
