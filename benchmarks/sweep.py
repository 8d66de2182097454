"""Learning-rate sweep: does the best rate transfer across width, and does maxP train faster?

Run ``python -m benchmarks.sweep`` (``--task digits|chars``, ``--framework torch|jax``,
``--widths``, ``--lrs``, ``--methods``, ``--seeds``, ``--steps``, ``--device``,
``--jobs``, ``--out``). Trains every learning rate x width x method x seed with Adam
(no weight decay):

* ``sp``: the standard model (the framework's default initialisation), one global rate;
* ``mup-full`` / ``mup-no``: muP with the LP's rates for full / no alignment, fixed;
* ``maxp-meas``: muP with a static c-table from alignments measured once: the ``mup-no``
  runs are measured without using the numbers (measure-only), the alignment table of the
  smallest width's best ``mup-no`` run (seed 0) is written to ``table.json`` and transferred
  unchanged to every width (the published maxP authors' workflow);
* ``maxp``: muP with dynamic alignment (re-solved every 10 steps after 20);
  ``maxp-preset`` / ``maxp-later``: the same with the LP's tie rule named
  (:mod:`maxp_core.lp`), to compare the rules on paired seeds.

Tasks (:mod:`benchmarks.sweep_tasks`): ``digits``, an MLP of depth 4 on scikit-learn's
digits, and ``chars``, a 2-block GPT predicting the next character of the Python
standard library's sources. A run stops early when its loss turns NaN or inf or exceeds
3x its start (diverged). Each run writes ``runs/<id>.json``; finished runs are skipped
when the sweep is started again, so a half-finished sweep resumes. The report
(``sweep.md``) gives the best rate per width and method, the first diverging rate,
their ratio, and how far the best rate moves from the smallest to the largest width;
``sweep-transfer.png`` draws loss against learning rate per width for each method and
``sweep-curves.png`` the training curves at the best rates; ``sweep-trajectory-<method>.png``
the per-layer rates and alignments of the measured methods' best runs at the largest width.
The basin columns count the grid rates whose loss is within 1% and 5% of the best one.
``--warmup K`` ramps every rate linearly over the first K steps. ``--jobs N`` trains N
(method, width) groups in parallel processes. ``--retrain METHOD ...`` trains those methods'
finished runs again (to regenerate an arm after the code changed; see
:mod:`benchmarks.reproduce`). Every run's file records the code version that made it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from benchmarks.report import code_version
from benchmarks.sweep_tasks import DIVERGED_FACTOR, FINAL_WINDOW, TASKS, TIE_RULE_METHODS, Task, load_task
from benchmarks.threads import pin_threads, single_threaded
from maxp_core.metrics import MetricsRun, plot_metrics
from maxp_core.tables import AlignmentTable, measure_table
from maxp_core.text import format_table

RESULTS = Path(__file__).resolve().parent / "results" / "sweep"
METHODS = ("sp", "mup-full", "mup-no", "maxp-meas", "maxp", *TIE_RULE_METHODS)
FRAMEWORKS = ("torch", "jax")
Setting = tuple[float, int]  # (learning rate, seed)
TABLE_FILE = "table.json"
#: A rate is in the basin when its loss is within this many percent of the best rate's.
BASIN_PERCENTS = (1, 5)
#: Share of a measured run's steps its alignment table averages over.
TABLE_FRACTION = 0.5


def run_id(method: str, width: int, lr: float, seed: int) -> str:
    return f"{method}_w{width}_lr{lr:.3g}_s{seed}"


def _torch_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_trainer(
    task: Task,
    framework: str,
    method: str,
    width: int,
    device: str = "auto",
    table: AlignmentTable | None = None,
    warmup: int = 0,
) -> Callable[[float, int, int], dict[str, Any]]:
    """``train(lr, seed, steps) -> record`` for one method at one width in ``framework``
    (``table``: the alignment table of ``maxp-meas``; ``warmup``: steps of linear warm-up)."""
    if framework == "jax":
        from benchmarks.sweep_jax import Trainer

        jax_device = None if device == "auto" else device
        return Trainer(task, method, width, device=jax_device, table=table, warmup=warmup).run
    if framework != "torch":
        raise ValueError(f"unknown framework {framework!r}; choose one of {', '.join(FRAMEWORKS)}")
    from benchmarks.sweep_torch import train as train_torch

    torch_device = _torch_device(device)

    def train(lr: float, seed: int, steps: int) -> dict[str, Any]:
        return train_torch(task, method, width, lr, seed, steps, torch_device, table=table, warmup=warmup)

    return train


def run_group(
    task_name: str,
    framework: str,
    method: str,
    width: int,
    settings: list[Setting],
    steps: int,
    device: str,
    runs_dir: Path,
    warmup: int = 0,
) -> Iterator[dict[str, Any]]:
    """Train one method at one width for every (rate, seed), writing each run's file as it ends
    (``maxp-meas`` reads its table from ``runs_dir/../table.json``)."""
    table = AlignmentTable.read(runs_dir.parent / TABLE_FILE) if method == "maxp-meas" else None
    train = make_trainer(load_task(task_name), framework, method, width, device, table, warmup)
    for lr, seed in settings:
        start = time.perf_counter()
        record = train(lr, seed, steps)
        record["seconds"] = time.perf_counter() - start
        record["steps_requested"] = steps
        record["warmup"] = warmup
        record["code"] = code_version()
        (runs_dir / f"{run_id(method, width, lr, seed)}.json").write_text(json.dumps(record))
        yield record


def _group_in_worker(*args: Any) -> list[dict[str, Any]]:
    pin_threads()
    return list(run_group(*args))


def finished_run(path: Path, steps: int, warmup: int = 0) -> dict[str, Any] | None:
    """The record of a run of ``steps`` steps (``warmup`` of them warming up) saved at ``path``,
    or None if there is none."""
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    same = record.get("steps_requested") == steps and record.get("warmup", 0) == warmup
    return record if same else None


def finished_runs(runs_dir: Path, steps: int, methods: list[str], warmup: int = 0) -> list[dict[str, Any]]:
    """Every finished run of ``steps`` steps under ``runs_dir`` by one of ``methods``."""
    finished = (finished_run(path, steps, warmup) for path in sorted(runs_dir.glob("*.json")))
    return [r for r in finished if r is not None and r["method"] in methods]


def summarize(
    runs: list[dict[str, Any]], widths: list[int], lrs: list[float], methods: list[str], axis: str = "width"
) -> tuple[str, dict[str, Any]]:
    """Best rate per width and method, first diverging rate, and how far the best rate moves.

    ``axis`` names the run field the sizes ``widths`` are read from (``"depth"`` for a depth
    sweep). Returns the Markdown tables and ``{"best": {method: {size: ...}}, "shift": {method: log2}}``.
    """
    best_by: dict[str, dict[int, dict[str, Any]]] = {}
    rows = []
    for method in methods:
        best_by[method] = {}
        for width in widths:
            by_lr: dict[float, list[dict[str, Any]]] = {}
            for r in runs:
                if r["method"] == method and r[axis] == width and r["lr"] in lrs:
                    by_lr.setdefault(r["lr"], []).append(r)
            stable = {
                lr: float(np.mean([r["final_train_loss"] for r in mine]))
                for lr, mine in by_lr.items()
                if not any(r["diverged"] for r in mine)
            }
            stable = {lr: v for lr, v in stable.items() if math.isfinite(v)}
            best = min(stable, key=lambda lr: stable[lr]) if stable else None
            first_div = min(
                (lr for lr, mine in by_lr.items() if any(r["diverged"] for r in mine)), default=None
            )
            finals = [r["final_train_loss"] for r in by_lr.get(best, [])] if best else []
            by_seed = {str(r["seed"]): r["final_train_loss"] for r in by_lr.get(best, [])} if best else {}
            tests = [r["test_loss"] for r in by_lr.get(best, [])] if best else []
            basin = {
                f"basin_{pct}": sum(v <= stable[best] * (1 + pct / 100) for v in stable.values())
                if best
                else 0
                for pct in BASIN_PERCENTS
            }
            best_by[method][width] = {
                "best_lr": best,
                "best_loss": stable.get(best) if best else None,
                "spread": float(np.ptp(finals)) if finals else None,
                "loss_by_seed": by_seed,
                "test_loss": float(np.mean(tests)) if tests else None,
                "first_diverging": first_div,
                **basin,
            }
            entry = best_by[method][width]
            rows.append(
                (
                    method,
                    width,
                    "-" if best is None else f"{best:.3g}",
                    "-" if best is None else f"{entry['best_loss']:.4f}",
                    "-" if best is None else f"{entry['spread']:.4f}",
                    "-" if best is None else f"{entry['test_loss']:.4f}",
                    "-" if first_div is None else f"{first_div:.3g}",
                    "-" if best is None or first_div is None else f"{first_div / best:.3g}",
                    *(entry[f"basin_{pct}"] for pct in BASIN_PERCENTS),
                )
            )
    shift: dict[str, float | None] = {}
    shift_rows = []
    for method in methods:
        small, large = best_by[method][widths[0]]["best_lr"], best_by[method][widths[-1]]["best_lr"]
        shift[method] = None if not small or not large else math.log2(large / small)
        value = shift[method]
        shift_rows.append((method, f"{widths[0]} -> {widths[-1]}", "-" if value is None else f"{value:+.1f}"))
    header = (
        "method",
        axis,
        "best lr",
        "loss at best",
        "spread",
        "test loss",
        "first diverging lr",
        "ratio",
        *(f"basin {pct}%" for pct in BASIN_PERCENTS),
    )
    table = format_table(rows, header)
    shifts = format_table(shift_rows, ("method", f"{axis}s", "best-lr shift (log2)"))
    return (
        f"```\n{table}\n```\n\nHow far the best rate moves as {axis} grows:\n\n```\n{shifts}\n```\n",
        {"best": best_by, "shift": shift},
    )


def plot(
    runs: list[dict[str, Any]],
    widths: list[int],
    methods: list[str],
    out: Path,
    summary: dict,
    axis: str = "width",
    prefix: str = "sweep",
) -> None:
    """``<prefix>-transfer.png`` (loss against rate per size, a panel per method) and
    ``<prefix>-curves.png`` (training curves at the best rates, a panel per size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        for row, width in enumerate(widths):
            mine = sorted(
                (r for r in runs if r["method"] == method and r[axis] == width), key=lambda r: r["lr"]
            )
            lrs = sorted({r["lr"] for r in mine})
            losses = [np.mean([r["final_train_loss"] for r in mine if r["lr"] == lr]) for lr in lrs]
            losses = [v if math.isfinite(v) else np.nan for v in losses]
            (line,) = ax.plot(lrs, losses, marker="o", label=f"{axis} {width}")
            diverging = [lr for lr in lrs if any(r["diverged"] for r in mine if r["lr"] == lr)]
            # Diverging rates as crosses along the top edge, one row per size in its colour.
            ax.scatter(
                diverging,
                [0.96 - 0.04 * row] * len(diverging),
                marker="x",
                color=line.get_color(),
                transform=ax.get_xaxis_transform(),
                clip_on=False,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        grid = [r["lr"] for r in runs if r["method"] == method]
        ax.set_xlim(min(grid) / 1.5, max(grid) * 1.5)  # diverging rates have no point to span them
        ax.set_title(method)
        ax.set_xlabel("learning rate (prefactor)")
    axes[0][0].set_ylabel("final train loss (x at the top: diverged)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"{prefix}-transfer.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(widths), figsize=(4.2 * len(widths), 3.6), sharey=True, squeeze=False)
    for ax, width in zip(axes[0], widths, strict=True):
        for method in methods:
            best = summary["best"][method][width]["best_lr"]
            mine = [
                r
                for r in runs
                if r["method"] == method and r[axis] == width and r["lr"] == best and r["seed"] == 0
            ]
            if mine:
                ax.plot(mine[0]["losses"], label=f"{method} (lr {best:.3g})")
        ax.set_yscale("log")
        ax.set_title(f"{axis} {width}, best rates (seed 0)")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)  # the best rates differ from panel to panel
    axes[0][0].set_ylabel("train loss")
    fig.tight_layout()
    fig.savefig(out / f"{prefix}-curves.png", dpi=110)
    plt.close(fig)


def _grid(args: argparse.Namespace) -> dict[tuple[str, int, int], list[Setting]]:
    """Groups of runs that share a model and a compiled step, in the order they are trained.

    All of seed 0 comes first and the widest models first within a seed, so a sweep cut
    short still has every method and width for its first seeds.
    """
    return {
        (method, width, seed): [(lr, seed) for lr in args.lrs]
        for seed in range(args.seeds)
        for width in sorted(args.widths, reverse=True)
        for method in args.methods
    }


def _measuring_group(args: argparse.Namespace) -> tuple[str, int, int]:
    """The group whose best run gives ``maxp-meas`` its table: ``mup-no``, smallest width, seed 0."""
    return ("mup-no", min(args.widths), 0)


def _train(
    args: argparse.Namespace, runs_dir: Path, groups: dict[tuple[str, int, int], list[Setting]]
) -> list[dict[str, Any]]:
    """The runs of ``groups``: finished ones read back, the rest trained (in ``args.jobs`` processes)."""
    runs: list[dict[str, Any]] = []
    todo: list[tuple[str, int, list[Setting]]] = []
    for (method, width, _), settings in groups.items():
        left = []
        for lr, seed in settings:
            path = runs_dir / f"{run_id(method, width, lr, seed)}.json"
            retrain = method in (getattr(args, "retrain", None) or ())
            record = None if retrain else finished_run(path, args.steps, args.warmup)
            if record is None:
                left.append((lr, seed))
            else:
                runs.append(record)
        if left:
            todo.append((method, width, left))
    total = sum(len(left) for *_, left in todo)
    if not total:
        return runs
    progress = tqdm(total=total, desc=f"sweep {args.task}/{args.framework}", unit="run")
    common = (args.steps, args.device, runs_dir, args.warmup)
    if args.jobs <= 1:
        for method, width, left in todo:
            for record in run_group(args.task, args.framework, method, width, left, *common):
                runs.append(record)
                progress.update()
    else:
        # JAX must not grab most of the accelerator's memory in each of several processes.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = [
                pool.submit(_group_in_worker, args.task, args.framework, method, width, left, *common)
                for method, width, left in todo
            ]
            for future in as_completed(futures):
                records = future.result()
                runs.extend(records)
                progress.update(len(records))
    progress.close()
    return runs


