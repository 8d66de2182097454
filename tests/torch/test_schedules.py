"""Torch schedules on top of maxP: every layer gets the schedule's factor times its maxP rate.

The expectation is independent of maxp's own bookkeeping: the factor is what torch's scheduler
gives a plain one-group optimizer at lr 1, and maxP's rate is ``lr_prefactor * fan_in^-c`` from
the ``c`` the optimizer's group holds at that step (it moves: the LP re-solves during the run).
"""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as torch_schedulers

from maxp_core import MaxPError
from maxp_torch import (
    ChainedMaxPScheduler,
    MaxPScheduler,
    Parametrization,
    ParametrizedModule,
    create_param_groups,
    initialize_abc_weights,
)

STEPS = 14
PREFACTOR = 0.05


def cosine_with_warmup(optimizer):
    transformers = pytest.importorskip("transformers")
    return [transformers.get_cosine_schedule_with_warmup(optimizer, 3, STEPS)]


SCHEDULES = {
    "LambdaLR": lambda opt: [torch_schedulers.LambdaLR(opt, lambda t: 1.0 / (1 + t))],
    "LinearLR": lambda opt: [torch_schedulers.LinearLR(opt, start_factor=0.1, total_iters=5)],
    "CosineAnnealingLR": lambda opt: [torch_schedulers.CosineAnnealingLR(opt, T_max=STEPS)],
    "LinearLR and CosineAnnealingLR": lambda opt: [
        torch_schedulers.LinearLR(opt, start_factor=0.2, total_iters=4),
        torch_schedulers.CosineAnnealingLR(opt, T_max=STEPS),
    ],
    "SequentialLR": lambda opt: [
        torch_schedulers.SequentialLR(
            opt,
            [
                torch_schedulers.LinearLR(opt, start_factor=0.1, total_iters=4),
                torch_schedulers.CosineAnnealingLR(opt, T_max=STEPS - 4),
            ],
            milestones=[4],
        )
    ],
    "OneCycleLR": lambda opt: [torch_schedulers.OneCycleLR(opt, max_lr=0.3, total_steps=STEPS + 1)],
    "get_cosine_schedule_with_warmup": cosine_with_warmup,
}


