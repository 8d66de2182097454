"""Weights no rule covers are named (an error with ``strict=True``); a rule set whose readout only the
traced graph can show (a tied table) is refused with that cause and its fix; ``describe()`` shows
every leaf's factor, each layer's init and where its alignment comes from."""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from examples.flax_llama import Llama
from maxp_core import GraphError, MaxPError, MaxPWarning
from maxp_jax import DynamicAlignment, MaxPSpec, Rule, abc_init, find_maxp_state, scale_by_maxp
from tests.jax.models import mlp_and_spec

IDS = jax.random.randint(jax.random.key(3), (2, 8), 0, 32)
WITHOUT_UP = [
    Rule("params/embed/embedding", "embedding", layout="embedding"),
    Rule(r"params/blocks/(q|k|v|o|gate|down)/kernel", "hidden"),  # "up" forgotten
    Rule("params/head/kernel", "readout"),
]


@pytest.fixture(scope="module")
def scanned():
    model = Llama(scan=True, d=16, layers=2)
    return model, jax.jit(model.init)(jax.random.key(0), IDS)


def test_a_forgotten_scanned_weight_is_named_and_stacked_norms_are_not(scanned) -> None:
    model, params = scanned
    with pytest.warns(
        MaxPWarning, match=r"no maxP layer covers: params/blocks/up/kernel \(2, 16, 32\)"
    ) as caught:
        MaxPSpec(params, WITHOUT_UP, apply_fn=model.apply, sample_input=IDS)
    message = str(caught[0].message)
    assert "norm" not in message  # (layers, d) gains are vectors stacked by the scan, not weights
    with pytest.raises(MaxPError, match=r"params/blocks/up/kernel .* trains at the base rate"):
        MaxPSpec(params, WITHOUT_UP, apply_fn=model.apply, sample_input=IDS, strict=True)


def test_full_rules_raise_nothing_under_strict(scanned) -> None:
    model, params = scanned
    rules = [*WITHOUT_UP[:1], Rule(r"params/blocks/(q|k|v|o|gate|up|down)/kernel", "hidden"), WITHOUT_UP[2]]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaxPWarning)
        MaxPSpec(params, rules, apply_fn=model.apply, sample_input=IDS, strict=True)


def test_a_tied_readout_without_the_forward_names_apply_fn() -> None:
    model = Llama(scan=False, d=16, layers=1, tied=True)
    params = model.init(jax.random.key(0), IDS)
    rules = [
        Rule("params/embed/embedding", "embedding", layout="embedding"),
        Rule(r"params/blocks_\d+/(q|k|v|o|gate|up|down)/kernel", "hidden"),
    ]
    with pytest.raises(
        GraphError, match=r"no layer is a readout.*tied.*give MaxPSpec apply_fn and sample_input"
    ):
        MaxPSpec(params, rules)
    spec = MaxPSpec(params, rules, apply_fn=model.apply, sample_input=IDS)  # the fix
    assert "params/embed.readout" in [layer.name for layer in spec.layers]


def test_strict_must_be_a_boolean() -> None:
    params = {"a": jnp.zeros((4, 8)), "b": jnp.zeros((8, 2))}
    with pytest.raises(MaxPError, match="strict"):
        MaxPSpec(params, [Rule("a", "embedding"), Rule("b", "readout")], strict="yes")


def test_describe_shows_bias_rates_init_and_where_each_alignment_comes_from() -> None:
    model, params, spec = mlp_and_spec(width=64, depth=4)
    text = spec.describe()
    factors = spec.factors()
    for i, layer in enumerate(spec.layers):
        for path in layer.extra_paths:  # each bias, with the factor it shares
            assert f"{path}: {float(factors[i]):.4g} (as {layer.name})" in text
    assert "init std" in text and "preset" in text and "measured" not in text
    x = jax.random.normal(jax.random.key(0), (16, 16))
    params = abc_init(spec, params, jax.random.key(1))
    dyn = DynamicAlignment(model.apply, x, warmup_steps=0, solve_interval=1)
    tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.01))
    state = tx.init(params)
    grads = jax.grad(lambda p: (model.apply(p, x) ** 2).mean())(params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    after = spec.describe(state)
    rows = [line.split() for line in after.splitlines()[2 : 2 + len(spec.layers)]]
    assert [row[-1] for row in rows] == ["preset"] + ["measured"] * (len(spec.layers) - 1)  # embedding unused
    np.testing.assert_allclose([float(row[5]) for row in rows], find_maxp_state(state).c, atol=5e-4)


def test_a_kernel_that_splits_its_output_into_heads_is_refused_not_misread() -> None:
    """flax's DenseGeneral (in, heads, head_dim): read as dense its width would be the head count."""

    class Attention(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(32)(x)
            return nn.Dense(4)(nn.MultiHeadDotProductAttention(num_heads=2, use_bias=False)(h))

    model, x = Attention(), jnp.ones((2, 8, 16))
    params = model.init(jax.random.key(0), x)
    rules = [
        Rule("params/Dense_0/.*", "embedding"),
        Rule(r"params/MultiHeadDotProductAttention_0/.*/kernel", "hidden"),
        Rule("params/Dense_1/.*", "readout"),
    ]
    with pytest.raises(
        MaxPError, match=r"key/kernel \(shape \(32, 2, 16\)\): apply_fn contracts its axes \[0\]"
    ):
        MaxPSpec(params, rules, apply_fn=model.apply, sample_input=x)