def sweep_table(runs: list[dict[str, Any]], width: int) -> AlignmentTable:
    """The alignment table of the best measured ``mup-no`` run (seed 0) at ``width``.

    Raises:
      ValueError: no such run finished without diverging, or none kept its metrics.
    """
    measured = [
        r
        for r in runs
        if r["method"] == "mup-no" and r["width"] == width and r["seed"] == 0 and not r["diverged"]
    ]
    measured = [r for r in measured if r.get("metrics")]
    if not measured:
        raise ValueError(f"no measured mup-no run (seed 0) at width {width} finished; maxp-meas needs one")
    best = min(measured, key=lambda r: r["final_train_loss"])
    source = {"method": "mup-no", "width": width, "lr": best["lr"], "seed": 0, "task": best["task"]}
    return measure_table(MetricsRun(best["layers"], best["metrics"]), TABLE_FRACTION, source)


def run_sweep(args: argparse.Namespace, runs_dir: Path) -> list[dict[str, Any]]:
    """Every run of the grid. With ``maxp-meas``, the measuring ``mup-no`` runs come first and
    their table is written to ``table.json`` before any ``maxp-meas`` run starts."""
    grid = _grid(args)
    runs: list[dict[str, Any]] = []
    if "maxp-meas" in args.methods:
        if "mup-no" not in args.methods:
            raise ValueError("maxp-meas measures its table on mup-no runs; add mup-no to --methods")
        first = _measuring_group(args)
        # One group per rate, so that parallel workers share the measuring runs.
        runs += _train(args, runs_dir, {(*first[:2], k): [s] for k, s in enumerate(grid.pop(first))})
        sweep_table(runs, first[1]).write(runs_dir.parent / TABLE_FILE)
    return runs + _train(args, runs_dir, grid)


