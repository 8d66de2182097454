"""The first-release API (MaxPScheduler and friends) for plain nn.Linear stacks."""

import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from maxp_core import MaxPError, StabilityError, StabilityLP, WSDSchedule, chain, named_parametrization
from maxp_torch import (
    ChainedMaxPScheduler,
    MaxPScheduler,
    Parametrization,
    ParametrizedModule,
    create_param_groups,
    get_linear_layers,
    initialize_abc_weights,
)
from tests.torch.test_parametrization import data


def sequential(width=64, depth=4, in_dim=16, dtype=torch.float32):
    sizes = [in_dim] + [width] * (depth - 1) + [10]
    layers = []
    for i in range(depth):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], dtype=dtype))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def setup(width=64, depth=4, lr=0.05, optimizer_cls=torch.optim.AdamW, **kwargs):
    torch.manual_seed(0)
    model = sequential(width, depth)
    name = kwargs.pop("parametrization", "mup")
    initialize_abc_weights(model, parametrization=name)
    optimizer = optimizer_cls(create_param_groups(model, lr_prefactor=lr, parametrization=name), lr=lr)
    return model, optimizer, MaxPScheduler(optimizer, model, lr, parametrization=name, **kwargs)


def train(model, optimizer, scheduler, steps, x, y):
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step(x)


def test_init_multipliers_and_named_rates() -> None:
    model, optimizer, scheduler = setup(width=128, lr=0.1)
    # Layers with a != 0 (the embedding and the readout under muP) sit in a ScaledLinear.
    assert [type(m).__name__ for m in model[::2]] == ["ScaledLinear", "Linear", "Linear", "ScaledLinear"]
    linears = [layer for _, layer in get_linear_layers(model)]
    for module, layer, a in zip(model[::2], linears, [-0.5, 0.0, 0.0, 0.5], strict=True):
        x = torch.randn(3, layer.in_features)
        expected = nn.functional.linear(x, layer.weight, layer.bias) * 128**-a
        torch.testing.assert_close(module(x), expected)
    expected_c = [layer.c for layer in named_parametrization("mup", 4, "adam", "full")]
    assert scheduler.get_last_lr() == pytest.approx([0.1 * 128**-c for c in expected_c])
    assert scheduler.get_layer_names() == ["0", "2", "4", "6"]
    assert scheduler.n_layers == 4 and scheduler.optimizer_type == "adam"
    assert scheduler.al == [-0.5, 0.0, 0.0, 0.5] and scheduler.bl == [0.5] * 4
    groups = optimizer.param_groups
    assert [g["layer_name"] for g in groups] == ["0", "2", "4", "6", "_other"]
    assert [g["maxp_managed"] for g in groups] == [True] * 4 + [False]
    # Weights in the layer groups, the biases at the base rate in "_other".
    assert all(g["params"] == [layer.weight] for g, layer in zip(groups, linears, strict=False))
    assert groups[-1]["params"] == [layer.bias for layer in linears] and groups[-1]["lr"] == 0.1


def test_matches_the_parametrized_module_path() -> None:
    x, y = data(seed=1)
    model, optimizer, scheduler = setup(solver_warmup_steps=1, solve_interval=2)
    # The same network written with ParametrizedModule, same weights.
    torch.manual_seed(0)
    types = ["embedding", "hidden", "hidden", "readout"]
    twin = nn.Sequential(
        *[
            m
            for i, lin in enumerate(m for m in sequential() if isinstance(m, nn.Linear))
            for m in (
                [ParametrizedModule(lin, width_dim=64, layer_type=types[i])] + ([nn.ReLU()] if i < 3 else [])
            )
        ]
    )
    param = Parametrization(twin, lr_prefactor=0.05, warmup_steps=1, solve_interval=2)
    with torch.no_grad():
        for mine, theirs in zip(
            [layer for _, layer in get_linear_layers(model)],
            [m.inner for m in twin if isinstance(m, ParametrizedModule)],
            strict=True,
        ):
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
    # As in the first release's groups: the layer groups hold the weights, the biases train at the base rate.
    layer_groups = [{**g, "params": [g["params"][0]]} for g in param.param_groups]
    biases = [g["params"][1] for g in param.param_groups]
    twin_opt = torch.optim.AdamW([*layer_groups, {"params": biases, "lr": 0.05}])
    scheduler.capture_initial(x)
    param.capture_initial(x)
    train(model, optimizer, scheduler, 5, x, y)
    for _ in range(5):
        twin_opt.zero_grad()
        nn.functional.cross_entropy(twin(x), y).backward()
        twin_opt.step()
        param.step(x)
        for group, lr in zip(twin_opt.param_groups, param.get_last_lr(), strict=False):
            group["lr"] = lr
    assert scheduler.param.solves == param.solves == 2
    assert scheduler.get_last_lr() == pytest.approx(param.get_last_lr(), rel=1e-9)
    np.testing.assert_allclose(scheduler.get_alignment(), param.get_alignment(), atol=1e-12)


