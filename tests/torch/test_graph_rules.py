"""The LP's rates keep every op's update from growing with width, on a GPT and a ViT.

A coordinate check (widths 64 to 512, two seeds, three AdamW steps) measures each
parametrized op's update after the LP's rates are applied. With the graph rules of
:mod:`maxp_core.formulation` no update grows faster than ``width^0.1``; with the former
rule (products add exponents, scores ``r = r_q + r_k + a``) the same check sees the
output projection's update grow once its input residual binds. ``python -m
benchmarks.graph_rules`` runs the wide version.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmarks.graph_rules import SETUPS, build, growing, summed, update_slopes
from examples.torch_models import GPT
from maxp_core import StabilityLP
from maxp_core.coordcheck import SLOPE_TOLERANCE
from maxp_torch import Parametrization, ParametrizedModule

WIDTHS = [64, 128, 256, 512]
SEEDS = [0, 1]
BY_NAME = {setup.name: setup for setup in SETUPS}
CHECKED = ["gpt full", "gpt o, down bind", "gpt zero v", "gpt zero gate", "vit full", "vit o, down bind"]
CAUGHT = ["gpt o, down bind", "gpt zero v", "vit o, down bind"]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.parametrize("name", CHECKED)
def test_no_update_grows_with_width_under_the_lp_rates(name: str) -> None:
    slopes, _ = update_slopes(BY_NAME[name], "product", WIDTHS, SEEDS)
    assert len(slopes) >= 10
    assert growing(slopes) == {}, slopes
    # Nor does a layer's update vanish: where several c are optimal the one nearest the
    # preset is taken (the scores, a parameter-free product, may shrink: its rule is a bound).
    vanishing = {op: s for op, s in slopes.items() if s < -SLOPE_TOLERANCE and not op.endswith("scores")}
    assert vanishing == {}, slopes


def test_an_override_moves_c_from_the_preset_answer() -> None:
    """Zero v and o measured (0, 0.5, 1): every c_v in [1, 2] with c_o = 2 - c_v is optimal.

    The preset's answer (c_v = c_o = 1) is the anchor, so both stay at 1; anchoring to the
    overridden graph's own first answer, or the "later" rule, gives c_v = 2 and c_o = 0, whose
    v and o updates vanish like 1/width.
    """
    _, param = build(BY_NAME["gpt zero v"], "product", 64)
    c = dict(zip(param.get_layer_names(), param.c.tolist(), strict=True))
    assert c["blocks.0.v"] == pytest.approx(1.0, abs=1e-6)
    assert c["blocks.0.o"] == pytest.approx(1.0, abs=1e-6)
    later = StabilityLP(param.graph, "adam", tie_rule="later").solve().c
    assert (later["blocks.0.v"], later["blocks.0.o"]) == pytest.approx((2.0, 0.0), abs=1e-6)
    assert sum(later.values()) == pytest.approx(sum(c.values()), abs=1e-6)


@pytest.mark.parametrize("name", CAUGHT)
def test_the_former_summed_rule_is_caught(name: str) -> None:
    slopes, _ = update_slopes(BY_NAME[name], "summed", WIDTHS, SEEDS)
    assert "blocks.0.o" in growing(slopes), slopes


@pytest.mark.parametrize("alignment", ["full", "no"])
def test_under_the_presets_the_rules_give_the_same_c(alignment: str) -> None:
    """Without overrides no input residual binds, so the merge rule cannot change any c."""
    _, param = build(BY_NAME["gpt full"].__class__("p", "gpt", alignment=alignment), "product", 128)
    product = StabilityLP(param.graph, "adam").solve().c
    former = StabilityLP(summed(param.graph), "adam").solve().c
    assert product == pytest.approx(former, abs=1e-9)


def test_a_zero_initialised_value_projection_is_a_zero_factor_of_attn_v() -> None:
    ids = torch.randint(0, 32, (2, 8))
    model = GPT(d=32, blocks=1, vocab=32, ctx=8, zero_init=("v",))
    param = Parametrization(model, sample_input=ids)
    assert not model.blocks[0].v.weight.any()
    assert model.blocks[0].o.weight.any()
    products = {n.name: n for n in param.graph.nodes if n.multiplies}
    attn_v = [n for n in products.values() if "blocks.0.v" in n.preds]
    assert [n.zero_inputs for n in attn_v] == [("blocks.0.v",)]
    scores = param.graph.node("blocks.0.scores")
    assert scores.contraction and scores.zero_inputs == ()
    assert param.graph.node("blocks.0.v").zero_init


class _Gated(nn.Module):
    def __init__(self, d: int, gate: str) -> None:
        super().__init__()
        self.emb = ParametrizedModule(nn.Linear(8, d), width_dim=d, layer_type="embedding")
        self.gate = ParametrizedModule(nn.Linear(d, d), width_dim=d, layer_type="hidden", b=math.inf)
        self.up = ParametrizedModule(nn.Linear(d, d), width_dim=d, layer_type="hidden")
        self.out = ParametrizedModule(nn.Linear(d, 4), width_dim=d, layer_type="readout")
        self.act = {"silu": nn.functional.silu, "sigmoid": torch.sigmoid}[gate]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        return self.out(self.act(self.gate(h)) * self.up(h))


@pytest.mark.parametrize(("gate", "zero"), [("silu", ("gate",)), ("sigmoid", ())])
def test_a_gate_is_a_zero_factor_only_where_its_value_is_zero(gate: str, zero: tuple[str, ...]) -> None:
    """silu(0) = 0, so a zero-initialised gate zeroes the product; sigmoid(0) = 1/2 does not."""
    param = Parametrization(_Gated(16, gate), sample_input=torch.randn(3, 8))
    (product,) = [n for n in param.graph.nodes if n.multiplies]
    assert product.zero_inputs == zero


def test_a_zero_sample_says_nothing_about_width() -> None:
    """Every product of a zero sample is zero, yet no layer starts at zero: no zero factor."""
    param = Parametrization(
        GPT(d=16, blocks=1, vocab=32, ctx=8), sample_input=torch.zeros(2, 8, dtype=torch.long)
    )
    assert all(n.zero_inputs == () for n in param.graph.nodes)


def test_a_zero_initialised_layer_is_measured_without_a_warning_about_its_omega() -> None:
    """W0 = 0 leaves omega undefined (0/0), and no term of the LP uses it: neither told nor counted."""
    import warnings

    torch.manual_seed(0)
    ids = torch.randint(0, 32, (4, 8))
    model = GPT(d=32, blocks=1, vocab=32, ctx=8, zero_init=("v",))
    param = Parametrization(model, lr_prefactor=1e-2, sample_input=ids)
    param.capture_initial(ids)
    optimizer = torch.optim.AdamW(param.param_groups)
    with warnings.catch_warnings(record=True) as told:
        warnings.simplefilter("always")
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(ids).reshape(-1, 32), ids.reshape(-1)).backward()
            optimizer.step()
            param.step(ids, optimizer)
    about_v = [str(w.message) for w in told if "'blocks.0.v'" in str(w.message)]
    assert about_v == []
    assert param.solves == 3 and param.failures == 0
    row = param.graph.index("blocks.0.v")
    assert 0.0 <= param.alignment[row][0] <= 1.0  # alpha measured


class _Quotient(nn.Module):
    def __init__(self, d: int, zero_numerator: bool) -> None:
        super().__init__()
        self.zero_numerator = zero_numerator
        self.emb = ParametrizedModule(nn.Linear(8, d), width_dim=d, layer_type="embedding")
        self.zero = ParametrizedModule(nn.Linear(d, d), width_dim=d, layer_type="hidden", b=math.inf)
        self.other = ParametrizedModule(nn.Linear(d, d), width_dim=d, layer_type="hidden")
        self.out = ParametrizedModule(nn.Linear(d, 4), width_dim=d, layer_type="readout")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        zero, other = self.zero(h), self.other(h)
        if self.zero_numerator:
            return self.out(zero / (1 + other.abs()))
        return self.out(other / torch.tanh(zero))  # exactly zero at init, but a denominator


@pytest.mark.parametrize(("zero_numerator", "zero"), [(True, ("zero",)), (False, ())])
def test_a_quotient_multiplies_by_its_numerator_only(zero_numerator: bool, zero: tuple[str, ...]) -> None:
    """As in the JAX tracer: a zero numerator zeroes the quotient, a zero denominator does not."""
    param = Parametrization(_Quotient(16, zero_numerator), sample_input=torch.randn(3, 8))
    (product,) = [n for n in param.graph.nodes if n.multiplies]
    assert product.zero_inputs == zero


def test_a_zero_initialised_layer_that_keeps_nonzero_weights_is_refused() -> None:
    """reinit=False keeps the model's weights: b = inf must then describe them."""
    from maxp_core import MaxPError

    ids = torch.randint(0, 32, (2, 8))
    model = GPT(d=16, blocks=1, vocab=32, ctx=8, zero_init=("v",))
    with pytest.raises(MaxPError, match=r"layer 'blocks\.0\.v' is declared zero-initialised \(b = inf\)"):
        Parametrization(model, sample_input=ids, reinit=False)
    with torch.no_grad():
        model.blocks[0].v.weight.zero_()
    param = Parametrization(model, sample_input=ids, reinit=False)
    assert param.graph.node("blocks.0.v").zero_init