class Comparison(NamedTuple):
    """Two methods at their best rates, paired by seed (``first`` against ``second``)."""

    winner: str  # the first method's label, the second's, or "tie"
    gap: float  # mean over shared seeds of the second's loss minus the first's (positive: first lower)
    noise: float  # max - min of the per-seed gaps
    maxp_lower: int  # seeds on which the first method's loss is lower
    seeds: int  # seeds both methods ran
    names: tuple[str, str] = ("maxP", "muP-full")

    def explain(self) -> str:
        """Why this verdict, in a few words."""
        lower = f"{self.names[0]} lower on {self.maxp_lower} of {self.seeds} seeds"
        if self.winner != "tie":
            return f"{lower}, mean gap {abs(self.gap):.4f} > spread of the per-seed gaps {self.noise:.4f}"
        if self.seeds < 2:
            return f"{lower}; one seed cannot separate them"
        if 0 < self.maxp_lower < self.seeds:
            return lower
        return f"{lower}, but the mean gap {abs(self.gap):.4f} is within their spread {self.noise:.4f}"


def compare_paired(
    first: dict[str, Any], second: dict[str, Any], names: tuple[str, str] = ("maxP", "muP-full")
) -> Comparison:
    """Compare two methods' best-rate entries from :func:`summarize`, seed by seed.

    A seed fixes the initial draw and the batch order for every method, so the per-seed gaps
    (the second method's final loss minus the first's) remove most of the seed-to-seed noise. A
    method wins only when at least two seeds are shared, it is lower on every one of them and
    the mean gap exceeds the max - min of the per-seed gaps; anything else is a tie.

    Example:
      >>> maxp = {"loss_by_seed": {"0": 1.0, "1": 1.5}}
      >>> compare_paired(maxp, {"loss_by_seed": {"0": 1.25, "1": 1.75}})[:5]
      ('maxP', 0.25, 0.0, 2, 2)
      >>> compare_paired(maxp, {"loss_by_seed": {"0": 1.25, "1": 1.25}}).explain()
      'maxP lower on 1 of 2 seeds'
    """
    seeds = sorted(set(first["loss_by_seed"]) & set(second["loss_by_seed"]))
    if not seeds:
        raise ValueError(f"{names[0]} and {names[1]} share no seed at their best rates; nothing to pair")
    gaps = np.array([second["loss_by_seed"][s] - first["loss_by_seed"][s] for s in seeds])
    gap, noise = float(gaps.mean()), float(np.ptp(gaps))
    lower, higher = int(np.sum(gaps > 0)), int(np.sum(gaps < 0))
    decided = len(seeds) >= 2 and len(seeds) in (lower, higher) and abs(gap) > noise
    winner = (names[0] if gap > 0 else names[1]) if decided else "tie"
    return Comparison(winner, gap, noise, lower, len(seeds), names)


