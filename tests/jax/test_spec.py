"""MaxPSpec: layers from path rules, widths by layout, exponents from the core LP."""

import contextlib

import jax.numpy as jnp
import numpy as np
import pytest

from maxp_core import MaxPError, MaxPWarning, Role, StabilityError, named_parametrization
from maxp_jax import MaxPSpec, Rule
from tests.jax.models import mlp_and_spec


def test_mlp_layers_roles_widths_and_c() -> None:
    _, _params, spec = mlp_and_spec(width=64, depth=4, in_dim=16)
    assert [layer.name for layer in spec.layers] == [f"params/Dense_{i}" for i in range(4)]
    assert [layer.role for layer in spec.layers] == [Role.EMBEDDING, Role.HIDDEN, Role.HIDDEN, Role.READOUT]
    assert [layer.width for layer in spec.layers] == [64, 64, 64, 64]  # embedding: its output size
    assert [layer.fan_in for layer in spec.layers] == [16, 64, 64, 64]
    assert all(layer.extra_paths == (f"{layer.name}/bias",) for layer in spec.layers)
    expected = [layer.c for layer in named_parametrization("mup", 4, "adam", "full")]
    np.testing.assert_allclose(spec.c, expected, atol=1e-9)


def test_natural_order_of_layers() -> None:
    params = {f"Dense_{i}": {"kernel": jnp.zeros((8, 8))} for i in range(12)}
    spec = MaxPSpec(
        params,
        [
            Rule("Dense_0/kernel", "embedding"),
            Rule(r"Dense_([1-9]|10)/kernel", "hidden"),
            Rule("Dense_11/kernel", "readout"),
        ],
    )
    assert [layer.name for layer in spec.layers] == [f"Dense_{i}" for i in range(12)]


@pytest.mark.parametrize(
    ("layout", "shape", "role", "width", "fan_in"),
    [
        ("dense", (3, 3, 16, 32), "hidden", 16, 144),
        ("dense", (3, 3, 16, 32), "embedding", 32, 144),
        ("embedding", (1000, 48), "embedding", 48, 1000),
        ("torch", (32, 16), "hidden", 16, 16),
        ("torch", (32, 16, 3), "readout", 16, 48),
    ],
)
def test_layouts(layout: str, shape, role: str, width: int, fan_in: int) -> None:
    others = {"embedding": "hidden", "hidden": "embedding", "readout": "embedding"}
    params = {"w": jnp.zeros(shape), "v": jnp.zeros((width, width)), "o": jnp.zeros((width, 4))}
    if role == "embedding":
        rules = [Rule("w", role, layout=layout), Rule("o", "readout")]
    elif role == "hidden":
        rules = [Rule("v", others[role]), Rule("w", role, layout=layout), Rule("o", "readout")]
    else:
        rules = [Rule("v", "embedding"), Rule("w", role, layout=layout)]
    ambiguous = layout == "dense" and len(shape) >= 3  # a convolution kernel, or stacked layers?
    with pytest.warns(MaxPWarning, match="stacked=True") if ambiguous else contextlib.nullcontext():
        spec = MaxPSpec(params, rules)
    layer = next(layer for layer in spec.layers if layer.weight_path == "w")
    assert (layer.width, layer.fan_in) == (width, fan_in)


def test_overrides_of_width_a_b_c_and_alignment() -> None:
    params = {"e": jnp.zeros((10, 64)), "h": jnp.zeros((64, 64)), "o": jnp.zeros((64, 3))}
    spec = MaxPSpec(
        params,
        [
            Rule("e", "embedding", width=128),
            Rule("h", "hidden", c=1.5, alignment=(0.6, 0.5, 0.6)),
            Rule("o", "readout", a=1.0, b=0.0),
        ],
    )
    assert spec.layers[0].width == 128
    assert spec.c[1] == pytest.approx(1.5)
    assert (spec.layers[2].a, spec.layers[2].b) == (1.0, 0.0)
    assert spec.graph.node("h").alpha == 0.6


def test_keystr_patterns_match_too() -> None:
    params = {"e": jnp.zeros((10, 64)), "o": jnp.zeros((64, 3))}
    spec = MaxPSpec(params, [Rule(r"\['e'\]", "embedding"), Rule(r"\['o'\]", "readout")])
    assert [layer.weight_path for layer in spec.layers] == ["e", "o"]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([Rule("e", "embedding"), Rule("nothing", "readout")], r"rule 'nothing' matches nothing"),
        ([Rule("e|h", "embedding"), Rule("h|o", "readout")], r"h is matched by two rules: 'e\|h' and 'h\|o'"),
        (lambda: [Rule("e", "embedding"), Rule("o", "output")], r"rule 'o': role must be one of .* 'output'"),
        ([Rule("e", "embedding"), Rule("h", "hidden", b=1.0), Rule("o", "readout")], r"layer 'h' \(hidden\)"),
        (
            [Rule("e", "embedding"), Rule("blk/bias", "readout")],
            r"blk/bias \(shape \(3,\)\).*no single weight",
        ),
        (
            [Rule("e", "embedding"), Rule("flat", "readout")],
            r"flat: cannot read a fan-in from shape \(0, 3\)",
        ),
        (
            lambda: [Rule("e", "embedding"), Rule("o", "readout", layout="nchw")],
            r"rule 'o': layout .* 'nchw'",
        ),
        ([Rule("e(", "embedding")], r"not a regular expression"),
        ([Rule("e", "embedding")], r"at least two layers"),
    ],
)
def test_bad_specs(rules, message: str) -> None:
    params = {
        "e": jnp.zeros((10, 64)),
        "h": jnp.zeros((64, 64)),
        "o": jnp.zeros((64, 3)),
        "blk": {"bias": jnp.zeros(3)},
        "flat": jnp.zeros((0, 3)),
    }
    with pytest.raises((MaxPError, StabilityError), match=message):
        MaxPSpec(params, rules() if callable(rules) else rules)  # a callable: the Rule itself refuses


def test_folded_and_explicit_exponents() -> None:
    _, _, folded = mlp_and_spec(multipliers="folded")
    _, _, explicit = mlp_and_spec(multipliers="explicit")
    for (a1, b1, c1), (a2, b2, c2), layer in zip(
        folded.effective_abc(), explicit.effective_abc(), folded.layers, strict=True
    ):
        assert a1 == 0.0
        assert (b1, c1) == pytest.approx((a2 + b2, c2 + a2))
        assert explicit.multiplier(layer.name) == pytest.approx(layer.width**-layer.a)
    with pytest.raises(MaxPError, match="no maxP layer named 'Dense_9'"):
        explicit.multiplier("Dense_9")
