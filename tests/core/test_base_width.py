"""The base width in the core: ratios, the named tables' rates, the LP's rates and the command line.

Expectations are worked by hand from the definitions: rate ``lr * (n / n0)^-c``, multiplier
``(n / n0)^-a``, a standard init scaled by ``(n / n0)^-(b - b_standard)``.
"""

import io
import math

import pytest

from maxp_core import MaxPError, StabilityLP, chain, named_parametrization
from maxp_core.base_width import init_rescale, model_width, width_ratios
from maxp_core.cli import main


def test_one_number_is_the_model_width_and_every_layer_shares_its_ratio() -> None:
    widths = {"emb": 128, "q": 128, "up": 128, "down": 512, "head": 128}
    assert model_width(widths) == 128
    assert width_ratios(widths, 32) == dict.fromkeys(widths, 4.0)
    # Equally common widths (a ResNet's stages): the smallest, its first stage.
    assert model_width({"a": 64, "b": 64, "c": 128, "d": 128}) == 64
    assert width_ratios(widths, None) == {k: float(v) for k, v in widths.items()}
    assert width_ratios({"a": 64, "b": 256}, {"a": 16, "b": 128}) == {"a": 4.0, "b": 2.0}


@pytest.mark.parametrize("bad", [0, -8, math.nan, math.inf, True, "32", None])
def test_a_width_that_is_not_positive_is_named(bad) -> None:
    if bad is None:
        with pytest.raises(MaxPError, match=r"no base width for the layers \['b'\]"):
            width_ratios({"a": 64, "b": 64}, {"a": 32})
        return
    with pytest.raises(MaxPError, match="base_width"):
        width_ratios({"a": 64}, bad)


def test_the_named_table_at_its_base_width_runs_every_layer_at_the_prefactor() -> None:
    for parametrization in ("mup", "sp", "ntk", "mfp"):
        for layer in named_parametrization(parametrization, 4, "adam", "full"):
            assert layer.learning_rate(3e-3, width=256, base_width=256) == 3e-3
            assert layer.multiplier(256, 256) == 1.0
            # The width exponent is the table's: doubling the width scales the rate by 2^-c.
            ratio = layer.learning_rate(1.0, 1024, 256) / layer.learning_rate(1.0, 512, 256)
            assert ratio == pytest.approx(2.0**-layer.c, rel=1e-12)
            assert layer.learning_rate(1.0, 512) == pytest.approx(512.0**-layer.c, rel=1e-12)


def test_a_standard_init_is_rescaled_by_the_excess_of_b_over_the_standard_exponent() -> None:
    emb, hidden, readout = named_parametrization("mup", 3)
    assert emb.init_scale(1024, 256) == pytest.approx(4**-0.5)  # b 1/2 against a fixed fan-in
    assert hidden.init_scale(1024, 256) == 1.0  # muP's hidden init is the standard one
    assert readout.init_scale(1024, 256) == 1.0  # its multiplier 4^-1/2 does the rest
    assert init_rescale(4.0, math.inf, "hidden") == 0.0  # a zero-initialised weight stays zero
    assert init_rescale(4.0, 1.0, "readout") == pytest.approx(0.5)


def test_the_lps_rates_at_and_away_from_the_base_width() -> None:
    solution = StabilityLP(chain(4, alignment="full"), "adam").solve()
    at_base = solution.learning_rates(1e-3, dict.fromkeys(solution.c, 64), base_width=64)
    assert at_base == dict.fromkeys(solution.c, 1e-3)
    wide = solution.learning_rates(1e-3, dict.fromkeys(solution.c, 512), base_width=64)
    assert wide == pytest.approx({k: 1e-3 * 8**-c for k, c in solution.c.items()}, rel=1e-12)
    with pytest.raises(MaxPError, match="missing"):
        solution.learning_rates(1e-3, {"layer0": 64}, base_width=64)


def test_the_command_line_prints_the_rates_at_a_width() -> None:
    out = io.StringIO()
    assert main(["table", "--width", "1024", "--base-width", "256", "--lr", "0.003"], out=out) == 0
    rows = [line.split() for line in out.getvalue().splitlines()[3:]]
    lrs = [float(row[-1]) for row in rows]
    assert lrs == pytest.approx([3e-3 * 4**-c for c in (0.5, 1.0, 1.0, 0.5)])
    multipliers = [float(row[5]) for row in rows]
    assert multipliers == pytest.approx([2.0, 1.0, 1.0, 0.5])
    at_base = io.StringIO()
    assert main(["table", "--width", "256", "--base-width", "256", "--lr", "0.003"], out=at_base) == 0
    assert {float(line.split()[-1]) for line in at_base.getvalue().splitlines()[3:]} == {0.003}