def maxp_against_mup(maxp: dict[str, Any], mup: dict[str, Any]) -> Comparison:
    """:func:`compare_paired` of maxP against muP-full."""
    return compare_paired(maxp, mup, ("maxP", "muP-full"))


#: The paired comparisons a report makes: (method, against, labels).
PAIRS: tuple[tuple[str, str, tuple[str, str]], ...] = (
    ("maxp-meas", "mup-no", ("maxP-meas", "muP-no")),
    ("maxp", "mup-full", ("maxP", "muP-full")),
    ("maxp-preset", "maxp-later", ("maxP-preset", "maxP-later")),
    ("maxp-preset", "mup-full", ("maxP-preset", "muP-full")),
    ("maxp-later", "mup-full", ("maxP-later", "muP-full")),
)


def _pair(summary: dict, width: Any, method: str, against: str) -> tuple[dict, dict] | None:
    """Both methods' best-rate entries at ``width``, when both have a best rate."""
    a, b = summary["best"].get(method, {}).get(width), summary["best"].get(against, {}).get(width)
    if a and b and a["best_loss"] is not None and b["best_loss"] is not None:
        return a, b
    return None


def verdicts(summary: dict, widths: list[int]) -> list[str]:
    """Plain sentences: the paired comparisons per width, each method's basin, and whether the
    optimum moves less than SP's."""
    lines = []
    for method, against, names in PAIRS:
        for width in widths:
            pair = _pair(summary, width, method, against)
            if pair is None:
                continue
            comparison = compare_paired(*pair, names)
            verdict = {"tie": "ties with", names[0]: "beats", names[1]: "loses to"}[comparison.winner]
            lines.append(
                f"- width {width}: {names[0]} {verdict} {names[1]} ({comparison.explain()}; best-rate "
                f"losses {pair[0]['best_loss']:.4f} vs {pair[1]['best_loss']:.4f})."
            )
    for method, by_width in summary["best"].items():
        basins = [by_width[w].get("basin_5") for w in widths if by_width.get(w, {}).get("best_lr")]
        if basins and all(b is not None for b in basins):
            lines.append(f"- {method}: {np.mean(basins):.1f} grid rates within 5% of the best loss (mean).")
    shifts = summary["shift"]
    if shifts.get("sp") is not None:
        for method in METHODS[1:]:
            if shifts.get(method) is not None:
                less = abs(shifts[method]) < abs(shifts["sp"])
                lines.append(
                    f"- {method}: the best rate moves {abs(shifts[method]):.1f} octaves from width "
                    f"{widths[0]} to {widths[-1]}, {'less than' if less else 'not less than'} "
                    f"SP's {abs(shifts['sp']):.1f}."
                )
    return lines