def test_custom_exponents_start_the_rates_and_the_lp_takes_over() -> None:
    x, y = data(seed=5)
    torch.manual_seed(0)
    model = sequential(width=64, depth=4)
    al, bl, cl = [-0.5, 0.0, 0.0, 0.5], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]
    initialize_abc_weights(model, al=al, bl=bl)
    optimizer = torch.optim.AdamW(create_param_groups(model, lr_prefactor=0.1, cl=cl))
    scheduler = MaxPScheduler(optimizer, model, 0.1, al=al, bl=bl, solver_warmup_steps=2)
    scheduler.capture_initial(x)
    # cl only sets where the rates start: kept through the solver warm-up ...
    assert scheduler.get_last_lr() == pytest.approx([0.1] * 4)
    train(model, optimizer, scheduler, 2, x, y)
    assert scheduler.get_last_lr() == pytest.approx([0.1] * 4) and scheduler.get_alignment() == (None,) * 3
    # ... then every c is the LP's for the measured alignments, none pinned to cl.
    train(model, optimizer, scheduler, 1, x, y)
    alpha, omega, u = scheduler.get_alignment()
    graph = chain(4, a=al, b=bl, alignment=list(zip(alpha, omega, u, strict=True)))
    expected = list(StabilityLP(graph, "adam").solve().c.values())
    assert scheduler.get_last_lr() == pytest.approx([0.1 * 64**-c for c in expected], rel=1e-7)
    assert [g["c"] for g in optimizer.param_groups[:4]] == pytest.approx(expected, abs=1e-8)
    bad = sequential(depth=3)
    with pytest.raises(StabilityError, match=r"'2' \(hidden\)"):
        initialize_abc_weights(bad, al=[-0.5, 0.0, 0.5], bl=[0.5, 1.0, 0.5])
    with pytest.raises(MaxPError, match=r"Length of al \(2\) must match number of Linear layers \(3\)"):
        initialize_abc_weights(sequential(depth=3), al=[0.0, 0.0], bl=[0.0, 0.5, 0.5])
    with pytest.raises(MaxPError, match=r"1 nn\.Linear/nn\.Embedding layers"):
        initialize_abc_weights(nn.Sequential(nn.Linear(3, 3)), parametrization="mup")


def test_sgd_is_inferred_from_the_optimizer() -> None:
    _, _, scheduler = setup(optimizer_cls=torch.optim.SGD, lr=0.1)
    expected = StabilityLP(chain(4), "sgd").solve().c
    np.testing.assert_allclose(scheduler.param.c, list(expected.values()), atol=1e-12)


def test_wsd_scales_the_base_rate_and_stops_the_solver() -> None:
    x, y = data(seed=2)
    wsd = {"wsd_warmup_steps": 2, "wsd_stable_steps": 4, "wsd_decay_steps": 4, "wsd_decay_type": "linear"}
    model, optimizer, scheduler = setup(lr=0.05, solver_warmup_steps=0, solve_interval=1, **wsd)
    curve = WSDSchedule(2, 4, 4, "linear")
    assert scheduler.get_last_lr()[0] == 0.0  # warmup starts at min_factor = 0
    scheduler.capture_initial(x)
    solves = []
    for step in range(1, 11):
        train(model, optimizer, scheduler, 1, x, y)
        solves.append(scheduler.param.solves)
        factors = [64**-c for c in scheduler.param.c]
        assert scheduler.get_last_lr() == pytest.approx([0.05 * float(curve(step)) * f for f in factors])
    assert solves == [1, 2, 3, 4, 5, 5, 5, 5, 5, 5]  # decay starts at step 6


def test_chained_with_cosine_keeps_layer_ratios() -> None:
    x, y = data(seed=3)
    model, optimizer, maxp = setup(lr=0.05, solver_warmup_steps=2, solve_interval=2)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    scheduler = ChainedMaxPScheduler(maxp, [cosine])
    scheduler.capture_initial(x)
    for step in range(1, 8):
        train(model, optimizer, scheduler, 1, x, y)
        factors = [64**-c for c in maxp.param.c]
        cos = 0.5 * (1 + math.cos(math.pi * step / 10))
        assert scheduler.get_last_lr() == pytest.approx([0.05 * cos * f for f in factors], rel=1e-9)
    assert maxp.param.solves == 2


def test_scheduler_state_dict_resume() -> None:
    x, y = data(seed=4)
    model, optimizer, scheduler = setup(solver_warmup_steps=1, solve_interval=2, c_ema=0.3)
    scheduler.capture_initial(x)
    train(model, optimizer, scheduler, 3, x, y)
    buffer = io.BytesIO()
    torch.save({"m": model.state_dict(), "o": optimizer.state_dict(), "s": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    ck = torch.load(buffer, weights_only=False)
    model2, optimizer2, scheduler2 = setup(solver_warmup_steps=1, solve_interval=2, c_ema=0.3)
    model2.load_state_dict(ck["m"])
    optimizer2.load_state_dict(ck["o"])
    scheduler2.load_state_dict(ck["s"])
    train(model, optimizer, scheduler, 4, x, y)
    train(model2, optimizer2, scheduler2, 4, x, y)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert scheduler.get_last_lr() == scheduler2.get_last_lr()
