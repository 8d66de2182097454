"""Coordinate checks for PyTorch models: ``diagnose_axis``, ``print_axis``, ``plot_axis``.

Example:
  >>> import torch
  >>> from torch import nn
  >>> from maxp_torch import ParametrizedModule, Parametrization
  >>> def make_model(width):
  ...     model = nn.Sequential(
  ...         ParametrizedModule(nn.Linear(8, width), width_dim=width, layer_type="embedding"), nn.ReLU(),
  ...         ParametrizedModule(nn.Linear(width, width), width_dim=width, layer_type="hidden"), nn.ReLU(),
  ...         ParametrizedModule(nn.Linear(width, 4), width_dim=width, layer_type="readout"))
  ...     return model, Parametrization(model, lr_prefactor=1e-2).param_groups
  >>> ops, affected, stats = diagnose_axis(make_model, lambda w: torch.randn(16, 8), [64, 256, 1024])
  >>> ops, affected
  (['0', '2', '4'], [])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maxp_core.coordcheck import SLOPE_TOLERANCE, flagged, plot_slopes, slope_table
from maxp_torch.module import ParametrizedModule

Stats = dict[str, dict[str, list[float]]]


def _rms(x: torch.Tensor) -> float:
    return float(x.detach().double().pow(2).mean().sqrt())


def _outputs(model: nn.Module, x: Any) -> dict[str, torch.Tensor]:
    outs: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(
            lambda mod, args, out, name=name: outs.__setitem__(name, out.detach().clone())
        )
        for name, m in model.named_modules()
        if isinstance(m, ParametrizedModule)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return outs


def diagnose_axis(
    make_model: Callable[[int], tuple[nn.Module, Any]],
    make_input: Callable[[int], Any],
    widths: Sequence[int],
    steps: int = 3,
    loss_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    tolerance: float = SLOPE_TOLERANCE,
) -> tuple[list[str], list[str], Stats]:
    """Measure every ``ParametrizedModule``'s output RMS at init and its change after ``steps``.

    Args:
      make_model: ``width -> (model, param_groups)``.
      make_input: ``width -> input batch``.
      widths: the widths to sweep (at least two).
      steps: AdamW steps before measuring the change.
      loss_fn: ``output -> loss``; default the mean square of the output.

    Returns:
      ``(all_ops, affected, stats)``: op names, the ops whose scale moves with width
      (``|slope| > tolerance``), and ``stats[op] = {"init": [...], "update": [...]}`` per width.
    """
    loss_fn = loss_fn or (lambda out: out.float().pow(2).mean())
    stats: Stats = {}
    for width in widths:
        torch.manual_seed(seed)
        model, groups = make_model(width)
        x = make_input(width)
        before = _outputs(model, x)
        optimizer = torch.optim.AdamW(groups)
        for _ in range(steps):
            optimizer.zero_grad()
            loss_fn(model(x)).backward()
            optimizer.step()
        after = _outputs(model, x)
        for name, out in before.items():
            entry = stats.setdefault(name, {"init": [], "update": []})
            entry["init"].append(_rms(out))
            entry["update"].append(_rms(after[name] - out))
    return list(stats), flagged(stats, widths, tolerance), stats


def print_axis(
    axis: str, all_ops: list[str], affected: list[str], act_stats: Stats, widths: Sequence[int]
) -> None:
    """Print the RMS at the ends of the sweep and the slope of every op; flagged ops are marked."""
    print(slope_table(axis, {op: act_stats[op] for op in all_ops}, widths))
    print(f"\n{len(affected)} of {len(all_ops)} ops scale with {axis}: {affected or 'none'}")


def plot_axis(
    axis: str,
    all_ops: list[str],
    affected: list[str],
    act_stats: Stats,
    widths: Sequence[int],
    filename: str | Path = "coord_check.png",
) -> Path:
    """Save the log-log picture of every op's RMS against ``axis``."""
    return plot_slopes(axis, {op: act_stats[op] for op in all_ops}, widths, filename)
