"""A base width in JAX: at ``n = n_base`` the params and the optimizer are the user's own
(``optax.adamw`` at one learning rate); away from it the width exponents are unchanged; and the
numbers are PyTorch's for the same model and base width."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import maxp_jax
from maxp_core import MaxPError

RULES = [
    maxp_jax.Rule("params/Dense_0/.*", "embedding"),
    maxp_jax.Rule("params/Dense_1/.*", "hidden"),
    maxp_jax.Rule("params/Dense_2/.*", "readout"),
]


class MLP(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.width)(x))
        x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(4)(x)


def setup(width: int, base_width=None, multipliers="folded"):
    model, x = MLP(width), jnp.ones((8, 16))
    params = model.init(jax.random.key(0), x)
    spec = maxp_jax.MaxPSpec(params, RULES, base_width=base_width, multipliers=multipliers)
    return model, x, params, spec


@pytest.mark.parametrize("multipliers", ["folded", "explicit"])
def test_at_the_base_width_params_and_updates_are_the_users_own(multipliers) -> None:
    model, x, params, spec = setup(64, base_width=64, multipliers=multipliers)
    assert np.array_equal(spec.factors(), np.ones(3))
    assert [spec.multiplier(layer.name) for layer in spec.layers] == [1.0, 1.0, 1.0]
    same = maxp_jax.abc_init(spec, params)
    assert all(jax.tree.leaves(jax.tree.map(lambda p, q: bool(jnp.array_equal(p, q)), params, same)))
    grads = jax.grad(lambda p: (model.apply(p, x) ** 2).mean())(params)
    tx, reference = maxp_jax.adamw(spec, 3e-3, weight_decay=0.1), optax.adamw(3e-3, weight_decay=0.1)
    ours, _ = tx.update(grads, tx.init(params), params)
    theirs, _ = reference.update(grads, reference.init(params), params)
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-12), ours, theirs)


def test_away_from_the_base_width_the_exponents_are_unchanged() -> None:
    n, n0 = 256, 64
    _, _, params, spec = setup(n, base_width=n0)
    _, _, _, reference = setup(n)
    np.testing.assert_array_equal(spec.c, reference.c)
    effective = [abc[2] for abc in reference.effective_abc()]  # folded c: 0, 1, 1 under muP/Adam
    np.testing.assert_allclose(spec.factors(), [(n / n0) ** -c for c in effective], rtol=1e-12)
    np.testing.assert_allclose(reference.factors(), [n**-c for c in effective], rtol=1e-12)
    # Folded muP by hand: the embedding's b + a = 0 (its own init stays), the hidden layer's 1/2
    # (stays), the readout's b + a = 1 against a standard 1/2: (n/n0)^-1/2 = 1/2.
    scaled = maxp_jax.abc_init(spec, params)
    for layer, factor in zip(("Dense_0", "Dense_1", "Dense_2"), (1.0, 1.0, 0.5), strict=True):
        own, new = params["params"][layer], scaled["params"][layer]
        np.testing.assert_allclose(new["kernel"], own["kernel"] * factor, rtol=1e-6)
        np.testing.assert_array_equal(new["bias"], own["bias"])
    assert "base width 64: model width 256" in spec.describe()


def test_without_a_base_width_there_is_no_init_scale_and_without_a_key_no_draw() -> None:
    _, _, params, spec = setup(64)
    with pytest.raises(MaxPError, match="base width"):
        spec.init_scale()
    with pytest.raises(MaxPError, match="key"):
        maxp_jax.abc_init(spec, params)
    _, _, _, based = setup(64, base_width=32)
    with pytest.raises(MaxPError, match="init_scale"):
        based.init_std()


@pytest.mark.parametrize("bad", [0, -1, float("nan"), True, "64"])
def test_a_base_width_that_is_no_width_is_refused(bad) -> None:
    with pytest.raises(MaxPError, match="base_width"):
        setup(64, base_width=bad)


def test_the_numbers_are_pytorchs() -> None:
    torch = pytest.importorskip("torch")
    from maxp_torch import Parametrization, Rule

    n, n0, lr = 128, 32, 1e-2
    _, _, _, spec = setup(n, base_width=n0, multipliers="explicit")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, n), torch.nn.ReLU(), torch.nn.Linear(n, n), torch.nn.ReLU(), torch.nn.Linear(n, 4)
    )
    param = Parametrization(
        model, rules=[Rule("0", "embedding"), Rule("2", "hidden"), Rule("4", "readout")], lr_prefactor=lr,
        base_width=n0,
    )  # fmt: skip
    np.testing.assert_allclose(param.get_last_lr(), lr * spec.factors(), rtol=1e-12)
    scales = [float(m.scale) for _, m in param._ruled.layers]
    np.testing.assert_allclose(scales, [spec.multiplier(layer.name) for layer in spec.layers], rtol=1e-12)
    torch_init = [param._initial.scale(g) for g in range(3)]
    np.testing.assert_allclose(torch_init, spec.init_scale(), rtol=1e-12)


def test_resample_w0_cannot_redraw_the_users_own_init() -> None:
    model, x, _, spec = setup(64, base_width=32)
    dynamic = maxp_jax.DynamicAlignment(model.apply, x, resample_w0=True, init_key=jax.random.key(0))
    with pytest.raises(MaxPError, match="resample_w0=False"):
        maxp_jax.scale_by_maxp(spec, dynamic)


def test_scanned_torch_layout_weights_are_read_after_their_layer_axis() -> None:
    """(layers, out, in) kernels, as equinox stacks Linear layers for a scan."""
    params = {
        "inp": jnp.ones((32, 16)) / 4,
        "blocks": jnp.ones((3, 32, 32)) / 32,
        "out": jnp.ones((4, 32)) / 32,
    }

    def apply(p, x):
        h, _ = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w.T), None), x @ p["inp"].T, p["blocks"])
        return h @ p["out"].T

    rules = [
        maxp_jax.Rule("inp", "embedding", layout="torch"),
        maxp_jax.Rule("blocks", "hidden", layout="torch", stacked=True),
        maxp_jax.Rule("out", "readout", layout="torch"),
    ]
    spec = maxp_jax.MaxPSpec(params, rules, apply_fn=apply, sample_input=jnp.ones((2, 16)))
    assert [(layer.name, layer.width) for layer in spec.layers][1:4] == [
        (f"blocks[{i}]", 32) for i in range(3)
    ]
