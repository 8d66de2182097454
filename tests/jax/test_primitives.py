"""The jaxpr walks enter every call-like primitive JAX emits, and name the ones they cannot.

Each model wraps its hidden layer in one primitive; its graph and the input captured for
dynamic alignment must equal those of the plain model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maxp_core import MaxPError
from maxp_jax import LayerInputs, MaxPSpec, Rule

PARAMS = {"w_in": jnp.ones((4, 16)) / 2, "w_h": jnp.ones((16, 16)) / 4, "w_out": jnp.ones((16, 2)) / 16}
RULES = [Rule("w_in", "embedding"), Rule("w_h", "hidden"), Rule("w_out", "readout")]
X = jax.random.normal(jax.random.key(0), (8, 4))


def hidden(h, w):
    return jnp.tanh(h @ w)


@jax.custom_vjp
def doubled(h):
    return 2 * h


doubled.defvjp(lambda h: (2 * h, None), lambda _, g: (2 * g,))


@jax.custom_jvp
def softsign(h):
    return h / (1 + jnp.abs(h))


softsign.defjvp(
    lambda primals, tangents: (softsign(primals[0]), tangents[0] / (1 + jnp.abs(primals[0])) ** 2)
)

WRAPPERS = {
    "plain": hidden,
    "jit": jax.jit(hidden),
    "remat2": jax.checkpoint(hidden),
    "remat2 with a policy": jax.checkpoint(hidden, policy=jax.checkpoint_policies.nothing_saveable),
    "custom_vjp_call": lambda h, w: doubled(hidden(h, w)),
    "custom_jvp_call": lambda h, w: softsign(h @ w),
    "nested": jax.jit(jax.checkpoint(lambda h, w: doubled(hidden(h, w)))),
}


def model(wrapper):
    def apply(p, x):
        return wrapper(x @ p["w_in"], p["w_h"]) @ p["w_out"]

    return apply


def emitted(apply) -> set[str]:
    names: set[str] = set()

    def collect(jaxpr):
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            for value in eqn.params.values():
                inner = getattr(value, "jaxpr", value)
                if hasattr(inner, "eqns"):
                    collect(inner)

    collect(jax.make_jaxpr(apply)(PARAMS, X).jaxpr)
    return names


@pytest.mark.parametrize("primitive", [name for name in WRAPPERS if name != "plain"])
def test_each_call_primitive_is_walked_like_the_plain_model(primitive: str) -> None:
    apply, plain = model(WRAPPERS[primitive]), model(WRAPPERS["plain"])
    expected = primitive.split(" ")[0]
    if expected != "nested":
        assert expected in emitted(apply)  # the model really emits the primitive
    spec = MaxPSpec(PARAMS, RULES, apply_fn=apply, sample_input=X)
    reference = MaxPSpec(PARAMS, RULES, apply_fn=plain, sample_input=X)
    assert [(n.name, n.preds) for n in spec.graph.nodes] == [(n.name, n.preds) for n in reference.graph.nodes]
    _, inputs = LayerInputs(spec, apply, PARAMS, X)(PARAMS, X)
    _, expected_inputs = LayerInputs(reference, plain, PARAMS, X)(PARAMS, X)
    assert inputs.keys() == expected_inputs.keys() == {0, 1, 2}
    np.testing.assert_allclose(inputs[1], expected_inputs[1], rtol=1e-6)
    np.testing.assert_allclose(inputs[1], X @ PARAMS["w_in"], rtol=1e-6)  # the hidden layer's input


def cond_model(p, x):
    h = x @ p["w_in"]
    h = jax.lax.cond(jnp.sum(x) > 0, lambda h: jnp.tanh(h @ p["w_h"]), lambda h: h @ p["w_h"], h)
    return h @ p["w_out"]


def while_model(p, x):
    h = x @ p["w_in"]
    h = jax.lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, jnp.tanh(c[1] @ p["w_h"])), (0, h))[1]
    return h @ p["w_out"]


def shard_map_model(p, x):
    mesh = jax.make_mesh((1,), ("x",))
    spec = jax.sharding.PartitionSpec()
    inner = jax.shard_map(lambda h, w: jnp.tanh(h @ w), mesh=mesh, in_specs=(spec, spec), out_specs=spec)
    return inner(x @ p["w_in"], p["w_h"]) @ p["w_out"]


@pytest.mark.parametrize(
    ("apply", "primitive", "advice"),
    [
        (cond_model, "cond", "apply the layer outside the branch"),
        (while_model, "while", "scan over them"),
        (shard_map_model, "shard_map", "the forward of the unsharded model"),
    ],
)
def test_a_weight_inside_an_unentered_primitive_is_refused_by_name(
    apply, primitive: str, advice: str
) -> None:
    with pytest.raises(MaxPError, match=rf"w_h: the weight first meets '{primitive}'.*{advice}"):
        MaxPSpec(PARAMS, RULES, apply_fn=apply, sample_input=X)
    spec = MaxPSpec(PARAMS, RULES)  # without the graph, dynamic alignment finds the same limit
    with pytest.raises(MaxPError, match=rf"w_h: cannot find the input .*first meets '{primitive}'.*{advice}"):
        LayerInputs(spec, apply, PARAMS, X)
