"""Weights no rule covers are named (an error with ``strict=True``), and a rule set whose readout
only the traced graph can show (a tied table) is refused with that cause and its fix."""

import warnings

import jax
import jax.numpy as jnp
import pytest

from examples.flax_llama import Llama
from maxp_core import GraphError, MaxPError, MaxPWarning
from maxp_jax import MaxPSpec, Rule

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