def plot_trajectories(runs: list[dict[str, Any]], width: int, summary: dict, out: Path) -> list[str]:
    """``sweep-trajectory-<method>.png`` for each measured method's best run (seed 0) at ``width``:
    per-layer learning rates and alignments against the step. Returns the file names."""
    names = []
    for method, by_width in summary["best"].items():
        best = by_width.get(width, {}).get("best_lr")
        mine = [
            r
            for r in runs
            if r["method"] == method and r["width"] == width and r["lr"] == best and r["seed"] == 0
        ]
        if not mine or not mine[0].get("metrics"):
            continue
        name = f"sweep-trajectory-{method}.png"
        title = f"{method}, width {width}, lr {best:.3g} (seed 0)"
        plot_metrics(MetricsRun(mine[0]["layers"], mine[0]["metrics"]), out / name, title)
        names.append(name)
    return names


def code_versions(runs_dir: Path) -> dict[str, str]:
    """Per method, the code versions its run files record, with how many runs each."""
    counts: dict[str, dict[str, int]] = {}
    for path in sorted(runs_dir.glob("*.json")):
        record = json.loads(path.read_text())
        by_code = counts.setdefault(record["method"], {})
        code = record.get("code", "not recorded")
        by_code[code] = by_code.get(code, 0) + 1
    return {m: ", ".join(f"{code} ({n})" for code, n in c.items()) for m, c in counts.items()}


