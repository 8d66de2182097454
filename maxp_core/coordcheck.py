"""Coordinate checks: how each op's activation scale moves with width.

For every op, the RMS of its output is measured at several widths (at init, and the
RMS of its change after a few training steps). A log-log fit gives the exponent ``s``
in ``rms ~ width^s``. An op is flagged when its activation grows with width at init
(``s > tolerance``; shrinking is allowed: a muP readout starts near zero on purpose) or
when its update grows or vanishes with width (``|s| > tolerance``): a maximal-update
parametrization keeps every update's scale fixed. Both adapters collect the numbers;
the fit, the table and the plot live here.

Examples:
  >>> widths = [64, 128, 256, 512]
  >>> round(loglog_slope(widths, [3.0 * w**0.5 for w in widths]), 6)
  0.5
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

#: ``|slope|`` above which an op is flagged as not width-stable.
SLOPE_TOLERANCE = 0.2


def loglog_slope(widths: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``log(value)`` against ``log(width)``; NaN if any value is not positive."""
    x, y = np.log(np.asarray(widths, float)), np.asarray(values, float)
    if len(x) < 2 or not np.all(np.isfinite(y)) or np.any(y <= 0):
        return float("nan")
    return float(np.polyfit(x, np.log(y), 1)[0])


def slopes(
    stats: Mapping[str, Mapping[str, Sequence[float]]], widths: Sequence[float]
) -> dict[str, dict[str, float]]:
    """``{op: {phase: slope}}`` for every op and phase (``"init"``, ``"update"``)."""
    return {
        op: {phase: loglog_slope(widths, v) for phase, v in phases.items()} for op, phases in stats.items()
    }


def flagged(
    stats: Mapping[str, Mapping[str, Sequence[float]]],
    widths: Sequence[float],
    tolerance: float = SLOPE_TOLERANCE,
) -> list[str]:
    """Ops whose activation grows with width at init, or whose update grows or vanishes."""

    def bad(phase: str, s: float) -> bool:
        return not np.isfinite(s) or (s > tolerance if phase == "init" else abs(s) > tolerance)

    return [op for op, phases in slopes(stats, widths).items() if any(bad(p, s) for p, s in phases.items())]


def slope_table(
    axis: str, stats: Mapping[str, Mapping[str, Sequence[float]]], widths: Sequence[float]
) -> str:
    """A table: op, RMS at the smallest and largest width, and the slope per phase."""
    from maxp_core.text import format_table

    bad = set(flagged(stats, widths))
    rows = []
    for op, phases in stats.items():
        fits = slopes({op: phases}, widths)[op]
        for phase, values in phases.items():
            rows.append(
                (
                    op,
                    phase,
                    f"{values[0]:.3g}",
                    f"{values[-1]:.3g}",
                    f"{fits[phase]:+.2f}",
                    "FLAG" if op in bad else "",
                )
            )
    header = ("op", "phase", f"rms @{axis}={widths[0]}", f"rms @{axis}={widths[-1]}", "slope", "")
    return format_table(rows, header)


def plot_slopes(
    axis: str,
    stats: Mapping[str, Mapping[str, Sequence[float]]],
    widths: Sequence[float],
    filename: str | Path,
) -> Path:
    """Save a log-log plot of every op's RMS against ``axis``, one panel per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = sorted({phase for p in stats.values() for phase in p})
    fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 4), squeeze=False)
    for ax, phase in zip(axes[0], phases, strict=True):
        for op, values in stats.items():
            if phase in values:
                ax.loglog(widths, values[phase], marker="o", label=op)
        ax.set_xlabel(axis)
        ax.set_ylabel("activation RMS" if phase == "init" else "RMS of the change")
        ax.set_title(phase)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(filename)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
