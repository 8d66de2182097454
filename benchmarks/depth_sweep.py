"""Depth sweep: does the best learning rate transfer across depth?

Run ``python -m benchmarks.depth_sweep`` (``--task digits|chars``, ``--depths``, ``--width``,
``--lrs``, ``--methods``, ``--seeds``, ``--steps``, ``--jobs``, ``--out``). Trains every learning
rate x depth x method x seed with Adam (no weight decay) in PyTorch:

* ``sp``: the standard model (PyTorch's initialisation), one global rate;
* ``mup``: muP (the LP's rates for full alignment), the rate prefactor unchanged with depth;
* ``mup-chen``: muP times Chen et al.'s depth/topology factor against the smallest depth
  (:class:`maxp_core.ChenScaling`; on the GPT without the in-degree init, which its
  LayerNorms make moot);
* ``mup-completep``: muP with CompleteP's residual-branch multiplier ``(L/L_base)^-1``
  (:class:`maxp_core.BranchScaling`, ``alpha = 1``), GPT only.

Depth is the MLP's number of weighted layers on ``digits`` and the GPT's number of blocks on
``chars`` (:mod:`benchmarks.sweep_tasks`). The base of both rules is the smallest depth of the
sweep, so a rule that transfers keeps the best prefactor where it is. Runs are files under
``runs/``; a sweep started again skips the finished ones. The report (``depth.md``) gives the
best rate per depth and method, the first diverging rate, how far the best rate moves over the
depths, and ``depth-transfer.png`` / ``depth-curves.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.report import code_version
from benchmarks.sweep import RESULTS, finished_run, finished_runs, plot, summarize
from benchmarks.sweep_tasks import DIVERGED_FACTOR, FINAL_WINDOW, TASKS, Task, load_task
from benchmarks.threads import pin_threads, single_threaded
from maxp_core.depth import BranchScaling, ChenScaling, DepthScaling

METHODS = ("sp", "mup", "mup-chen", "mup-completep")
DEPTH_RESULTS = RESULTS.parent / "depth"


def task_at_depth(task: Task, depth: int) -> Task:
    """The task's network at ``depth`` (MLP layers on digits, GPT blocks on chars)."""
    if task.name == "chars":
        return dataclasses.replace(task, blocks=depth, description=f"character-level GPT, {depth} blocks")
    return dataclasses.replace(task, depth=depth, description=f"digits MLP, {depth} layers")


def base_graph(task: Task, base: int, width: int) -> Any:
    """The op graph of the task's network at the base depth (traced for the GPT)."""
    if task.name != "chars":
        return base  # a chain: Chen's rule needs only its number of layers
    import torch

    from benchmarks.sweep_torch import build_model
    from maxp_torch import Parametrization

    model = build_model(task_at_depth(task, base), "mup-full", width)
    return Parametrization(model, sample_input=torch.as_tensor(task.probe)).graph


def depth_rule(task: Task, method: str, depth: int, base: int, width: int) -> DepthScaling | None:
    """The depth rule of ``method`` at ``depth`` against ``base``."""
    if method == "mup-chen":
        init = None if task.name == "chars" else "target"
        return ChenScaling(base=base_graph(task, base, width), init=init)
    if method == "mup-completep":
        if task.name != "chars":
            raise ValueError("mup-completep needs residual blocks: use it with --task chars")
        return BranchScaling(alpha=1.0, depth=depth, base_depth=base)
    return None


def run_id(method: str, depth: int, lr: float, seed: int) -> str:
    return f"{method}_d{depth}_lr{lr:.3g}_s{seed}"


def run_group(
    task_name: str,
    method: str,
    depth: int,
    base: int,
    width: int,
    settings: list[tuple[float, int]],
    steps: int,
    runs_dir: Path,
) -> Iterator[dict[str, Any]]:
    """Train one method at one depth for every (rate, seed), writing each run's file as it ends."""
    from benchmarks.sweep_torch import train

    task = load_task(task_name)
    rule = depth_rule(task, method, depth, base, width)
    deep = task_at_depth(task, depth)
    kind = "sp" if method == "sp" else "mup-full"
    for lr, seed in settings:
        start = time.perf_counter()
        record = train(deep, kind, width, lr, seed, steps, "cpu", depth=rule)
        record |= {"method": method, "depth": depth, "seconds": time.perf_counter() - start}
        record["steps_requested"] = steps
        record["code"] = code_version()
        (runs_dir / f"{run_id(method, depth, lr, seed)}.json").write_text(json.dumps(record))
        yield record


def _group_in_worker(*args: Any) -> list[dict[str, Any]]:
    pin_threads()
    return list(run_group(*args))


