"""A base width: at ``n = n_base`` the model is the user's own, with one learning rate; away from it
the width exponents are unchanged.

Expectations come from outside the code under test: the unparametrized model (a deep copy made
before maxp touches it), the same Parametrization without a base width (``c`` and the width
exponents), and the formulas of muP's roles worked by hand.
"""

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from maxp_core import MaxPError, MaxPWarning
from maxp_torch import (
    MaxPScheduler,
    Parametrization,
    ParametrizedModule,
    Rule,
    create_param_groups,
    initialize_abc_weights,
)

RULES = [Rule("0", "embedding"), Rule("2", "hidden"), Rule("4", "readout")]
ROLES = ("embedding", "hidden", "readout")


def mlp(width: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4)
    )


def x() -> torch.Tensor:
    return torch.randn(8, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("optimizer_type", ["adam", "sgd"])
def test_at_the_base_width_the_model_and_its_rates_are_the_users_own(optimizer_type) -> None:
    model = mlp(64)
    plain = copy.deepcopy(model)
    param = Parametrization(
        model, optimizer_type, rules=RULES, lr_prefactor=3e-3, base_width=64, sample_input=x()
    )
    assert param.get_last_lr() == [3e-3] * 3
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), plain.parameters(), strict=True))
    assert torch.equal(model(x()), plain(x()))
    assert {group["lr"] for group in param.param_groups} == {3e-3}  # biases ride with their layer


def test_away_from_the_base_width_the_width_exponents_are_unchanged() -> None:
    n, n0, lr = 256, 64, 3e-3
    model = mlp(n)
    plain = copy.deepcopy(model)
    based = Parametrization(model, rules=RULES, lr_prefactor=lr, base_width=n0, sample_input=x())
    reference = Parametrization(mlp(n), rules=RULES, lr_prefactor=lr, sample_input=x())
    assert based.c.tolist() == reference.c.tolist()
    # muP with Adam under full alignment, by hand: c = 1/2, 1, 1/2; a = -1/2, 0, 1/2; b = 1/2.
    assert based.c.tolist() == [0.5, 1.0, 0.5]
    assert based.get_last_lr() == pytest.approx([lr * (n / n0) ** -c for c in (0.5, 1.0, 0.5)], rel=1e-12)
    assert reference.get_last_lr() == pytest.approx([lr * n**-c for c in (0.5, 1.0, 0.5)], rel=1e-12)
    # The user's own draw, its width law corrected: (n/n0)^-(b - b_standard), b_standard 0 for an
    # embedding (fixed fan-in) and 1/2 otherwise; the multipliers are (n/n0)^-a.
    cases = ((0, "embedding", 0.5, 2.0), (2, "hidden", 1.0, 1.0), (4, "readout", 1.0, 0.5))
    for index, role, rescale, multiplier in cases:
        layer, own = model[index], plain[index]
        torch.testing.assert_close(layer.weight, own.weight * rescale, rtol=1e-6, atol=0)
        assert torch.equal(layer.bias, own.bias), role
        probe = torch.ones(1, layer.in_features)
        expected = nn.functional.linear(probe, own.weight * rescale, own.bias) * multiplier
        torch.testing.assert_close(layer(probe), expected, rtol=1e-6, atol=1e-7)


def update_slopes(base_width: int | None, widths=(64, 128, 256, 512), steps: int = 2) -> list[float]:
    """Each layer's output change after a few small Adam steps, fitted against width (log-log slope)."""
    changes = []
    data = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
    target = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(3))
    for width in widths:
        model = mlp(width)
        param = Parametrization(
            model, rules=RULES, lr_prefactor=1e-2, base_width=base_width, sample_input=data
        )
        optimizer = torch.optim.Adam(param.param_groups)
        with torch.no_grad():
            h0 = torch.relu(model[0](data))
            h1 = torch.relu(model[2](h0))
            before = [model[0](data), model[2](h0), model[4](h1)]
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(data), target).backward()
            optimizer.step()
        with torch.no_grad():
            after = [model[0](data), model[2](h0), model[4](h1)]
        changes.append([float((b - a).pow(2).mean().sqrt()) for a, b in zip(before, after, strict=True)])
    logs = torch.log(torch.tensor(widths, dtype=torch.float64))
    slopes = []
    for layer in range(3):
        ys = torch.log(torch.tensor([c[layer] for c in changes], dtype=torch.float64))
        slope = ((logs - logs.mean()) * (ys - ys.mean())).sum() / ((logs - logs.mean()) ** 2).sum()
        slopes.append(float(slope))
    return slopes


def test_the_coordinate_check_is_unchanged_by_a_base_width() -> None:
    """The updates of each layer scale with width as without a base width (muP: flat)."""
    without, with_base = update_slopes(None), update_slopes(64)
    assert with_base == pytest.approx(without, abs=0.1)
    assert all(abs(s) < 0.3 for s in with_base), with_base


