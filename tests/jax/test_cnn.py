"""A flax linen CNN: convolution fan-ins, the flatten before the classifier, dynamic steps."""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maxp_core import MaxPWarning
from maxp_jax import DynamicAlignment, LayerInputs, MaxPSpec, Rule, find_maxp_state, scale_by_maxp


class CNN(nn.Module):
    channels: int = 8

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(self.channels, (3, 3), name="stem")(images))
        x = nn.relu(nn.Conv(self.channels, (3, 3), name="conv")(x))
        x = x.reshape(x.shape[0], -1)  # (batch, 8 * 8 * channels)
        return nn.Dense(10, name="head")(x)


IMAGES = jax.random.normal(jax.random.key(7), (2, 8, 8, 3))


class StridedCNN(nn.Module):
    """Strides, uneven padding and a dilated kernel: the patches must follow all three."""

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        pad = ((1, 0), (0, 1))
        x = nn.relu(nn.Conv(8, (3, 3), strides=2, padding=pad, name="stem")(images))
        x = nn.relu(nn.Conv(8, (3, 3), strides=2, padding=pad, kernel_dilation=2, name="conv")(x))
        return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


def rules(head_width=None) -> list[Rule]:
    return [
        Rule("params/stem/.*", "embedding", stacked=False),
        Rule("params/conv/.*", "hidden", stacked=False),
        Rule("params/head/.*", "readout", width=head_width),
    ]


def test_a_convolution_reads_in_channels_times_kernel_as_its_fan_in() -> None:
    model = CNN(channels=16)
    params = model.init(jax.random.key(0), IMAGES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaxPWarning)
        spec = MaxPSpec(params, rules(), apply_fn=model.apply, sample_input=IMAGES)
    conv = spec.layers[1]
    assert (conv.fan_in, conv.width) == (3 * 3 * 16, 16)
    assert [n.name for n in spec.graph.nodes] == ["params/stem", "params/conv", "params/head"]


def test_a_dense_after_a_flatten_is_warned_and_its_rule_width_fixes_it() -> None:
    model = CNN(channels=8)
    params = model.init(jax.random.key(0), IMAGES)
    message = r"params/head/kernel: fan-in 512 = 64 x the 8 outputs of params/conv \(a flatten\?\).*width=8"
    with pytest.warns(MaxPWarning, match=message):
        flat = MaxPSpec(params, rules(), apply_fn=model.apply, sample_input=IMAGES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed = MaxPSpec(params, rules(head_width=8), apply_fn=model.apply, sample_input=IMAGES)
    assert (flat.layers[2].width, fixed.layers[2].width) == (512, 8)
    # Same c, but n^-c over the width that grows: 8^-c, not 512^-c.
    assert float(flat.c[2]) == float(fixed.c[2])
    assert abs(fixed.factors()[2] / flat.factors()[2] - 64 ** (float(fixed.c[2]) + 0.5)) < 1e-9


def test_dynamic_mode_measures_a_convolution_on_its_input_patches() -> None:
    model = StridedCNN()
    params = model.init(jax.random.key(0), IMAGES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MaxPWarning)
        spec = MaxPSpec(params, rules(head_width=8), apply_fn=model.apply, sample_input=IMAGES)
    inputs = LayerInputs(spec, model.apply, params, IMAGES)
    assert inputs.measured == (0, 1, 2)
    _, rows = inputs(params, IMAGES)
    weights = inputs.weight_matrices(params)
    # The patches times the kernel matrix are the convolution flax computes (before its bias).
    conv = params["params"]["conv"]
    hidden = jax.nn.relu(
        nn.Conv(8, (3, 3), strides=2, padding=((1, 0), (0, 1)), name="stem").apply(
            {"params": params["params"]["stem"]}, IMAGES
        )
    )
    expected = (
        nn.Conv(8, (3, 3), strides=2, padding=((1, 0), (0, 1)), kernel_dilation=2).apply(
            {"params": conv}, hidden
        )
        - conv["bias"]
    )
    assert rows[1].shape == (expected.shape[0] * expected.shape[1] * expected.shape[2], 3 * 3 * 8)
    np.testing.assert_allclose(rows[1] @ weights[1].T, expected.reshape(-1, 8), rtol=1e-5, atol=1e-5)

    dyn = DynamicAlignment(model.apply, IMAGES, warmup_steps=1, solve_interval=2)
    tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.05))
    labels = jnp.arange(IMAGES.shape[0]) % 10

    @jax.jit
    def step(p, s):
        def loss(q):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(q, IMAGES), labels).mean()

        updates, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    state = tx.init(params)
    for _ in range(6):
        params, state = step(params, state)
    maxp = find_maxp_state(state)
    assert int(maxp.solves) > 0 and int(maxp.failures) == 0 and int(maxp.missing) == 0
    assert np.all(np.isfinite(maxp.factors)) and not np.allclose(
        maxp.alignment[1], spec.layer_alignment_presets()[1]
    )


def test_a_concatenation_of_the_feeding_layers_is_no_flatten() -> None:
    params = {
        "e": jnp.ones((4, 16)),
        "a": jnp.ones((16, 16)),
        "b": jnp.ones((16, 16)),
        "o": jnp.ones((32, 2)),
    }

    def apply(p, x):
        h = x @ p["e"]
        return jnp.concatenate([jnp.tanh(h @ p["a"]), jnp.tanh(h @ p["b"])], -1) @ p["o"]

    rules = [Rule("e", "embedding"), Rule("a|b", "hidden"), Rule("o", "readout")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = MaxPSpec(params, rules, apply_fn=apply, sample_input=jnp.ones((2, 4)))
    assert spec.layers[-1].width == 32
