"""Coordinate checks flag a deliberately wrong parametrization and pass a right one."""

import math

import pytest
import torch
from torch import nn

from maxp_core.coordcheck import loglog_slope
from maxp_torch import Parametrization, ParametrizedModule, diagnose_axis, plot_axis, print_axis

WIDTHS = [64, 256, 1024]


def make_model(width: int, wrong: str | None = None):
    model = nn.Sequential(
        ParametrizedModule(nn.Linear(8, width), width_dim=width, layer_type="embedding"),
        nn.ReLU(),
        ParametrizedModule(nn.Linear(width, width), width_dim=width, layer_type="hidden"),
        nn.ReLU(),
        ParametrizedModule(nn.Linear(width, 4), width_dim=width, layer_type="readout"),
    )
    param = Parametrization(model, lr_prefactor=1e-2)
    groups = param.param_groups
    if wrong == "init":  # the hidden layer keeps a width-independent std: its output grows like sqrt(n)
        with torch.no_grad():
            model[2].inner.weight.normal_(0.0, 1.0)
    if wrong == "lr":  # one global rate, as standard parametrization with Adam: hidden updates grow like n
        groups = [{"params": list(model.parameters()), "lr": 1e-2}]
    return model, groups


def test_right_parametrization_passes_and_wrong_ones_are_flagged(tmp_path) -> None:
    ops, affected, stats = diagnose_axis(lambda w: make_model(w), lambda w: torch.randn(16, 8), WIDTHS)
    assert ops == ["0", "2", "4"] and affected == []
    _, affected, stats = diagnose_axis(lambda w: make_model(w, "init"), lambda w: torch.randn(16, 8), WIDTHS)
    assert "2" in affected
    assert loglog_slope(WIDTHS, stats["2"]["init"]) == pytest.approx(0.5, abs=0.1)
    _, affected, stats = diagnose_axis(lambda w: make_model(w, "lr"), lambda w: torch.randn(16, 8), WIDTHS)
    assert "2" in affected and loglog_slope(WIDTHS, stats["2"]["update"]) > 0.3
    print_axis("width", ops, affected, stats, WIDTHS)
    path = plot_axis("width", ops, affected, stats, WIDTHS, filename=tmp_path / "coord.png")
    assert path.stat().st_size > 1000


def test_slope_of_exact_power_laws() -> None:
    assert loglog_slope([10, 100, 1000], [1.0, 10.0, 100.0]) == pytest.approx(1.0)
    assert math.isnan(loglog_slope([10, 100], [1.0, 0.0]))
