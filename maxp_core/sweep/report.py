"""What a sweep found, from its run records alone: best rates, divergence, transfer, seeds.

A *setting* is a run's config without ``lr`` and ``seed`` (method, width, depth, ...). For
each setting the report gives the best rate (lowest mean final loss over seeds among the
rates where no seed diverged), the spread of the seeds there, the first rate at which a
seed diverged and its ratio to the best, and the basin: how many grid rates come within
1% and 5% of the best loss. For each numeric axis with several values (width, depth) it
gives how far the best rate moves from the smallest value to the largest (log2), with the
other axes held; and between methods, paired seeds: each method at its own best rate,
seed by seed.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from maxp_core.errors import MaxPError
from maxp_core.resolve import warn_user
from maxp_core.sweep.records import STATUSES, read_runs
from maxp_core.text import format_table

#: A rate is in the basin when its loss is within this many percent of the best rate's.
BASIN_PERCENTS = (1, 5)
#: At most this many panels of training curves and maxP trajectories are drawn.
MAX_PANELS = 12


def _position(
    values: tuple[Any, ...], keys: Sequence[str], axes: Mapping[str, Sequence[Any]] | None
) -> tuple:
    """Where a setting comes in the grid (by value where the grid does not say)."""
    place = []
    for key, value in zip(keys, values, strict=True):
        known = list(axes.get(key, ())) if axes is not None else []
        place.append((0, known.index(value), "") if value in known else (1, _sortable(value), str(value)))
    return tuple(place)


def _sortable(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.inf


def settings_of(runs: list[dict[str, Any]], axes: Iterable[str] | None = None) -> list[str]:
    """The axes that make a setting: every config key but ``lr`` and ``seed``, in ``axes``' order."""
    keys = list(axes) if axes is not None else sorted({k for r in runs for k in r["config"]})
    return [k for k in keys if k not in ("lr", "seed")]


def summarize(runs: list[dict[str, Any]], axes: Mapping[str, Sequence[Any]] | None = None) -> dict[str, Any]:
    """The report's numbers as JSON-ready data: ``settings``, ``transfer``, ``paired``, ``counts``.

    ``axes`` (the grid, ``{axis: values}``) orders the settings as the grid does; without it
    they are sorted by value.

    Examples:
      >>> def run(lr, seed, loss, status="finished"):
      ...     return {"config": {"lr": lr, "seed": seed}, "status": status, "final_loss": loss,
      ...             "records": [{"step": 0, "loss": 1.0}]}
      >>> report = summarize([run(0.1, 0, 0.5), run(0.1, 1, 0.7), run(0.3, 0, 0.4), run(0.3, 1, 0.4),
      ...                     run(1.0, 0, None, "diverged"), run(1.0, 1, 0.2)])
      >>> best = report["settings"][0]
      >>> best["best_lr"], best["first_diverging_lr"], round(best["diverging_over_best"], 2)
      (0.3, 1.0, 3.33)
    """
    keys = settings_of(runs, axes)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(tuple(r["config"].get(k) for k in keys), []).append(r)
    order = sorted(groups, key=lambda values: _position(values, keys, axes))
    settings = [_setting(dict(zip(keys, values, strict=True)), groups[values]) for values in order]
    varying = [k for k in keys if len({repr(s["setting"][k]) for s in settings}) > 1]
    return {
        "axes": keys,
        "varying": varying,
        "counts": {status: sum(r["status"] == status for r in runs) for status in STATUSES},
        "settings": settings,
        "transfer": _transfer(settings, keys),
        "paired": _paired(runs, settings, keys),
    }


