"""Training outcomes of the LP's two tie rules: dynamic maxP with ``"preset"`` and ``"later"``.

Run ``python -m benchmarks.tie_rule_outcomes`` after the sweeps it reads (the commands are
in ``benchmarks/results/tie_rule/README.md``): each trains ``mup-full``, ``maxp-preset`` and
``maxp-later`` on one task and framework with the same seeds, so every run of one rule has
a twin of the other with the same initial draw and batches. Two views:

* **Each method at its best rate** (mean final train loss over seeds), paired by seed with
  :func:`benchmarks.sweep.compare_paired`: preset against later, and each against muP-full.
* **Every rate**: the two rules at the same rate and seed, over the whole grid: how often
  each ends lower, the median ratio of their final losses, and how many runs diverged.

Writes ``benchmarks/results/tie_rule/README.md`` and ``outcomes.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

from benchmarks.report import code_version
from benchmarks.sweep import RESULTS, compare_paired, finished_runs, summarize
from maxp_core.text import format_table

OUT = RESULTS.parent / "tie_rule"
RULES = ("maxp-preset", "maxp-later")
METHODS = ("mup-full", *RULES)


def load_sweep(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A sweep's arguments and its finished runs of the compared methods."""
    args = json.loads((folder / "sweep.json").read_text())["args"]
    runs = finished_runs(folder / "runs", args["steps"], list(METHODS), args.get("warmup", 0))
    return args, runs