def test_parametrized_modules_and_a_mapping_of_base_widths() -> None:
    def wrapped(width: int) -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(
            ParametrizedModule(nn.Linear(16, width), width_dim=width, layer_type="embedding"),
            nn.ReLU(),
            ParametrizedModule(nn.Linear(width, 4 * width), width_dim=width, layer_type="hidden"),
            nn.ReLU(),
            ParametrizedModule(nn.Linear(4 * width, 4), width_dim=4 * width, layer_type="readout"),
        )

    # One number: the model width (the most common layer width), every layer at the same ratio.
    param = Parametrization(wrapped(128), lr_prefactor=1e-2, base_width=32)
    assert param.get_last_lr() == pytest.approx([1e-2 * 4**-c for c in param.c], rel=1e-12)
    assert "model width 128" in param.describe() and "ratio 4" in param.describe()
    # A base width per layer gives each its own ratio.
    mapped = Parametrization(wrapped(128), lr_prefactor=1e-2, base_width={"0": 32, "2": 32, "4": 512})
    assert mapped.get_last_lr()[2] == pytest.approx(1e-2 * (512 / 512) ** -mapped.c[2])
    with pytest.raises(MaxPError, match=r"no base width for the layers \['4'\]"):
        Parametrization(wrapped(128), base_width={"0": 32, "2": 32})


@pytest.mark.parametrize("bad", [0, -64, math.nan, math.inf, True, "64"])
def test_a_base_width_that_is_no_width_is_refused(bad) -> None:
    with pytest.raises(MaxPError, match="base_width"):
        Parametrization(mlp(64), rules=RULES, base_width=bad)


def test_resample_w0_cannot_redraw_the_users_own_init() -> None:
    with pytest.raises(MaxPError, match="resample_w0=False"):
        Parametrization(mlp(64), rules=RULES, base_width=64, resample_w0=True)


def test_the_first_release_functions_take_the_base_width() -> None:
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    plain = copy.deepcopy(model)
    initialize_abc_weights(model, parametrization="mup", base_width=64)
    assert torch.equal(model(x()), plain(x()))
    groups = create_param_groups(model, 3e-3, parametrization="mup", base_width=64)
    assert [g["lr"] for g in groups] == [3e-3] * 4  # three layers and "_other"
    optimizer = torch.optim.AdamW(groups)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scheduler = MaxPScheduler(optimizer, model, 3e-3, parametrization="mup", base_width=64)
    assert [str(w.message) for w in caught] == []  # no missing-multiplier or other-prefactor warning
    assert scheduler.get_last_lr() == [3e-3] * 3


def gpt2(width: int) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_embd=width, n_layer=2, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


GPT2_RULES = [
    Rule(r"transformer\.(wte|wpe)", "embedding"),
    Rule(r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)", "hidden"),
    Rule("lm_head", "readout"),
    Rule(r"transformer\.h\.\d+\.attn", "attention"),
]


def test_gpt2_at_its_base_width_keeps_its_forward_and_its_attention_scale() -> None:
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    model = gpt2(32)
    plain = copy.deepcopy(model)
    param = Parametrization(
        model, rules=GPT2_RULES, lr_prefactor=1e-3, base_width=32, sample_input={"input_ids": ids}
    )
    torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-6)
    assert set(param.get_last_lr()) == {1e-3}
    # Away from it, the scores keep muP's a = 1 (read from the rule, not from the scale) and the
    # LP gives the c it gives without a base width.
    wide = Parametrization(gpt2(64), rules=GPT2_RULES, base_width=32, sample_input={"input_ids": ids})
    reference = Parametrization(gpt2(64), rules=GPT2_RULES, sample_input={"input_ids": ids})
    assert wide.c.tolist() == reference.c.tolist()
    scores = [node for node in wide.graph.nodes if node.name.endswith(".scores")]
    assert scores and all(node.a == 1.0 for node in scores)


def test_the_attention_scale_warning_gives_the_rate_a_base_width_gives() -> None:
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    unscoped = GPT2_RULES[:-1]  # the scores keep 1/sqrt(d): the LP slows what feeds them
    with pytest.warns(MaxPWarning, match=r"attention scores") as caught:
        param = Parametrization(
            gpt2(128), rules=unscoped, lr_prefactor=1e-3, base_width=32, sample_input={"input_ids": ids}
        )
    message = next(str(w.message) for w in caught if "attention scores" in str(w.message))
    c = float(message.split(" gets c = ")[1].split()[0])
    assert "(n / n_base)^-c" in message
    assert f"lr {1e-3 * 4**-c:.2g} at lr_prefactor 0.001" in message  # 4 = 128 / 32, not 128
    assert param.base_width == 32


def test_a_second_parametrization_of_the_same_model_does_not_scale_twice() -> None:
    model = mlp(256)
    plain = copy.deepcopy(model)
    Parametrization(model, rules=RULES, base_width=64)
    once = [p.detach().clone() for p in model.parameters()]
    Parametrization(model, rules=RULES, base_width=64)  # e.g. built again after a failed try
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), once, strict=True))
    torch.testing.assert_close(model[0].weight, plain[0].weight * 0.5, rtol=1e-6, atol=0)
    Parametrization(model, rules=RULES)  # maxP's own draw, then a base width again: from that draw
    drawn = model[0].weight.detach().clone()
    Parametrization(model, rules=RULES, base_width=64)
    torch.testing.assert_close(model[0].weight, drawn * 0.5, rtol=1e-6, atol=0)
