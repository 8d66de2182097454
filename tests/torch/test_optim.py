"""maxp_torch.optim: one multi-tensor pass over maxP's per-layer groups, torch's numbers."""

import pytest
import torch
from torch import nn

import maxp_torch.optim as mo
from maxp_torch import Parametrization, ParametrizedModule, optimizer_kind


def mlp(depth: int = 5, width: int = 32) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [
        ParametrizedModule(nn.Linear(8, width), width_dim=width, layer_type="embedding")
    ]
    for _ in range(depth - 2):
        layers += [
            nn.Tanh(),
            ParametrizedModule(nn.Linear(width, width), width_dim=width, layer_type="hidden"),
        ]
    layers += [nn.Tanh(), ParametrizedModule(nn.Linear(width, 3), width_dim=width, layer_type="readout")]
    return nn.Sequential(*layers, nn.LayerNorm(3))  # the LayerNorm lands in maxP's "_other" group


def train_both(ours_cls, theirs_cls, steps: int = 12, dynamic: bool = True, **kwargs):
    """The same model trained by both optimizers over maxP's groups, rates re-solved on the way."""
    models, params, optimizers = [], [], []
    for cls in (ours_cls, theirs_cls):
        model = mlp()
        param = Parametrization(
            model, lr_prefactor=0.05, optimizer_type="adam" if "Adam" in cls.__name__ else "sgd",
            warmup_steps=2 if dynamic else 10**9, solve_interval=3,
        )  # fmt: skip
        optimizer = cls(param.param_groups, **kwargs)
        x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
        param.capture_initial(x)
        models.append(model), params.append(param), optimizers.append(optimizer)
    data = torch.Generator().manual_seed(2)
    for _ in range(steps):
        x, y = torch.randn(16, 8, generator=data), torch.randint(0, 3, (16,), generator=data)
        for model, param, optimizer in zip(models, params, optimizers, strict=True):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            param.step(x, optimizer)
    return models, params, optimizers


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_torch_over_per_layer_groups(weight_decay: float) -> None:
    models, params, optimizers = train_both(mo.AdamW, torch.optim.AdamW, weight_decay=weight_decay, eps=1e-6)
    assert len({g["lr"] for g in optimizers[0].param_groups}) > 2  # the layers run at different rates
    assert params[0].solves > 0
    assert_same_weights(*models)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        ours, theirs = optimizers[0].state[p], optimizers[1].state[q]
        assert float(ours["step"]) == float(theirs["step"]) == 12.0
        torch.testing.assert_close(ours["exp_avg_sq"], theirs["exp_avg_sq"], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [{"momentum": 0.9}, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, {"momentum": 0.0}],
)
def test_sgd_matches_torch_over_per_layer_groups(kwargs: dict) -> None:
    models, _, _ = train_both(mo.SGD, torch.optim.SGD, lr=0.1, **kwargs)
    assert_same_weights(*models)


def test_state_dicts_move_between_torch_and_ours() -> None:
    models, params, optimizers = train_both(mo.AdamW, torch.optim.AdamW, steps=4, dynamic=False)
    resumed = mo.AdamW(params[1].param_groups)
    resumed.load_state_dict(optimizers[1].state_dict())  # torch's state, continued by ours
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    for model, optimizer in ((models[1], resumed), (models[0], optimizers[0])):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    assert_same_weights(models[0], models[1])


def test_unsupported_settings_take_torchs_step() -> None:
    models, _, _ = train_both(mo.AdamW, torch.optim.AdamW, steps=5, amsgrad=True, weight_decay=0.05)
    assert_same_weights(*models)


def test_they_are_the_kinds_the_lp_expects() -> None:
    p = [torch.zeros(2, requires_grad=True)]
    assert optimizer_kind(mo.AdamW(p)) == "adam" and optimizer_kind(mo.SGD(p, lr=0.1)) == "sgd"


def test_a_sparse_gradient_is_refused_by_name() -> None:
    table = nn.Embedding(5, 4, sparse=True)
    optimizer = mo.AdamW([{"params": table.parameters(), "layer_name": "tok"}])
    table(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(Exception, match=r"group 'tok' has a sparse gradient"):
        optimizer.step()