def reference_factors(make_schedulers) -> list[float]:
    """What torch's schedulers give a plain single-group optimizer at lr 1, before each step."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    made = make_schedulers(optimizer)
    if isinstance(made[0], torch_schedulers.OneCycleLR):  # its max_lr is the plain optimizer's lr
        made = [torch_schedulers.OneCycleLR(optimizer, max_lr=1.0, total_steps=STEPS + 1)]
    factors = [optimizer.param_groups[0]["lr"]]
    for _ in range(STEPS):
        optimizer.step()
        for s in made:
            s.step()
        factors.append(optimizer.param_groups[0]["lr"])
    return factors


def mlp(width: int = 32) -> nn.Module:
    return nn.Sequential(
        ParametrizedModule(nn.Linear(6, width), width_dim=width, layer_type="embedding"),
        nn.Tanh(),
        ParametrizedModule(nn.Linear(width, width), width_dim=width, layer_type="hidden"),
        nn.Tanh(),
        ParametrizedModule(nn.Linear(width, 3), width_dim=width, layer_type="readout"),
    )


def dynamic_param(model: nn.Module, **kwargs) -> Parametrization:
    kwargs = {"warmup_steps": 2, "solve_interval": 3, "seed": 0, **kwargs}
    return Parametrization(model, lr_prefactor=PREFACTOR, **kwargs)


def train_steps(model, optimizer, step, steps: int = STEPS, on_step=None) -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), torch.randint(0, 3, (16,), generator=gen)).backward()
        optimizer.step()
        step()
        if on_step is not None:
            on_step()


def solves_in(param: Parametrization) -> int:
    return sum(param.schedule.should_solve(t) for t in range(1, param.step_count + 1))


def expected_rates(optimizer, factor: float, prefactor: float = PREFACTOR) -> list[float]:
    """``factor * prefactor * fan_in^-c`` per layer group; the ``"_other"`` group: ``factor * prefactor``."""
    return [
        factor * prefactor * (g["fan_in"] ** -g["c"] if "c" in g else 1.0) for g in optimizer.param_groups
    ]


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_each_torch_schedule_multiplies_the_dynamic_maxp_rates(name) -> None:
    factors = reference_factors(SCHEDULES[name])
    model = mlp()
    param = dynamic_param(model)
    optimizer = torch.optim.AdamW(param.param_groups)
    scheduler = param.lr_scheduler(optimizer, *SCHEDULES[name](optimizer))
    param.capture_initial(torch.randn(16, 6, generator=torch.Generator().manual_seed(0)))
    seen = [[g["lr"] for g in optimizer.param_groups]]
    wanted = [expected_rates(optimizer, factors[0])]
    exponents = [[g["c"] for g in optimizer.param_groups[:3]]]

    def record() -> None:
        seen.append([g["lr"] for g in optimizer.param_groups])
        wanted.append(expected_rates(optimizer, factors[len(wanted)]))
        exponents.append([g["c"] for g in optimizer.param_groups[:3]])

    train_steps(model, optimizer, scheduler.step, on_step=record)
    np.testing.assert_allclose(seen, wanted, rtol=1e-12)
    assert param.solves == solves_in(param) >= 3
    assert len({tuple(c) for c in exponents}) > 1, "the re-solves never moved c: nothing was tested"
    assert scheduler.get_last_lr() == [g["lr"] for g in optimizer.param_groups[:3]]
    assert scheduler.last_epoch == param.step_count == STEPS


def test_a_maxp_scheduler_under_a_chain_keeps_the_rule_through_re_solves() -> None:
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))
    initialize_abc_weights(model, parametrization="mup", seed=0)
    optimizer = torch.optim.AdamW(create_param_groups(model, lr_prefactor=PREFACTOR, parametrization="mup"))
    maxp = MaxPScheduler(
        optimizer, model, PREFACTOR, parametrization="mup", solver_warmup_steps=2, solve_interval=3
    )
    make = SCHEDULES["SequentialLR"]
    factors = reference_factors(make)
    chained = ChainedMaxPScheduler(maxp, make(optimizer))
    chained.capture_initial(torch.randn(16, 6, generator=torch.Generator().manual_seed(0)))
    seen, wanted = [], []

    def record() -> None:
        seen.append([g["lr"] for g in optimizer.param_groups[:3]])
        wanted.append(expected_rates(optimizer, factors[len(seen)])[:3])

    train_steps(model, optimizer, chained.step, on_step=record)
    np.testing.assert_allclose(seen, wanted, rtol=1e-12)
    assert maxp.param.solves == solves_in(maxp.param) >= 3
    assert maxp.last_epoch == chained.last_epoch == STEPS


def test_the_chain_resumes_exactly() -> None:
    def build():
        model = mlp()
        param = dynamic_param(model)
        optimizer = torch.optim.AdamW(param.param_groups)
        scheduler = param.lr_scheduler(optimizer, *SCHEDULES["SequentialLR"](optimizer))
        param.capture_initial(torch.randn(16, 6, generator=torch.Generator().manual_seed(0)))
        return model, param, optimizer, scheduler

    model, param, optimizer, scheduler = build()
    train_steps(model, optimizer, scheduler.step)
    straight = [g["lr"] for g in optimizer.param_groups]
    straight_c = param.c.copy()

    model, _, optimizer, scheduler = build()
    train_steps(model, optimizer, scheduler.step, steps=6)
    saved = {
        "model": model.state_dict(),
        "opt": optimizer.state_dict(),
        "sched": scheduler.state_dict(),
    }
    model, param, optimizer, scheduler = build()
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["opt"])
    scheduler.load_state_dict(saved["sched"])
    gen_skip = torch.Generator().manual_seed(3)
    for _ in range(6):  # the batches the first six steps drew
        torch.randn(16, 6, generator=gen_skip), torch.randint(0, 3, (16,), generator=gen_skip)
    steps_left = STEPS - 6
    for _ in range(steps_left):
        x = torch.randn(16, 6, generator=gen_skip)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), torch.randint(0, 3, (16,), generator=gen_skip)).backward()
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == straight
    np.testing.assert_array_equal(param.c, straight_c)
    assert scheduler.last_epoch == STEPS


# --- what cannot compose is refused -----------------------------------------------------------


def stepped_alone_setup():
    model = mlp()
    param = dynamic_param(model)
    optimizer = torch.optim.AdamW(param.param_groups)
    cosine = torch_schedulers.CosineAnnealingLR(optimizer, T_max=STEPS)
    param.capture_initial(torch.randn(16, 6))
    return model, param, optimizer, cosine


def test_a_scheduler_stepped_after_maxp_on_the_same_optimizer_is_refused() -> None:
    model, param, optimizer, cosine = stepped_alone_setup()

    def both() -> None:
        param.step(None, optimizer)
        cosine.step()

    with pytest.raises(MaxPError, match=r"lr = .*but maxP last set.*ChainedMaxPScheduler"):
        train_steps(model, optimizer, both, steps=3)


def test_a_scheduler_stepped_before_maxp_on_the_same_optimizer_is_refused() -> None:
    model, param, optimizer, cosine = stepped_alone_setup()

    def both() -> None:
        cosine.step()
        param.step(None, optimizer)

    with pytest.raises(MaxPError, match=r"group 0 \('0'\).*something else writes these rates"):
        train_steps(model, optimizer, both, steps=1)


def test_a_scheduler_that_changed_the_rates_at_construction_is_refused_at_the_first_step() -> None:
    model = mlp()
    param = dynamic_param(model)
    optimizer = torch.optim.AdamW(param.param_groups)
    torch_schedulers.LinearLR(optimizer, start_factor=0.1, total_iters=4)  # sets lr to a tenth
    param.capture_initial(torch.randn(16, 6))
    with pytest.raises(MaxPError, match=r"param\.lr_scheduler"):
        train_steps(model, optimizer, lambda: param.step(None, optimizer), steps=1)


def test_a_maxp_scheduler_next_to_a_scheduler_stepped_alone_is_refused() -> None:
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))
    initialize_abc_weights(model, parametrization="mup", seed=0)
    optimizer = torch.optim.SGD(create_param_groups(model, lr_prefactor=PREFACTOR, parametrization="mup"))
    maxp = MaxPScheduler(optimizer, model, PREFACTOR, parametrization="mup")
    cosine = torch_schedulers.CosineAnnealingLR(optimizer, T_max=STEPS)
    maxp.capture_initial(torch.randn(16, 6))

    def both() -> None:
        cosine.step()
        maxp.step()

    with pytest.raises(MaxPError, match="something else writes these rates"):
        train_steps(model, optimizer, both, steps=1)


def test_a_hand_edit_of_a_rate_is_refused() -> None:
    model, param, optimizer, _ = stepped_alone_setup()
    optimizer.param_groups[1]["lr"] *= 0.5
    with pytest.raises(MaxPError, match=r"group 1 \('2'\)"):
        train_steps(model, optimizer, lambda: param.step(None, optimizer), steps=1)


def test_once_chained_only_the_chain_steps() -> None:
    model = mlp()
    param = dynamic_param(model)
    optimizer = torch.optim.AdamW(param.param_groups)
    scheduler = param.lr_scheduler(optimizer)
    with pytest.raises(MaxPError, match="stepped by its ChainedMaxPScheduler"):
        param.step(None, optimizer)
    with pytest.raises(MaxPError, match="already stepped"):
        param.lr_scheduler(optimizer)
    assert scheduler.get_last_lr() == pytest.approx(param.get_last_lr(), rel=1e-15)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda opt: torch_schedulers.CyclicLR(opt, base_lr=0.01, max_lr=0.1), "absolute rates"),
        (lambda opt: torch_schedulers.ReduceLROnPlateau(opt), "ReduceLROnPlateau"),
        (lambda opt: torch_schedulers.LinearLR(torch.optim.SGD(nn.Linear(2, 2).parameters())), "different"),
    ],
)
def test_schedulers_that_cannot_compose_are_refused_by_name(make, match) -> None:
    param = dynamic_param(mlp(), optimizer_type="sgd")
    optimizer = torch.optim.SGD(param.param_groups, momentum=0.9)
    with pytest.raises(MaxPError, match=match):
        ChainedMaxPScheduler(param, [make(optimizer)], optimizer=optimizer)


# --- one source of truth ----------------------------------------------------------------------


def test_param_step_without_the_optimizer_writes_the_one_that_steps_even_after_a_resume() -> None:
    """``optimizer.load_state_dict`` makes new group dicts: ``param.param_groups`` no longer are them."""
    model = mlp()
    param = dynamic_param(model, warmup_steps=1, solve_interval=1)
    optimizer = torch.optim.AdamW(param.param_groups)
    optimizer.load_state_dict(optimizer.state_dict())
    assert optimizer.param_groups[0] is not param.param_groups[0]
    param.capture_initial(torch.randn(16, 6))
    before = [g["lr"] for g in optimizer.param_groups]
    train_steps(model, optimizer, param.step, steps=4)  # as a trainer given (optimizer, param) calls it
    rates = [g["lr"] for g in optimizer.param_groups]
    assert rates[:3] == param.get_last_lr()
    assert rates != before
    np.testing.assert_allclose(rates, expected_rates(optimizer, 1.0), rtol=1e-12)


def test_optimizer_wrappers_are_seen_through() -> None:
    from maxp_torch import optimizer_kind

    class Wrapper(torch.optim.Optimizer):  # as accelerate's AcceleratedOptimizer holds one
        def __init__(self, optimizer):
            self.optimizer = optimizer

        @property
        def param_groups(self):
            return self.optimizer.param_groups

    model = mlp()
    param = dynamic_param(model)
    wrapped = Wrapper(torch.optim.SGD(param.param_groups))
    assert optimizer_kind(wrapped) == "sgd"
    with pytest.raises(MaxPError, match=r"optimizer is SGD \(sgd-like\); pass optimizer_type='sgd'"):
        param.step(None, wrapped)


def test_the_factor_reads_as_torch_would_for_one_group_at_lr_1() -> None:
    """A warm-up from 0.1 over 5 steps then flat: the first step's factor is 0.28."""
    factors = reference_factors(SCHEDULES["LinearLR"])
    assert factors[:3] == pytest.approx([0.1, 0.28, 0.46])
    assert factors[-1] == pytest.approx(1.0)
    assert math.isclose(reference_factors(SCHEDULES["CosineAnnealingLR"])[-1], 0.0, abs_tol=1e-12)


def test_something_that_is_no_scheduler_is_refused_by_position() -> None:
    param = dynamic_param(mlp())
    optimizer = torch.optim.AdamW(param.param_groups)
    with pytest.raises(MaxPError, match=r"the entry at index 1 \(float\) is not a learning-rate scheduler"):
        param.lr_scheduler(optimizer, torch_schedulers.LinearLR(optimizer), 0.5)
