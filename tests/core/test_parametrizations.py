"""Named parametrizations: closed forms against the LP and against published values."""

import itertools

import pytest

from maxp_core import (
    PARAMETRIZATIONS,
    MaxPError,
    Role,
    StabilityLP,
    chain,
    default_ab,
    named_chain,
    named_parametrization,
)
from tests.core import reference

COMBOS = list(itertools.product(PARAMETRIZATIONS, ("adam", "sgd"), ("full", "no")))


@pytest.mark.parametrize(("param", "optimizer", "alignment"), COMBOS)
@pytest.mark.parametrize("num_layers", [2, 3, 4, 5, 8, 16])
def test_table_equals_lp(param: str, optimizer: str, alignment: str, num_layers: int) -> None:
    table = named_parametrization(param, num_layers, optimizer, alignment)
    sol = StabilityLP(named_chain(param, num_layers, alignment), optimizer).solve()
    assert [layer.c for layer in table] == pytest.approx(list(sol.c.values()), abs=1e-7)
    assert [layer.role for layer in table] == [Role.EMBEDDING] + [Role.HIDDEN] * (num_layers - 2) + [
        Role.READOUT
    ]


def test_mup_adam_full_four_layers_matches_the_published_example() -> None:
    layers = named_parametrization("mup", 4, "adam", "full")
    assert [layer.a for layer in layers] == [-0.5, 0.0, 0.0, 0.5]
    assert [layer.b for layer in layers] == [0.5] * 4
    assert [layer.c for layer in layers] == [0.5, 1.0, 1.0, 0.5]


def test_published_mup_defaults_per_role() -> None:
    assert default_ab("mup", "embedding") == (-0.5, 0.5)
    assert default_ab("mup", "hidden") == (0.0, 0.5)
    assert default_ab("mup", "readout") == (0.5, 0.5)


@pytest.mark.parametrize(("param", "optimizer", "alignment"), COMBOS)
def test_every_layer_sits_at_its_stability_limit(param: str, optimizer: str, alignment: str) -> None:
    """Hand check of the closed forms: with the table's c every r >= 0, and lowering any
    single c by 1e-3 makes some node unstable (DESIGN's equations, evaluated independently)."""
    graph = named_chain(param, 6, alignment)
    c = {layer.name: layer.c for layer in named_parametrization(param, 6, optimizer, alignment)}
    r, _ = reference.exact_residuals(graph, optimizer, c)
    assert min(r.values()) >= -1e-12
    for name in c:
        r_low, _ = reference.exact_residuals(graph, optimizer, dict(c, **{name: c[name] - 1e-3}))
        assert min(r_low.values()) < 0, name


@pytest.mark.parametrize("alignment", ["full", "no"])
@pytest.mark.parametrize("param", PARAMETRIZATIONS)
def test_two_layer_sgd_ties_are_broken_toward_the_readout(param: str, alignment: str) -> None:
    """With two layers under SGD every c_L in [alpha - 2 a_L, b_L - a_L] is optimal (a
    nonempty range for muP and MFP without alignment); the tie rule gives the later
    layer the larger learning rate, the smallest c_L."""
    table = named_parametrization(param, 2, "sgd", alignment)
    alpha = {"full": 1.0, "no": 0.5}[alignment]
    a_out, b_out = default_ab(param, "readout")
    low, high = alpha - 2 * a_out, b_out - a_out
    assert table[1].c == pytest.approx(low)
    if high > low:
        graph = named_chain(param, 2, alignment)
        g = min(a_out + b_out, 2 * a_out + high)
        other = {"layer0": -g - 2 * table[0].a, "layer1": high}
        r, _ = reference.exact_residuals(graph, "sgd", other)
        assert min(r.values()) >= -1e-12
        assert sum(other.values()) == pytest.approx(sum(layer.c for layer in table))
        assert other["layer1"] != pytest.approx(table[1].c)


def test_bad_names() -> None:
    with pytest.raises(MaxPError, match="unknown parametrization 'mu-p'"):
        named_parametrization("mu-p", 4)
    with pytest.raises(MaxPError, match="at least 2 layers"):
        named_parametrization("mup", 1)
    with pytest.raises(MaxPError, match="unknown alignment preset 'half'"):
        named_parametrization("mup", 4, alignment="half")


def test_default_chain_is_mup() -> None:
    assert [n.a for n in chain(4).nodes] == [layer.a for layer in named_parametrization("mup", 4)]