def write_overview(results: Path) -> str:
    """Write ``results/README.md``: every finished sweep under ``results`` side by side."""
    rows, verdict_rows = [], []
    for path in sorted(results.glob("*/sweep.json")):
        saved = json.loads(path.read_text())
        name, summary, args = path.parent.name, saved["summary"], saved["args"]
        widths = [str(w) for w in args["widths"]]
        shifts = summary["shift"]
        rows.append(
            (
                name,
                f"{widths[0]} -> {widths[-1]}",
                str(args["seeds"]),
                *("-" if shifts.get(m) is None else f"{shifts[m]:+.1f}" for m in METHODS),
            )
        )
        best = summary["best"]
        for width in widths:
            for method, against, labels in PAIRS:
                pair = _pair(summary, width, method, against)
                if pair is None:
                    continue
                winner = min(
                    (m for m in METHODS if best.get(m, {}).get(width, {}).get("best_loss") is not None),
                    key=lambda m: best[m][width]["best_loss"],
                )
                comparison = compare_paired(*pair, labels)
                verdict_rows.append(
                    (
                        name,
                        width,
                        f"{labels[0]} vs {labels[1]}",
                        f"{pair[0]['best_loss']:.4f}",
                        f"{pair[1]['best_loss']:.4f}",
                        f"{comparison.gap:+.4f}",
                        f"{comparison.noise:.4f}",
                        f"{comparison.maxp_lower}/{comparison.seeds}",
                        comparison.winner,
                        winner,
                    )
                )
    shown = [m for m in METHODS if any(row[3 + METHODS.index(m)] != "-" for row in rows)]
    rows = [row[:3] + tuple(row[3 + METHODS.index(m)] for m in shown) for row in rows]
    shift_table = format_table(rows, ("sweep", "widths", "seeds", *(f"{m} shift" for m in shown)))
    code_rows = [
        (path.parent.name, method, versions)
        for path in sorted(results.glob("*/sweep.json"))
        for method, versions in code_versions(path.parent / "runs").items()
    ]
    code_table = format_table(code_rows, ("sweep", "method", "code versions (runs)"))
    verdict_table = format_table(
        verdict_rows,
        (
            "sweep",
            "width",
            "comparison",
            "first loss",
            "second loss",
            "paired gap",
            "gap spread",
            "first lower",
            "winner",
            "lowest of all",
        ),
    )
    text = (
        "# Learning-rate sweeps: overview\n\n"
        "Written by `python -m benchmarks.sweep --overview` from each sweep's `sweep.json`; the "
        "details, plots and training curves are in each folder's `sweep.md`.\n\n"
        "How far the best learning rate moves (log2, from the smallest to the largest width):\n\n"
        f"```\n{shift_table}\n```\n\n"
        "maxP-meas against muP-no (the published authors' comparison) and maxP against muP-full, each "
        "method at its best rate (final train loss, mean over seeds); paired gap = mean over seeds of the "
        "second method's loss minus the first's with the same seed (positive: the first lower), gap "
        "spread = max - min of those per-seed gaps. A method wins only when it is lower on every seed "
        "(two at least) and the mean gap exceeds the spread; otherwise `tie`:\n\n"
        f"```\n{verdict_table}\n```\n\n"
        "The code version each arm's runs were made by (`benchmarks.reproduce` replays CPU runs against "
        "today's code; `not recorded` marks runs made before versions were recorded):\n\n"
        f"```\n{code_table}\n```\n"
    )
    (results / "README.md").write_text(text)
    return text


