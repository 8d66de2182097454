"""The plots of a sweep report: loss against rate per size, training curves, maxP trajectories."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from maxp_core.metrics import MetricsRun, plot_metrics
from maxp_core.sweep.grid import _written
from maxp_core.sweep.report import MAX_PANELS, _numeric_axes

LAYER_PREFIX = "maxp/lr/"


def all_plots(runs: list[dict[str, Any]], summary: dict[str, Any], out: Path) -> list[Path]:
    """Every plot the records allow; none without matplotlib."""
    try:
        import matplotlib.pyplot  # noqa: F401  (the figures are closed once saved: nothing is shown)
    except ImportError:
        return []
    drawn = [
        transfer_plot(summary, out / "sweep-transfer.png"),
        curves_plot(runs, summary, out / "sweep-curves.png"),
    ]
    drawn += trajectory_plots(runs, summary, out)
    return drawn


def _log_if_positive(ax: Any) -> None:
    """A log-scaled loss axis where the panel holds positive losses (a sweep whose runs all
    failed or whose losses go negative keeps a linear one)."""
    values = [v for line in ax.get_lines() for v in line.get_ydata() if math.isfinite(v)]
    if values and min(values) > 0:
        ax.set_yscale("log")


def _label(setting: dict[str, Any], varying: list[str] | None = None) -> str:
    shown = {k: v for k, v in setting.items() if varying is None or k in varying}
    return ", ".join(f"{k}={v}" for k, v in shown.items()) or "all runs"


def transfer_plot(summary: dict[str, Any], path: Path) -> Path:
    """Loss against rate: a panel per setting of the non-size axes, a line per size (x at the
    top: a rate where a seed diverged)."""
    import matplotlib.pyplot as plt

    keys = summary["axes"]
    sizes = _numeric_axes(summary["settings"], keys)
    panels: dict[str, list[dict[str, Any]]] = {}
    for s in summary["settings"]:
        held = {k: v for k, v in s["setting"].items() if k not in sizes}
        panels.setdefault(_label(held, summary["varying"]), []).append(s)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False, sharey=True)
    for ax, (title, settings) in zip(axes[0], panels.items(), strict=True):
        for row, s in enumerate(settings):
            lrs = [float(lr) for lr in s["loss_by_lr"]]
            losses = [math.nan if v is None else v for v in s["loss_by_lr"].values()]
            label = _label({k: s["setting"][k] for k in sizes}) if sizes else "loss"
            (line,) = ax.plot(lrs, losses, marker="o", label=label)
            ax.scatter(
                s["diverged_lrs"],
                [0.96 - 0.04 * row] * len(s["diverged_lrs"]),
                marker="x",
                color=line.get_color(),
                transform=ax.get_xaxis_transform(),
                clip_on=False,
            )
        ax.set_xscale("log")
        _log_if_positive(ax)
        grid = [float(lr) for s in settings for lr in s["loss_by_lr"]]
        ax.set_xlim(min(grid) / 1.5, max(grid) * 1.5)  # a diverged rate has no point to span it
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("learning rate")
        if ax.get_lines():
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel("final loss (mean over seeds; x: diverged)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves_plot(runs: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> Path:
    """Training curves at every rate, a panel per setting (its first seed); a diverged run ends
    in an x."""
    import matplotlib.pyplot as plt

    settings = [s["setting"] for s in summary["settings"]][:MAX_PANELS]
    columns = min(4, len(settings))
    rows = math.ceil(len(settings) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False)
    colours = plt.get_cmap("viridis")
    for ax, setting in zip(axes.flat, settings, strict=False):
        mine = [r for r in runs if all(r["config"].get(k) == v for k, v in setting.items()) and r["records"]]
        seeds = sorted({r["config"].get("seed") for r in mine}, key=str)
        mine = [r for r in mine if r["config"].get("seed") == seeds[0]]
        mine.sort(key=lambda r: r["config"]["lr"])
        for index, r in enumerate(mine):
            steps = [rec["step"] for rec in r["records"]]
            losses = [rec["loss"] if math.isfinite(rec["loss"]) else math.nan for rec in r["records"]]
            colour = colours(index / max(1, len(mine) - 1))
            ax.plot(steps, losses, color=colour, label=f"lr {r['config']['lr']:.3g}")
            if r["status"] == "diverged":
                finite = [(s, v) for s, v in zip(steps, losses, strict=True) if math.isfinite(v)]
                if finite:
                    ax.scatter(*finite[-1], marker="x", color=colour, s=40, zorder=3)
        _log_if_positive(ax)
        seed = f", seed {seeds[0]}" if seeds and seeds[0] is not None else ""
        ax.set_title(_label(setting, summary["varying"]) + seed, fontsize=8)
        ax.set_xlabel("step")
        if ax.get_lines():
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(settings) :]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("loss (x: diverged)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def trajectory_plots(runs: list[dict[str, Any]], summary: dict[str, Any], out: Path) -> list[Path]:
    """Per-layer rates and alignments over steps of each setting's best run, where its records
    hold maxp's metrics (``maxp/lr/<layer>``, ...)."""
    drawn: list[Path] = []
    for s in summary["settings"]:
        if len(drawn) >= MAX_PANELS or s["best_lr"] is None:
            continue
        best = [
            r
            for r in runs
            if r["status"] == "finished"
            and float(r["config"]["lr"]) == s["best_lr"]
            and all(r["config"].get(k) == v for k, v in s["setting"].items())
        ]
        if not best:
            continue
        records = best[0]["records"]
        keys = {key for record in records for key in record}
        layers = sorted(k.removeprefix(LAYER_PREFIX) for k in keys if k.startswith(LAYER_PREFIX))
        if not layers:
            continue
        varying = summary["varying"]
        name = "-".join(f"{k}{_written(v)}" for k, v in s["setting"].items() if k in varying) or "all"
        path = out / f"sweep-trajectory-{name}.png"
        run = MetricsRun(layers=dict.fromkeys(layers, "hidden"), records=[_with_step(r) for r in records])
        title = f"{_label(s['setting'], summary['varying'])}, lr {s['best_lr']:.3g}"
        drawn.append(plot_metrics(run, path, title=title))
    return drawn


def _with_step(record: dict[str, Any]) -> dict[str, Any]:
    """A record as a metrics log holds it: the step under ``maxp/step``, missing values NaN."""
    out = {k: math.nan if v is None else float(v) for k, v in record.items()}
    out.setdefault("maxp/step", float(record["step"]))
    return out
