"""Coordinate checks for PyTorch models: ``diagnose_axis``, ``print_axis``, ``plot_axis``.

Examples:
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

import numpy as np
import torch
from torch import nn

from maxp_core.coordcheck import SLOPE_TOLERANCE, flagged, plot_slopes, slope_table
from maxp_torch.compat.diagnose import PUBLISHED_KEYWORDS, diagnose_ops, op_label, plot_ops, print_ops
from maxp_torch.module import ParametrizedModule

Stats = dict[str, dict[str, list[float]]]
__all__ = ["diagnose_axis", "layer_slopes", "op_label", "plot_axis", "print_axis"]


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


def diagnose_axis(*args: Any, **kwargs: Any) -> Any:
    """A coordinate check along one width axis, in either of two forms.

    ``diagnose_axis(make_model, make_input, widths, steps=3, loss_fn=None, seed=0,
    tolerance=...)`` fits each ``ParametrizedModule``'s output and update RMS against width
    (:func:`layer_slopes`). With the current published release's keywords
    (``make_model_fn=``, ``make_input_fn=``, ``n_steps=``, ``n_seeds=``, ``train_step_fn=``)
    it is that release's per-operation check (:func:`maxp_torch.compat.diagnose.diagnose_ops`),
    returning ``(ops, affected, act_stats)`` for the published ``print_axis`` and ``plot_axis``.
    """
    if any(key in kwargs for key in PUBLISHED_KEYWORDS) or (len(args) > 4 and isinstance(args[4], int)):
        return diagnose_ops(*args, **kwargs)
    return layer_slopes(*args, **kwargs)


def layer_slopes(
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
    axis: str, all_ops: list[Any], affected: list[Any], act_stats: Any, widths: Sequence[int]
) -> None:
    """Print the RMS at the ends of the sweep and the slope of every op; flagged ops are marked
    (or, for the published form's array, each listed op's first-step activation per width)."""
    if isinstance(act_stats, np.ndarray):
        print_ops(axis, all_ops, affected, act_stats, widths)
        return
    print(slope_table(axis, {op: act_stats[op] for op in all_ops}, widths))
    print(f"\n{len(affected)} of {len(all_ops)} ops scale with {axis}: {affected or 'none'}")


def plot_axis(
    axis: str,
    all_ops: list[Any],
    affected: list[Any],
    act_stats: Any,
    widths: Sequence[int],
    filename: str | Path = "coord_check.png",
    plot_every: int = 1,
) -> Path | None:
    """Save the log-log picture of every op's RMS against ``axis`` (for the published form's
    array, one panel per listed op with a line per ``plot_every``-th step)."""
    if isinstance(act_stats, np.ndarray):
        return plot_ops(axis, all_ops, affected, act_stats, widths, filename, plot_every)
    return plot_slopes(axis, {op: act_stats[op] for op in all_ops}, widths, filename)
