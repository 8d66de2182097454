"""A JAX model's attention scores, traced as plain products, are named in a warning."""

import warnings

import jax
import jax.numpy as jnp
import pytest

from maxp_core import MaxPWarning
from maxp_jax import MaxPSpec, Rule, activation

D = 16


def params():
    return {name: jnp.ones((8, D)) / 8 for name in "qkv"} | {"o": jnp.ones((D, 4)) / D}


RULES = [Rule("q|k|v", "embedding"), Rule("o", "readout")]
X = jnp.ones((2, 5, 8))


def fused(p, x):
    q, k, v = (x @ p[name] for name in "qkv")
    out = jax.nn.dot_product_attention(q[:, :, None, :], k[:, :, None, :], v[:, :, None, :])[:, :, 0, :]
    return out @ p["o"]


def marked(p, x):
    q, k, v = (x @ p[name] for name in "qkv")
    scores = activation("scores", lambda a, b: a @ b.swapaxes(-1, -2) / D, a=1.0)(q, k)
    return (jax.nn.softmax(scores, -1) @ v) @ p["o"]


def test_fused_attention_is_named_as_unseen_scores() -> None:
    with pytest.warns(MaxPWarning, match=r"two activations in a matrix product at \['mul1'\]"):
        spec = MaxPSpec(params(), RULES, apply_fn=fused, sample_input=X)
    assert spec.graph.node("mul1").preds == ("q", "k")


def test_scores_marked_as_an_activation_are_a_contraction_and_not_warned() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaxPWarning)
        spec = MaxPSpec(params(), RULES, apply_fn=marked, sample_input=X)
    assert spec.graph.node("scores").contraction


def test_scores_marked_at_one_over_sqrt_d_warn_that_they_slow_the_layers_upstream() -> None:
    def half(p, x):
        q, k, v = (x @ p[name] for name in "qkv")
        scores = activation("scores", lambda a, b: a @ b.swapaxes(-1, -2) / D**0.5, a=0.5)(q, k)
        return (jax.nn.softmax(scores, -1) @ v) @ p["o"]

    with pytest.warns(MaxPWarning, match=r"attention scores 'scores' are scaled by n\^-0.5 .* gets c = "):
        MaxPSpec(params(), RULES, apply_fn=half, sample_input=X)
