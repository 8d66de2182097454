"""Does the learning rate tuned for the standard model transfer with a base width?

Run ``python -m benchmarks.base_width`` (``--widths 64 512 --lrs ... --seeds 3 --steps 300
--jobs 2``). Trains the digits MLP of :mod:`benchmarks.sweep` in PyTorch with AdamW over a
grid of learning rates, at the base width and at larger widths, for three methods:

* ``sp``: the standard model (PyTorch's initialisation), one learning rate;
* ``mup-full``: muP with the LP's rates for full alignment and ``base_width`` = the smallest
  width, fixed;
* ``maxp``: the same with dynamic alignment (re-solved every 10 steps after 20).

At the base width both muP methods start as the ``sp`` model with its one rate (the same
weights, every layer at the rate), so the rate tuned for ``sp`` there is the rate to give
them; the question is whether that rate stays the best as the model grows. The report
(``base_width.md``, ``base_width.json``, ``base_width.png``: loss against rate per width)
gives each method's best rate per width, how many grid steps it lies from ``sp``'s best at
the base width, and checks that ``sp`` and ``mup-full`` trained identically at the base width.
"""

from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.report import code_version
from benchmarks.sweep_tasks import load_task
from benchmarks.threads import pin_threads
from maxp_core.text import format_table

METHODS = ("sp", "mup-full", "maxp")
DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
OUT = Path(__file__).parent / "results" / "base_width"


def train_one(method: str, width: int, lr: float, seed: int, steps: int, base_width: int) -> dict[str, Any]:
    """One run's record (the sweep's record, plus the base width)."""
    pin_threads()
    from benchmarks.sweep_torch import train

    base = None if method == "sp" else base_width
    record = train(load_task("digits"), method, width, lr, seed, steps, base_width=base)
    return {k: v for k, v in record.items() if k not in ("metrics", "layers")}


def best_rates(runs: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (method, width): the rate with the lowest mean final train loss over seeds."""
    table: dict[tuple[str, int], dict[float, list[float]]] = {}
    for run in runs:
        table.setdefault((run["method"], run["width"]), {}).setdefault(run["lr"], []).append(
            run["final_train_loss"]
        )
    best = {}
    for key, by_lr in table.items():
        means = {lr: float(np.mean(losses)) for lr, losses in by_lr.items()}
        finite = {lr: m for lr, m in means.items() if math.isfinite(m)}
        lr = min(finite, key=finite.__getitem__) if finite else None
        best[key] = {"lr": lr, "loss": finite.get(lr) if lr else None, "means": means}
    return best


def grid_steps(lr: float | None, reference: float | None, lrs: list[float]) -> int | None:
    """How many grid points ``lr`` lies from ``reference`` (signed; None if either is missing)."""
    if lr is None or reference is None:
        return None
    return lrs.index(lr) - lrs.index(reference)


def identical_at_base(runs: list[dict[str, Any]], base_width: int) -> bool:
    """Whether ``sp`` and ``mup-full`` trained the same loss curves at the base width."""
    curves: dict[tuple[str, float, int], list[float]] = {
        (r["method"], r["lr"], r["seed"]): r["losses"] for r in runs if r["width"] == base_width
    }
    pairs = [(v, curves.get(("mup-full", lr, seed))) for (m, lr, seed), v in curves.items() if m == "sp"]
    return bool(pairs) and all(other is not None and np.allclose(v, other, rtol=1e-5) for v, other in pairs)


def report(runs: list[dict[str, Any]], lrs: list[float], widths: list[int], out: Path) -> str:
    """Write ``base_width.md``/``.json``/``.png`` and return the Markdown."""
    base = min(widths)
    best = best_rates(runs)
    reference = best.get(("sp", base), {}).get("lr")
    rows = []
    for method in METHODS:
        for width in widths:
            entry = best.get((method, width))
            if entry is None:
                continue
            steps = grid_steps(entry["lr"], reference, lrs)
            loss = entry["loss"]
            rows.append(
                (
                    method,
                    width,
                    entry["lr"],
                    "-" if loss is None else f"{loss:.4f}",
                    "-" if steps is None else steps,
                )
            )
    same = identical_at_base(runs, base)
    text = "\n".join(
        [
            "# The standard model's rate, transferred by a base width",
            "",
            f"Digits MLP (depth 4), PyTorch AdamW, {len({r['seed'] for r in runs})} seeds, "
            f"{runs[0]['steps_requested']} steps; base width {base}; code {code_version()}.",
            f"Rates: {', '.join(f'{lr:g}' for lr in lrs)}. Best rate = lowest mean final train loss",
            f"over seeds; `steps from sp@{base}`: grid points between that rate and the best `sp` rate",
            f"at the base width. At the base width `sp` and `mup-full` trained "
            f"{'identical' if same else 'DIFFERENT'} loss curves.",
            "",
            "```",
            format_table(rows, ("method", "width", "best lr", "loss", f"steps from sp@{base}")),
            "```",
        ]
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "base_width.md").write_text(text + "\n")
    summary = {f"{m}@{w}": {"lr": e["lr"], "loss": e["loss"]} for (m, w), e in best.items()}
    (out / "base_width.json").write_text(json.dumps({"best": summary, "identical_at_base": same}, indent=1))
    plot(best, lrs, widths, out / "base_width.png")
    return text


def plot(
    best: dict[tuple[str, int], dict[str, Any]], lrs: list[float], widths: list[int], path: Path
) -> None:
    """Loss against learning rate per width, one panel per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METHODS), figsize=(4.2 * len(METHODS), 3.6), sharey=True)
    for ax, method in zip(axes, METHODS, strict=True):
        for width in widths:
            means = best.get((method, width), {}).get("means", {})
            ys = [means.get(lr, math.nan) for lr in lrs]
            ax.plot(
                lrs, [y if math.isfinite(y) else math.nan for y in ys], marker="o", label=f"width {width}"
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(method)
        ax.set_xlabel("learning rate")
    axes[0].set_ylabel("final train loss")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.base_width", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    lrs, widths = sorted(args.lrs), sorted(args.widths)
    grid = [(m, w, lr, s) for m in METHODS for w in widths for lr in lrs for s in range(args.seeds)]
    runs = []
    if args.jobs <= 1:
        done = (train_one(*cell, args.steps, widths[0]) for cell in grid)
        runs = list(tqdm(done, total=len(grid), desc="runs"))
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(train_one, *cell, args.steps, widths[0]) for cell in grid]
            runs = [
                future.result() for future in tqdm(as_completed(futures), total=len(futures), desc="runs")
            ]
    for record in runs:
        record["steps_requested"] = args.steps
    runs.sort(key=lambda r: (r["method"], r["width"], r["lr"], r["seed"]))
    print(report(runs, lrs, widths, args.out))


if __name__ == "__main__":
    main()
