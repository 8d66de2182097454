"""Learning-rate sweep: does the best rate transfer across width, and does maxP train faster?

Run ``python -m benchmarks.sweep`` (``--widths``, ``--lrs``, ``--methods``, ``--seeds``,
``--steps``, ``--out``). Trains a digits MLP (PyTorch, AdamW) for every learning rate x
width x method x seed:

* ``sp``: standard parametrization (PyTorch's default init), one global rate;
* ``mup-full`` / ``mup-no``: muP with the LP's rates for full / no alignment, fixed;
* ``maxp``: muP with dynamic alignment (re-solved every 10 steps after 20).

A run stops early when its loss turns NaN or inf or exceeds 3x its start (diverged).
Each run writes ``runs/<id>.json``; finished runs are skipped when the sweep is started
again, so a half-finished sweep resumes. The report (``sweep.md``) gives the best rate per
width and method, the first diverging rate, their ratio, and how far the best rate
moves from the smallest to the largest width; ``sweep-transfer.png`` draws loss against
learning rate per width for each method and ``sweep-curves.png`` the training curves at
the best rates.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from maxp_core.cli import format_table

RESULTS = Path(__file__).resolve().parent / "results" / "sweep"
METHODS = ("sp", "mup-full", "mup-no", "maxp")
DIVERGED_FACTOR = 3.0


def run_one(
    method: str, width: int, lr: float, seed: int, steps: int, depth: int = 4, batch: int = 128
) -> dict[str, Any]:
    """Train one configuration; return its loss curve and outcome."""
    import torch
    from torch import nn

    from examples.common import digits_split
    from maxp_torch import Parametrization, ParametrizedModule

    torch.manual_seed(seed)
    x_train, x_test, y_train, y_test = (torch.as_tensor(v) for v in digits_split())
    y_train, y_test = y_train.long(), y_test.long()
    sizes = [64] + [width] * (depth - 1) + [10]
    types = ["embedding"] + ["hidden"] * (depth - 2) + ["readout"]
    layers: list[nn.Module] = []
    for i in range(depth):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        layers.append(
            linear if method == "sp" else ParametrizedModule(linear, width_dim=width, layer_type=types[i])
        )
        if i < depth - 1:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    param = None
    if method == "sp":
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    else:
        dynamic = method == "maxp"
        param = Parametrization(
            model,
            lr_prefactor=lr,
            alignment="no" if method == "mup-no" else "full",
            warmup_steps=20 if dynamic else 10**9,
            solve_interval=10,
            seed=seed,
        )
        optimizer = torch.optim.AdamW(param.param_groups, weight_decay=0.0)
        param.capture_initial(x_train[:64])
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    diverged = False
    for _ in range(steps):
        idx = torch.as_tensor(rng.integers(0, len(x_train), batch))
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        value = loss.item()
        losses.append(value)
        if not math.isfinite(value) or value > DIVERGED_FACTOR * losses[0]:
            diverged = True
            break
        loss.backward()
        optimizer.step()
        if param is not None:
            param.step(x_train[idx], optimizer)
    with torch.no_grad():
        test_loss = float(nn.functional.cross_entropy(model(x_test), y_test))
    final = float(np.mean(losses[-20:])) if not diverged else float("inf")
    return {
        "method": method,
        "width": width,
        "lr": lr,
        "seed": seed,
        "steps": len(losses),
        "diverged": diverged,
        "final_train_loss": final,
        "test_loss": test_loss if math.isfinite(test_loss) and not diverged else float("inf"),
        "losses": losses,
    }


def run_id(method: str, width: int, lr: float, seed: int) -> str:
    return f"{method}_w{width}_lr{lr:.3g}_s{seed}"


def summarize(
    runs: list[dict[str, Any]], widths: list[int], lrs: list[float], methods: list[str]
) -> tuple[str, dict]:
    """Best rate per width and method, first diverging rate, and how the best rate moves."""
    summary: dict[str, dict[int, dict[str, Any]]] = {}
    rows = []
    for method in methods:
        summary[method] = {}
        for width in widths:
            by_lr = {}
            for lr in lrs:
                mine = [r for r in runs if r["method"] == method and r["width"] == width and r["lr"] == lr]
                if mine:
                    by_lr[lr] = (
                        float(np.mean([r["final_train_loss"] for r in mine])),
                        any(r["diverged"] for r in mine),
                    )
            finite = {lr: v for lr, (v, d) in by_lr.items() if math.isfinite(v) and not d}
            best = min(finite, key=finite.get) if finite else None
            first_div = min((lr for lr, (_, d) in by_lr.items() if d), default=None)
            summary[method][width] = {
                "best_lr": best,
                "best_loss": finite.get(best) if best else None,
                "first_diverging": first_div,
            }
            rows.append(
                (
                    method,
                    width,
                    "-" if best is None else f"{best:.3g}",
                    "-" if best is None else f"{finite[best]:.4f}",
                    "-" if first_div is None else f"{first_div:.3g}",
                    "-" if best is None or first_div is None else f"{first_div / best:.3g}",
                )
            )
    shift_rows = []
    for method in methods:
        small, large = summary[method][widths[0]]["best_lr"], summary[method][widths[-1]]["best_lr"]
        shift = None if not small or not large else math.log2(large / small)
        shift_rows.append((method, f"{widths[0]} -> {widths[-1]}", "-" if shift is None else f"{shift:+.1f}"))
    table = format_table(rows, ("method", "width", "best lr", "loss at best", "first diverging lr", "ratio"))
    shifts = format_table(shift_rows, ("method", "widths", "best-lr shift (log2)"))
    return (
        f"```\n{table}\n```\n\nHow far the best rate moves as width grows:\n\n```\n{shifts}\n```\n",
        summary,
    )


def plot(runs: list[dict[str, Any]], widths: list[int], methods: list[str], out: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        for width in widths:
            mine = sorted(
                (r for r in runs if r["method"] == method and r["width"] == width), key=lambda r: r["lr"]
            )
            lrs = sorted({r["lr"] for r in mine})
            losses = [np.mean([r["final_train_loss"] for r in mine if r["lr"] == lr]) for lr in lrs]
            losses = [v if math.isfinite(v) else np.nan for v in losses]
            ax.plot(lrs, losses, marker="o", label=f"width {width}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(method)
        ax.set_xlabel("learning rate (prefactor)")
    axes[0][0].set_ylabel("final train loss")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sweep-transfer.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(widths), figsize=(4.2 * len(widths), 3.6), sharey=True, squeeze=False)
    for ax, width in zip(axes[0], widths, strict=True):
        for method in methods:
            best = summary[method][width]["best_lr"]
            mine = [r for r in runs if r["method"] == method and r["width"] == width and r["lr"] == best]
            if mine:
                ax.plot(mine[0]["losses"], label=f"{method} (lr {best:.3g})")
        ax.set_yscale("log")
        ax.set_title(f"width {width}, best rates")
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("train loss")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sweep-curves.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument(
        "--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs_dir = args.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    grid = [
        (m, w, lr, s) for m in args.methods for w in args.widths for lr in args.lrs for s in range(args.seeds)
    ]
    runs = []
    for method, width, lr, seed in tqdm(grid, desc="sweep", unit="run"):
        path = runs_dir / f"{run_id(method, width, lr, seed)}.json"
        if path.exists():
            record = json.loads(path.read_text())
            if record.get("steps_requested") == args.steps:
                runs.append(record)
                continue
        record = run_one(method, width, lr, seed, args.steps)
        record["steps_requested"] = args.steps
        path.write_text(json.dumps(record))
        runs.append(record)
    report, summary = summarize(runs, args.widths, args.lrs, args.methods)
    plot(runs, args.widths, args.methods, args.out, summary)
    verdicts = []
    for width in args.widths:
        mp, mf = summary.get("maxp", {}).get(width), summary.get("mup-full", {}).get(width)
        if mp and mf and mp["best_loss"] is not None and mf["best_loss"] is not None:
            better = mp["best_loss"] < mf["best_loss"]
            verdicts.append(
                f"- width {width}: maxP {'beats' if better else 'does not beat'} muP-full at their best "
                f"rates ({mp['best_loss']:.4f} vs {mf['best_loss']:.4f})."
            )
    markdown = (
        "# Learning-rate sweep: digits MLP (depth 4, AdamW, PyTorch)\n\n"
        f"{args.steps} steps, batch 128, {args.seeds} seed(s); final train loss = mean of the last 20 "
        f"steps; a run is diverged when its loss is NaN/inf or above {DIVERGED_FACTOR:g}x its start. "
        "For the muP methods the learning rate is the prefactor of every layer's `n^-c`.\n\n"
        f"{report}\n"
        + "\n".join(verdicts)
        + "\n\n![transfer](sweep-transfer.png)\n\n![curves](sweep-curves.png)\n"
    )
    (args.out / "sweep.md").write_text(markdown)
    (args.out / "sweep.json").write_text(
        json.dumps({"summary": summary, "grid": len(grid)}, indent=2, default=str)
    )
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