def run_sweep(args: argparse.Namespace, runs_dir: Path) -> list[dict[str, Any]]:
    """Every run of the grid: finished ones read back, the rest trained (seed 0 first)."""
    runs: list[dict[str, Any]] = []
    todo = []
    base = min(args.depths)
    for seed in range(args.seeds):
        for depth in sorted(args.depths, reverse=True):
            for method in args.methods:
                left = []
                for lr in args.lrs:
                    path = runs_dir / f"{run_id(method, depth, lr, seed)}.json"
                    retrain = method in (getattr(args, "retrain", None) or ())
                    record = None if retrain else finished_run(path, args.steps)
                    if record is None:
                        left.append((lr, seed))
                    else:
                        runs.append(record)
                if left:
                    todo.append((args.task, method, depth, base, args.width, left, args.steps, runs_dir))
    progress = tqdm(total=sum(len(t[5]) for t in todo), desc=f"depth sweep {args.task}", unit="run")
    if args.jobs <= 1:
        for group in todo:
            for record in run_group(*group):
                runs.append(record)
                progress.update()
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            for future in as_completed([pool.submit(_group_in_worker, *group) for group in todo]):
                records = future.result()
                runs.extend(records)
                progress.update(len(records))
    progress.close()
    return runs


def verdicts(summary: dict[str, Any], depths: list[int]) -> list[str]:
    """Plain sentences: how far each method's best rate moves over the depths, against SP's and muP's."""
    shifts = summary["shift"]
    lines = []
    for method, shift in shifts.items():
        if shift is None:
            continue
        lines.append(
            f"- {method}: the best rate moves {shift:+.1f} octaves from depth {depths[0]} to {depths[-1]}"
            + (
                f" ({'less than' if abs(shift) < abs(shifts['mup']) else 'not less than'} muP's "
                f"{shifts['mup']:+.1f})."
                if method.startswith("mup-") and shifts.get("mup") is not None
                else "."
            )
        )
    return lines


@single_threaded
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.depth_sweep", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--task", choices=TASKS, default="digits")
    parser.add_argument("--depths", type=int, nargs="+", help="default: digits 2 4 8 16, chars 1 2 4 8")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=1, help="groups of runs trained in parallel")
    parser.add_argument("--out", type=Path, default=None, help="default: results/depth/<task>")
    parser.add_argument("--report-only", action="store_true", help="write the report; train nothing")
    parser.add_argument(
        "--retrain", nargs="+", choices=METHODS, default=[], help="train these methods' finished runs again"
    )
    args = parser.parse_args(argv)
    args.depths = sorted(args.depths or ([1, 2, 4, 8] if args.task == "chars" else [2, 4, 8, 16]))
    if args.methods is None:
        args.methods = [m for m in METHODS if args.task == "chars" or m != "mup-completep"]
    if args.task != "chars" and "mup-completep" in args.methods:
        parser.error("mup-completep needs residual blocks: use it with --task chars")
    out = args.out or DEPTH_RESULTS / args.task
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        runs = finished_runs(runs_dir, args.steps, args.methods)
    else:
        runs = run_sweep(args, runs_dir)
    if not runs:
        parser.error(f"no finished runs of {args.steps} steps in {runs_dir}")
    report, summary = summarize(runs, args.depths, args.lrs, args.methods, axis="depth")
    plot(runs, args.depths, args.methods, out, summary, axis="depth", prefix="depth")
    task = load_task(args.task)
    unit = "blocks" if args.task == "chars" else "weighted layers"
    markdown = (
        f"# Depth sweep: {task.name}, depth = {unit}, width {args.width}\n\n"
        f"{args.steps} steps, batch {task.batch}, Adam without weight decay, {args.seeds} seed(s), "
        f"learning rates {', '.join(f'{lr:g}' for lr in args.lrs)}, PyTorch on CPU. Final train loss = "
        f"mean of the last {FINAL_WINDOW} steps (averaged over seeds; spread = max - min over seeds); a "
        f"run diverged when its loss is NaN/inf or above {DIVERGED_FACTOR:g}x its start. The depth rules' "
        f"base is depth {args.depths[0]}.\n\n"
        f"{report}\n" + "\n".join(verdicts(summary, args.depths)) + "\n\n"
        "![transfer](depth-transfer.png)\n\n![curves](depth-curves.png)\n"
    )
    (out / "depth.md").write_text(markdown)
    saved = {"summary": summary, "code": code_version(), "args": vars(args) | {"out": os.path.relpath(out)}}
    (out / "depth.json").write_text(json.dumps(saved, indent=2, default=str))
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