def at_best_rates(args: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per width: each method's best rate and loss, and the paired verdicts between them."""
    _, summary = summarize(runs, args["widths"], args["lrs"], list(METHODS))
    rows = []
    for width in args["widths"]:
        best = {m: summary["best"][m][width] for m in METHODS}
        row: dict[str, Any] = {"width": width}
        for method in METHODS:
            row[method] = {k: best[method][k] for k in ("best_lr", "best_loss", "test_loss")}
        for first, second in ((RULES[0], RULES[1]), (RULES[0], "mup-full"), (RULES[1], "mup-full")):
            if best[first]["best_loss"] is None or best[second]["best_loss"] is None:
                continue
            comparison = compare_paired(best[first], best[second], (first, second))
            row[f"{first} vs {second}"] = comparison._asdict()
        rows.append(row)
    return rows


def at_every_rate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The two rules at the same (width, rate, seed) over the grid."""
    by_key: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for r in runs:
        if r["method"] in RULES:
            by_key.setdefault((r["width"], r["lr"], r["seed"]), {})[r["method"]] = r
    pairs = [v for v in by_key.values() if len(v) == 2]
    finite = [
        (p[RULES[0]]["final_train_loss"], p[RULES[1]]["final_train_loss"])
        for p in pairs
        if not (p[RULES[0]]["diverged"] or p[RULES[1]]["diverged"])
    ]
    preset, later = (np.array(v, dtype=np.float64) for v in zip(*finite, strict=True)) if finite else ([], [])
    ratios = np.log(np.asarray(later) / np.asarray(preset)) if finite else np.array([])
    lower = (int(np.sum(ratios > 0)), int(np.sum(ratios < 0)))
    return {
        "pairs": len(pairs),
        "sign_test_p": float(binomtest(lower[0], sum(lower)).pvalue) if sum(lower) else math.nan,
        "both_finite": len(finite),
        "preset_lower": lower[0],
        "later_lower": lower[1],
        "median_ratio_later_over_preset": float(np.exp(np.median(ratios))) if finite else math.nan,
        "diverged": {rule: sum(p[rule]["diverged"] for p in pairs) for rule in RULES},
    }


def _cell(entry: dict[str, Any]) -> str:
    if entry["best_loss"] is None:
        return "diverged"
    return f"{entry['best_loss']:.4f} @ {entry['best_lr']:g}"


def to_markdown(outcomes: dict[str, Any]) -> str:
    best_rows, every_rows = [], []
    for name, result in outcomes["sweeps"].items():
        for row in result["best"]:
            verdicts = []
            for key in (f"{RULES[0]} vs {RULES[1]}", f"{RULES[0]} vs mup-full", f"{RULES[1]} vs mup-full"):
                c = row.get(key)
                verdicts.append("-" if c is None else f"{c['winner']} ({c['maxp_lower']}/{c['seeds']})")
            pair = row.get(f"{RULES[0]} vs {RULES[1]}")
            gap = "-" if pair is None else f"{pair['gap']:+.4f} ({pair['noise']:.4f})"
            best_rows.append((name, row["width"], *(_cell(row[m]) for m in METHODS), gap, *verdicts))
        every = result["every_rate"]
        every_rows.append(
            (
                name,
                every["both_finite"],
                every["preset_lower"],
                every["later_lower"],
                f"{every['median_ratio_later_over_preset']:.3f}",
                f"{every['sign_test_p']:.2f}",
                f"{every['diverged'][RULES[0]]} / {every['diverged'][RULES[1]]}",
            )
        )
    best_table = format_table(
        best_rows,
        (
            "sweep",
            "width",
            "muP-full",
            "maxP preset",
            "maxP later",
            "later - preset (spread)",
            "preset vs later",
            "preset vs muP-full",
            "later vs muP-full",
        ),
    )
    every_table = format_table(
        every_rows,
        (
            "sweep",
            "paired runs",
            "preset lower",
            "later lower",
            "median later/preset",
            "sign test p",
            "diverged p / l",
        ),
    )
    commands = "\n".join(outcomes["commands"])
    return (
        "# Tie rule of the LP in training: `preset` against `later`\n\n"
        "Dynamic maxP (alignments measured on a fixed probe, the LP re-solved every 10 steps after "
        "20) with each tie rule, and muP-full, trained on the same seeds (initial draw and batches). "
        "Final train loss = mean of the last 20 of 300 steps. Written by "
        "`python -m benchmarks.tie_rule_outcomes` from the sweeps made by:\n\n"
        f"```sh\n{commands}\n```\n\n"
        "## Each method at its best rate\n\n"
        "Best-rate loss `mean over seeds @ rate`; `later - preset` is the mean over seeds of the "
        "paired gap at each rule's best rate (positive: preset lower) with the max - min of the "
        "per-seed gaps; a verdict names a winner only when it is lower on every seed and the mean "
        "gap exceeds that spread (`first lower / seeds` in brackets).\n\n"
        f"```\n{best_table}\n```\n\n"
        "## Every rate\n\n"
        "The two rules at the same width, rate and seed, over the whole grid (runs where neither "
        "diverged); `median later/preset` is the median ratio of their final losses (above 1: "
        "preset lower); `sign test p` is the two-sided binomial test of the lower counts against a coin "
        "flip; `diverged` counts the diverged runs of each rule.\n\n"
        f"```\n{every_table}\n```\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tie_rule_outcomes", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the sweeps; the report goes there")
    args = parser.parse_args(argv)
    sweeps: dict[str, Any] = {}
    commands = []
    for report in sorted(args.out.glob("*/sweep.json")):
        sweep_args, runs = load_sweep(report.parent)
        if not runs:
            continue
        sweeps[report.parent.name] = {
            "best": at_best_rates(sweep_args, runs),
            "every_rate": at_every_rate(runs),
            "seeds": sweep_args["seeds"],
        }
        commands.append(
            f"python -m benchmarks.sweep --task {sweep_args['task']} --framework {sweep_args['framework']} "
            f"--widths {' '.join(map(str, sweep_args['widths']))} "
            f"--lrs {' '.join(f'{lr:g}' for lr in sweep_args['lrs'])} --methods {' '.join(METHODS)} "
            f"--seeds {sweep_args['seeds']} --device cpu --out {report.parent.relative_to(Path.cwd())}"
        )
    if not sweeps:
        parser.error(f"no sweep with {', '.join(METHODS)} under {args.out}")
    outcomes = {"sweeps": sweeps, "commands": commands, "code": code_version()}
    markdown = to_markdown(outcomes)
    (args.out / "README.md").write_text(markdown)
    (args.out / "outcomes.json").write_text(json.dumps(outcomes, indent=2, default=str) + "\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
