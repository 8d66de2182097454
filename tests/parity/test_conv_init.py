"""A convolution's initial weights count its whole fan-in (channels x window), the same in both
frameworks; activations at initialisation then do not grow through depth, and an init that
would make them grow is named in a warning."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import maxp_jax
from maxp_core import MaxPWarning
from maxp_torch import Parametrization, Rule

DEPTH, CHANNELS = 6, 32


def torch_cnn() -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(3, CHANNELS, 3, padding=1), nn.ReLU()]
    for _ in range(DEPTH - 1):
        layers += [nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(CHANNELS, 10))


TORCH_RULES = [
    Rule("0", "embedding"),
    Rule("|".join(str(2 * i) for i in range(1, DEPTH)), "hidden"),
    Rule(str(2 * DEPTH + 2), "readout"),
]


class FlaxCNN(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        for _ in range(DEPTH):
            x = fnn.relu(fnn.Conv(CHANNELS, (3, 3))(x))
        return fnn.Dense(10)(x.mean((1, 2)))


JAX_RULES = [
    maxp_jax.Rule("params/Conv_0/.*", "embedding", stacked=False),
    maxp_jax.Rule(r"params/Conv_[1-9]/.*", "hidden", stacked=False),
    maxp_jax.Rule("params/Dense_0/.*", "readout"),
]


def conv_rms(model: nn.Sequential, x: torch.Tensor) -> list[float]:
    out = []
    with torch.no_grad():
        for layer in model:
            x = layer(x)
            if isinstance(layer, nn.Conv2d):
                out.append(float(x.pow(2).mean().sqrt()))
    return out


def test_activations_do_not_grow_through_depth_at_init() -> None:
    torch.manual_seed(0)
    model = torch_cnn()
    Parametrization(model, rules=TORCH_RULES)
    rms = conv_rms(model, torch.randn(8, 3, 16, 16))
    # A standard (1/fan_in) init with ReLU halves the mean square per layer: the RMS shrinks by
    # about 1/sqrt(2) each layer. Counting only the channels, it grew by sqrt(9/2) each layer.
    ratios = np.array(rms[2:]) / np.array(rms[1:-1])
    assert np.all(ratios < 1.0), rms
    assert np.all(ratios > 0.5), rms


def test_both_frameworks_draw_the_same_standard_deviations() -> None:
    params = FlaxCNN().init(jax.random.key(0), jnp.ones((1, 16, 16, 3)))
    spec = maxp_jax.MaxPSpec(params, JAX_RULES, multipliers="explicit")
    param = Parametrization(torch_cnn(), rules=TORCH_RULES)
    torch_std = [param._init_std(g) for g in range(DEPTH + 1)]
    np.testing.assert_allclose(spec.init_std(), torch_std, rtol=1e-12)
    # Hidden 3x3 layers by hand: 1/sqrt(channels * 9); the stem: n^-b / sqrt(9); the readout n^-b.
    np.testing.assert_allclose(torch_std[1:DEPTH], (CHANNELS * 9) ** -0.5, rtol=1e-12)
    np.testing.assert_allclose(torch_std[0], CHANNELS**-0.5 / 3, rtol=1e-12)


def test_an_init_that_grows_activations_is_named() -> None:
    with pytest.warns(MaxPWarning, match=r"hidden layers \['2 \(gain 4\)'"):
        Parametrization(torch_cnn(), rules=TORCH_RULES, std_prefactor=2.0)
    params = FlaxCNN().init(jax.random.key(0), jnp.ones((1, 16, 16, 3)))
    spec = maxp_jax.MaxPSpec(params, JAX_RULES)
    with pytest.warns(MaxPWarning, match=r"hidden layers \['params/Conv_1 \(gain 4\)'"):
        maxp_jax.abc_init(spec, params, jax.random.key(1), std_prefactor=2.0)
