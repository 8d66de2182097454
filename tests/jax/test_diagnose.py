"""JAX coordinate check: a right maxP MLP passes, a global learning rate is flagged."""

import jax
import jax.numpy as jnp
import optax

import maxp_jax
from maxp_core.coordcheck import loglog_slope
from tests.jax.models import MLP, mlp_rules

WIDTHS = [64, 1024]  # 16x apart; a width between them moves no slope by more than 0.01


def make(width: int, wrong: bool = False):
    model = MLP(width, 3, out=4)
    params = model.init(jax.random.key(0), jnp.ones((1, 8)))
    spec = maxp_jax.MaxPSpec(params, mlp_rules(3))
    params = maxp_jax.abc_init(spec, params, jax.random.key(1))
    tx = optax.adam(1e-2) if wrong else maxp_jax.adamw(spec, 1e-2)
    return model.apply, params, spec, tx


def test_coord_check_flags_a_global_rate() -> None:
    x = jax.random.normal(jax.random.key(2), (16, 8))
    ops, affected, stats = maxp_jax.coord_check(make, lambda w: x, WIDTHS)
    assert ops[-1] == "output" and affected == []
    _, affected, stats = maxp_jax.coord_check(lambda w: make(w, wrong=True), lambda w: x, WIDTHS)
    hidden_out = "input of params/Dense_2"  # what the hidden layer produced
    assert hidden_out in affected
    assert loglog_slope(WIDTHS, stats[hidden_out]["update"]) > 0.3