def _setting(setting: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for r in runs:
        by_lr.setdefault(float(r["config"]["lr"]), []).append(r)
    # A rate is a candidate when every seed finished: a diverged seed rules it out, and so does
    # a failed one (its loss is unknown, the rate would compete on fewer seeds).
    stable = {
        lr: statistics.fmean(r["final_loss"] for r in mine)
        for lr, mine in by_lr.items()
        if all(r["status"] == "finished" for r in mine)
    }
    stable = {lr: loss for lr, loss in stable.items() if math.isfinite(loss)}
    best = min(stable, key=lambda lr: (stable[lr], lr)) if stable else None
    diverging = sorted(lr for lr, mine in by_lr.items() if any(r["status"] == "diverged" for r in mine))
    first = diverging[0] if diverging else None
    at_best = [r for r in by_lr.get(best, []) if r["status"] == "finished"] if best is not None else []
    losses = [r["final_loss"] for r in at_best]
    return {
        "setting": setting,
        "best_lr": best,
        "best_loss": stable.get(best) if best is not None else None,
        "seeds_at_best": len(losses),
        "spread": max(losses) - min(losses) if losses else None,
        "std": statistics.stdev(losses) if len(losses) > 1 else None,
        "loss_by_seed": {str(r["config"].get("seed")): r["final_loss"] for r in at_best},
        "best_at_edge": _edge(best, sorted(by_lr)),
        "first_diverging_lr": first,
        "diverging_over_best": first / best if first is not None and best is not None else None,
        **{
            f"basin_{pct}": sum(v - stable[best] <= pct / 100 * abs(stable[best]) for v in stable.values())
            if best
            else 0
            for pct in BASIN_PERCENTS
        },
        "loss_by_lr": {str(lr): stable.get(lr) for lr in sorted(by_lr)},
        "diverged_lrs": diverging,
        "failed": sum(r["status"] == "failed" for r in runs),
    }


def _edge(best: float | None, lrs: list[float]) -> str | None:
    """``"top"`` or ``"bottom"`` when the best rate is the grid's largest or smallest: the
    optimum may lie beyond it, and the grid wants widening that way."""
    if best is None or len(lrs) < 2:
        return None
    return "top" if best == lrs[-1] else "bottom" if best == lrs[0] else None


def _shown(values: dict[str, Any], varying: Sequence[str]) -> str:
    """``k=v, ...`` of the axes that vary across the sweep (the others say nothing)."""
    return ", ".join(f"{k}={v}" for k, v in values.items() if k in varying) or "-"


def _numeric_axes(settings: list[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    """Axes with several numeric values: the sizes the best rate should transfer across."""
    sizes = []
    for key in keys:
        values = {s["setting"][key] for s in settings}
        if len(values) > 1 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            sizes.append(key)
    return sizes


def _transfer(settings: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """For each size axis and each combination of the other axes: the best rate per size."""
    rows = []
    for axis in _numeric_axes(settings, keys):
        others = [k for k in keys if k != axis]
        lines: dict[tuple[Any, ...], dict[Any, float | None]] = {}
        for s in settings:
            lines.setdefault(tuple(s["setting"][k] for k in others), {})[s["setting"][axis]] = s["best_lr"]
        for held, best_by_size in lines.items():
            sizes = sorted(best_by_size)
            small, large = best_by_size[sizes[0]], best_by_size[sizes[-1]]
            known = [v for v in best_by_size.values() if v]
            rows.append(
                {
                    "axis": axis,
                    "held": dict(zip(others, held, strict=True)),
                    "best_lr_by_size": {str(size): best_by_size[size] for size in sizes},
                    "shift_log2": math.log2(large / small) if small and large else None,
                    "range_log2": math.log2(max(known) / min(known)) if len(known) > 1 else None,
                }
            )
    return rows


def _paired(
    runs: list[dict[str, Any]], settings: list[dict[str, Any]], keys: Sequence[str]
) -> list[dict[str, Any]]:
    """Between every two methods, with the other axes held: seed by seed at each one's best rate."""
    if "method" not in keys:
        return []
    others = [k for k in keys if k != "method"]
    best = {tuple(s["setting"][k] for k in keys): s["best_lr"] for s in settings}
    loss: dict[tuple[Any, ...], dict[Any, float]] = {}
    for r in runs:
        config = r["config"]
        key = tuple(config.get(k) for k in keys)
        if r["status"] == "finished" and best.get(key) == float(config["lr"]):
            loss.setdefault(key, {})[config.get("seed")] = r["final_loss"]
    methods = list(dict.fromkeys(s["setting"]["method"] for s in settings))
    held_values = list(dict.fromkeys(tuple(s["setting"][k] for k in others) for s in settings))
    rows = []
    for held in held_values:
        for first, second in itertools.combinations(methods, 2):

            def key_of(method: str, held: tuple[Any, ...] = held) -> tuple[Any, ...]:
                values = dict(zip(others, held, strict=True), method=method)
                return tuple(values[k] for k in keys)

            a, b = loss.get(key_of(first), {}), loss.get(key_of(second), {})
            seeds = sorted(set(a) & set(b), key=str)
            if not seeds:
                continue
            differences = [a[s] - b[s] for s in seeds]
            wins = sum(d < 0 for d in differences)
            rows.append(
                {
                    "held": dict(zip(others, held, strict=True)),
                    "first": first,
                    "second": second,
                    "seeds": len(seeds),
                    "mean_difference": statistics.fmean(differences),
                    "first_wins": wins,
                    "sign_test_p": sign_test(wins, sum(d != 0 for d in differences)),
                }
            )
    return rows


def sign_test(wins: int, trials: int) -> float:
    """Two-sided p-value of ``wins`` successes in ``trials`` fair coin flips (1 without trials).

    Examples:
      >>> sign_test(5, 5), sign_test(3, 6)
      (0.0625, 1.0)
    """
    if trials == 0:
        return 1.0
    tail = min(wins, trials - wins)
    p = 2 * sum(math.comb(trials, k) for k in range(tail + 1)) / 2**trials
    return min(1.0, p)


def markdown(summary: dict[str, Any], title: str = "Sweep report") -> str:
    """The report as Markdown tables."""
    counts = summary["counts"]
    parts = [
        f"# {title}\n",
        f"Runs: {sum(counts.values())} ({counts['finished']} finished, {counts['diverged']} diverged, "
        f"{counts['failed']} failed). Final loss: the mean of a run's last tenth of records; a rate's "
        "loss: the mean over its seeds, counted only where every seed finished. A best rate at the "
        "grid's edge is marked (top) or (bottom): the optimum may lie beyond it."
        + _constants(summary)
        + "\n",
        *(
            [f"{summary['left_out']} run records of an earlier grid in this folder are left out.\n"]
            if summary.get("left_out")
            else []
        ),
        "## Best learning rate per setting\n",
        "```\n" + _settings_table(summary["settings"], summary["varying"]) + "\n```\n",
    ]
    if summary["transfer"]:
        rows = [
            (
                t["axis"],
                _shown(t["held"], summary["varying"]),
                "  ".join(f"{size}:{_g(lr)}" for size, lr in t["best_lr_by_size"].items()),
                _signed(t["shift_log2"]),
                _g(t["range_log2"], ".1f"),
            )
            for t in summary["transfer"]
        ]
        table = format_table(rows, ("axis", "held", "best lr by size", "shift (log2)", "range (log2)"))
        parts += ["## How far the best rate moves\n", f"```\n{table}\n```\n"]
    if summary["paired"]:
        pairs = [
            (
                _shown(p["held"], summary["varying"]),
                f"{p['first']} vs {p['second']}",
                p["seeds"],
                f"{p['mean_difference']:+.4g}",
                f"{p['first_wins']}/{p['seeds']}",
                f"{p['sign_test_p']:.3g}",
            )
            for p in summary["paired"]
        ]
        header = ("held", "methods", "seeds", "mean loss difference", "first wins", "sign test p")
        table = format_table(pairs, header)
        parts += [
            "## Paired seeds between methods (each at its own best rate)\n",
            f"```\n{table}\n```\n",
        ]
    return "\n".join(parts)


def _constants(summary: dict[str, Any]) -> str:
    """The axes with one value, said once instead of in every row."""
    if not summary["settings"]:
        return ""
    setting = summary["settings"][0]["setting"]
    fixed = {k: v for k, v in setting.items() if k not in summary["varying"]}
    return f" Every run: {', '.join(f'{k}={v}' for k, v in fixed.items())}." if fixed else ""


def _settings_table(settings: list[dict[str, Any]], keys: Sequence[str]) -> str:
    rows = [
        (
            *(s["setting"][k] for k in keys),
            _g(s["best_lr"]) + {"top": " (top)", "bottom": " (bottom)", None: ""}[s["best_at_edge"]],
            _g(s["best_loss"], ".4g"),
            s["seeds_at_best"],
            _g(s["spread"], ".3g"),
            _g(s["first_diverging_lr"]),
            _g(s["diverging_over_best"], ".3g"),
            *(s[f"basin_{pct}"] for pct in BASIN_PERCENTS),
            s["failed"],
        )
        for s in settings
    ]
    header = (
        *keys,
        "best lr",
        "loss",
        "seeds",
        "spread",
        "first diverging lr",
        "ratio",
        *(f"basin {pct}%" for pct in BASIN_PERCENTS),
        "failed",
    )
    return format_table(rows, header)


def _g(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def write_report(directory: str | Path, out: str | Path | None = None, plots: bool = True) -> dict[str, Any]:
    """Read a sweep's records and write ``sweep-report.md``, ``sweep-report.json`` and the plots.

    Returns the summary (:func:`summarize`). ``out`` defaults to the sweep's folder. Plots
    need matplotlib (``pip install 'maxp[plot]'``); without it only the tables are written.

    Raises:
      MaxPError: the folder holds no run records.
    """
    directory = Path(directory)
    axes = _axes_of(directory)
    everything = read_runs(directory)
    runs = in_grid(everything, axes)
    summary = summarize(runs, axes)
    summary["left_out"] = len(everything) - len(runs)
    out = Path(out) if out is not None else directory
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(summary)
    if plots:
        from maxp_core.sweep import plots as draw

        drawn = draw.all_plots(runs, summary, out)
        text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in drawn) + "\n"
    (out / "sweep-report.md").write_text(text)
    (out / "sweep-report.json").write_text(json.dumps(summary, indent=1))
    return summary


def in_grid(runs: list[dict[str, Any]], axes: Mapping[str, Sequence[Any]] | None) -> list[dict[str, Any]]:
    """The runs of the grid ``axes`` (all without one); runs of an earlier grid in the same
    folder are left out with a warning, so they are not averaged with the new ones.

    Raises:
      MaxPError: no run belongs to the grid.
    """
    if axes is None:
        return runs
    keys = set(axes)
    mine = [
        r for r in runs if set(r["config"]) == keys and all(r["config"][k] in list(axes[k]) for k in keys)
    ]
    if not mine:
        raise MaxPError(f"none of the {len(runs)} run records belongs to the grid {dict(axes)}")
    if len(mine) < len(runs):
        warn_user(
            f"{len(runs) - len(mine)} of {len(runs)} run records belong to another grid than the "
            "sweep's last one (sweep.json) and are left out of the report"
        )
    return mine


def _axes_of(directory: Path) -> dict[str, list[Any]] | None:
    """The grid a sweep's ``sweep.json`` records (None without one)."""
    description = directory / "sweep.json"
    if not description.exists():
        return None
    try:
        return dict(json.loads(description.read_text())["grid"])
    except (OSError, ValueError, KeyError, TypeError):
        raise MaxPError(f"{description}: not a sweep description (no 'grid')") from None