@single_threaded
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASKS, default="digits")
    parser.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument(
        "--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=0, help="steps of linear learning-rate warm-up")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (the accelerator if any)")
    parser.add_argument("--jobs", type=int, default=1, help="(method, width) groups trained in parallel")
    parser.add_argument("--out", type=Path, default=None, help="default: results/sweep/<task>-<framework>")
    parser.add_argument(
        "--report-only", action="store_true", help="write the report from the finished runs; train nothing"
    )
    parser.add_argument(
        "--retrain", nargs="+", choices=METHODS, default=[], help="train these methods' finished runs again"
    )
    parser.add_argument(
        "--overview", action="store_true", help="only write results/sweep/README.md from the finished sweeps"
    )
    args = parser.parse_args(argv)
    if args.overview:
        print(write_overview(args.out or RESULTS))
        return 0
    out = args.out or RESULTS / f"{args.task}-{args.framework}"
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        runs = finished_runs(runs_dir, args.steps, args.methods, args.warmup)
    else:
        runs = run_sweep(args, runs_dir)
    if not runs:
        parser.error(f"no finished runs of {args.steps} steps in {runs_dir}")
    report, summary = summarize(runs, args.widths, args.lrs, args.methods)
    plot(runs, args.widths, args.methods, out, summary)
    trajectories = plot_trajectories(runs, max(args.widths), summary, out)
    task = load_task(args.task)
    devices = sorted({str(r.get("device", "cpu")) for r in runs})
    table_text = ""
    if (out / TABLE_FILE).exists():
        table = AlignmentTable.read(out / TABLE_FILE)
        rows = [(kind, *triple, table.layers[kind]) for kind, triple in table.alignments.items()]
        table_text = (
            f"maxp-meas's alignment table (`{TABLE_FILE}`), measured on {table.source}:\n\n```\n"
            + format_table(rows, ("kind", "alpha", "omega", "u", "layers"))
            + "\n```\n\n"
        )
    markdown = (
        f"# Learning-rate sweep: {task.description}, {args.framework}\n\n"
        f"{args.steps} steps ({args.warmup} of linear warm-up), batch {task.batch}, Adam without weight "
        f"decay, {args.seeds} seed(s), "
        f"learning rates {', '.join(f'{lr:g}' for lr in args.lrs)}, "
        f"device: {', '.join(devices)}. Final train loss = mean of the last {FINAL_WINDOW} steps "
        f"(averaged over seeds; the spread column is max - min over seeds); a run is diverged when its "
        f"loss is NaN/inf or above {DIVERGED_FACTOR:g}x its start, and a rate counts as diverging when "
        "any seed diverged. For the muP methods the learning rate is the prefactor of every layer's "
        "`n^-c`.\n\n"
        f"{report}\n"
        + "\n".join(verdicts(summary, args.widths))
        + "\n\n"
        + table_text
        + "![transfer](sweep-transfer.png)\n\n![curves](sweep-curves.png)\n"
        + "".join(f"\n![{name}]({name})\n" for name in trajectories)
    )
    (out / "sweep.md").write_text(markdown)
    grid_size = len(args.methods) * len(args.widths) * len(args.lrs) * args.seeds
    (out / "sweep.json").write_text(
        json.dumps(
            {
                "summary": summary,
                "code": code_version(),
                "grid": grid_size,
                "devices": devices,
                "args": vars(args) | {"out": os.path.relpath(out)},
            },
            indent=2,
            default=str,
        )
    )
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
