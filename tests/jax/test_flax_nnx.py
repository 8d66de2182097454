"""flax nnx: a spec from nnx state, explicit multipliers with ScaledLinear, nnx.Optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from maxp_jax import MaxPSpec, Rule, scale_by_maxp
from maxp_jax.layers import ScaledLinear, multiplier


class Net(nnx.Module):
    def __init__(self, width: int, mults: tuple[float, float, float], rngs: nnx.Rngs) -> None:
        self.inp = ScaledLinear(8, width, multiplier=mults[0], rngs=rngs)
        self.hid = ScaledLinear(width, width, multiplier=mults[1], rngs=rngs)
        self.out = ScaledLinear(width, 3, multiplier=mults[2], rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.hid(jax.nn.relu(self.inp(x)))))


RULES = [Rule("inp/.*", "embedding"), Rule("hid/.*", "hidden"), Rule("out/.*", "readout")]


def test_nnx_spec_multipliers_and_optimizer_step() -> None:
    width = 32
    probe = Net(width, (1.0, 1.0, 1.0), nnx.Rngs(0))
    spec = MaxPSpec(nnx.state(probe, nnx.Param), RULES, multipliers="explicit")
    assert [layer.name for layer in spec.layers] == ["inp", "hid", "out"]
    assert [layer.extra_paths for layer in spec.layers] == [
        ("inp/bias/value",),
        ("hid/bias/value",),
        ("out/bias/value",),
    ]
    mults = tuple(multiplier(layer.a, layer.width) for layer in spec.layers)
    assert mults == tuple(spec.multiplier(layer.name) for layer in spec.layers)

    model = Net(width, mults, nnx.Rngs(1))
    x = jnp.ones((4, 8))
    plain = Net(width, (1.0, 1.0, 1.0), nnx.Rngs(1))
    np.testing.assert_allclose(
        model.out(jnp.ones((2, width))), plain.out(jnp.ones((2, width))) * mults[2], rtol=1e-6
    )

    optimizer = nnx.Optimizer(model, optax.chain(scale_by_maxp(spec), optax.sgd(0.1)), wrt=nnx.Param)
    before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
    optimizer.update(model, grads)
    after = nnx.state(model, nnx.Param)
    for layer, factor in zip(spec.layers, spec.factors(), strict=True):
        module = layer.name
        delta = after[module]["kernel"][...] - before[module]["kernel"][...]
        np.testing.assert_allclose(delta, -0.1 * factor * grads[module]["kernel"][...], rtol=1e-5, atol=1e-7)


def test_nnx_rules_match_paths_with_or_without_value() -> None:
    state = nnx.state(Net(16, (1.0, 1.0, 1.0), nnx.Rngs(0)), nnx.Param)
    exact = [
        Rule("inp/kernel", "embedding"),
        Rule("hid/kernel", "hidden"),
        Rule("out/kernel/value", "readout"),
    ]
    spec = MaxPSpec(state, exact)
    assert [layer.weight_path for layer in spec.layers] == [
        "inp/kernel/value",
        "hid/kernel/value",
        "out/kernel/value",
    ]
    assert all(layer.extra_paths == () for layer in spec.layers)  # the biases were not matched
