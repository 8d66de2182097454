"""bias_rule="constant-input": a maxP layer's biases train at the rate that keeps their contribution's
updates width-independent, the same in both frameworks.

The expectation is a coordinate check (the log-log slope against width of the RMS change of
``multiplier * bias``: 0 under the rule, -1 at the layer's rate) and the formulas worked by hand
(Adam: ``c_bias = -a``; SGD: ``c_bias = c_full - 1``, ``c_full`` for an embedding).
"""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import maxp_jax
from maxp_core import MaxPError
from maxp_torch import Parametrization, Rule

RULES = [Rule("0", "embedding"), Rule("2", "hidden"), Rule("4", "readout")]
JAX_RULES = [
    maxp_jax.Rule("params/Dense_0/.*", "embedding"),
    maxp_jax.Rule("params/Dense_1/.*", "hidden"),
    maxp_jax.Rule("params/Dense_2/.*", "readout"),
]


class MLP(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = fnn.relu(fnn.Dense(256)(x))
        x = fnn.relu(fnn.Dense(256)(x))
        return fnn.Dense(4)(x)


def mlp(width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4)
    )


def bias_slopes(optimizer: str, bias_rule: str, widths=(64, 128, 256, 512)) -> np.ndarray:
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(2))
    changes = []
    for width in widths:
        model = mlp(width)
        lr = 1e-3 if optimizer == "adam" else 1e-2
        param = Parametrization(model, optimizer, rules=RULES, lr_prefactor=lr, seed=0, bias_rule=bias_rule)
        opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(param.param_groups)
        layers = [model[0], model[2], model[4]]
        before = [layer.bias.detach().clone() for layer in layers]
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        scales = [float(m.scale) for _, m in param._ruled.layers]
        deltas = [(layer.bias.detach() - b) * s for layer, b, s in zip(layers, before, scales, strict=True)]
        changes.append([float(d.pow(2).mean().sqrt()) for d in deltas])
    logs = np.log(widths)
    return np.array([np.polyfit(logs, np.log(np.array(changes)[:, k]), 1)[0] for k in range(3)])


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_rule_keeps_the_bias_contribution_width_independent(optimizer) -> None:
    layer = bias_slopes(optimizer, "layer")
    constant = bias_slopes(optimizer, "constant-input")
    assert np.all(np.abs(layer[1:] + 1.0) < 0.15), layer  # hidden and readout biases vanish as 1/n
    assert np.all(np.abs(constant) < 0.15), constant


def test_adam_and_sgd_rates_by_hand_and_both_frameworks_agree() -> None:
    n, lr = 256, 1e-3
    params = MLP().init(jax.random.key(0), jnp.ones((1, 16)))
    for optimizer, expected in (("adam", [n**-0.5, 1.0, n**0.5]), ("sgd", [1.0, float(n), float(n)])):
        param = Parametrization(mlp(n), optimizer, rules=RULES, lr_prefactor=lr, bias_rule="constant-input")
        bias_groups = [g for g in param.param_groups if g["layer_name"].endswith(".bias")]
        assert [g["layer_name"] for g in bias_groups] == ["0.bias", "2.bias", "4.bias"]
        np.testing.assert_allclose([g["lr"] for g in bias_groups], lr * np.array(expected), rtol=1e-12)
        spec = maxp_jax.MaxPSpec(
            params, JAX_RULES, optimizer=optimizer, multipliers="explicit", bias_rule="constant-input"
        )
        np.testing.assert_allclose(spec.vector_factors(), expected, rtol=1e-12)
    # Folded multipliers do not multiply the bias: under Adam its rate is the base rate.
    folded = maxp_jax.MaxPSpec(params, JAX_RULES, bias_rule="constant-input")
    np.testing.assert_allclose(folded.vector_factors(), 1.0)


def test_the_jax_update_scales_biases_by_their_own_factor() -> None:
    params = MLP().init(jax.random.key(0), jnp.ones((1, 16)))
    spec = maxp_jax.MaxPSpec(params, JAX_RULES, multipliers="explicit", bias_rule="constant-input")
    tx = maxp_jax.scale_by_maxp(spec)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params))
    for i, name in enumerate(("Dense_0", "Dense_1", "Dense_2")):
        np.testing.assert_allclose(updates["params"][name]["kernel"], spec.factors()[i], rtol=1e-6)
        np.testing.assert_allclose(updates["params"][name]["bias"], spec.vector_factors()[i], rtol=1e-6)
    assert "biases and gains:" in spec.describe()


def test_an_unknown_bias_rule_is_refused_in_both() -> None:
    with pytest.raises(MaxPError, match="bias_rule"):
        Parametrization(mlp(64), rules=RULES, bias_rule="zero")
    with pytest.raises(MaxPError, match="bias_rule"):
        maxp_jax.MaxPSpec(MLP().init(jax.random.key(0), jnp.ones((1, 16))), JAX_RULES, bias_rule="zero")


def test_a_tied_weight_gives_its_bias_the_rate_of_the_use_that_holds_it() -> None:
    """GPT-style: the readout reuses the embedding table and has a bias; the embedding has none."""

    class LM(nn.Module):
        def __init__(self, tied: bool) -> None:
            super().__init__()
            self.emb, self.hid, self.head = nn.Embedding(40, 128), nn.Linear(128, 128), nn.Linear(128, 40)
            if tied:
                self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(torch.relu(self.hid(self.emb(ids))))

    rules = [Rule("emb", "embedding"), Rule("hid", "hidden"), Rule("head", "readout")]
    ids = torch.randint(0, 40, (4, 8), generator=torch.Generator().manual_seed(0))
    rates = {}
    for tied in (True, False):
        torch.manual_seed(0)
        param = Parametrization(
            LM(tied), rules=rules, lr_prefactor=1e-2, bias_rule="constant-input", sample_input=ids
        )
        rates[tied] = {
            g["layer_name"]: g["lr"] for g in param.param_groups if g["layer_name"].endswith(".bias")
        }
    assert rates[True] == rates[False] == {"hid.bias": 1e-2, "head.bias": pytest.approx(1e-2 * 128**0.5)}
