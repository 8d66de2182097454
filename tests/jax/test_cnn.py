"""A flax linen CNN: convolution fan-ins, the flatten before the classifier, dynamic steps."""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from maxp_core import MaxPWarning
from maxp_jax import MaxPSpec, Rule


class CNN(nn.Module):
    channels: int = 8

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(self.channels, (3, 3), name="stem")(images))
        x = nn.relu(nn.Conv(self.channels, (3, 3), name="conv")(x))
        x = x.reshape(x.shape[0], -1)  # (batch, 8 * 8 * channels)
        return nn.Dense(10, name="head")(x)


IMAGES = jnp.ones((2, 8, 8, 3))


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
