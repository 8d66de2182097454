"""``python -m maxp_core sweep run|report``: a sweep of a training function from the shell.

``sweep run package.module:train --lr 1e-3 3e-3 1e-2 --width 128 256 --method maxp mup
--seed 0 1 2 --out runs/lr`` trains the grid (``--set key=v1,v2`` adds any other axis;
``--backend ray --address auto`` spreads it over a Ray cluster); ``sweep report runs/lr``
writes ``sweep-report.md``, ``.json`` and the plots next to the records and prints the tables.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from maxp_core.errors import MaxPError
from maxp_core.sweep.grid import Grid
from maxp_core.sweep.report import markdown, write_report
from maxp_core.sweep.runner import BACKENDS, SweepInterrupted, run_sweep

#: Axes with an option of their own; any other comes by ``--set``.
NAMED_AXES = ("width", "depth", "method", "seed")


def add_commands(sub: Any) -> None:
    """The ``sweep`` command and its ``run`` and ``report`` subcommands."""
    sweep = sub.add_parser("sweep", help="learning-rate sweeps of a training function: run, report")
    commands = sweep.add_subparsers(dest="sweep_command", required=True)
    run = commands.add_parser("run", help="train every run of a grid (resumable)")
    run.add_argument("train", help="the training function, package.module:function")
    run.add_argument("--lr", nargs="+", type=float, required=True, help="learning rates")
    for axis in NAMED_AXES:
        run.add_argument(f"--{axis}", nargs="+", type=_value, help=f"{axis} values")
    run.add_argument(
        "--set", action="append", default=[], metavar="KEY=V1,V2", help="another axis and its values"
    )
    run.add_argument("--out", required=True, help="the sweep's folder (records go to OUT/runs)")
    run.add_argument("--backend", choices=BACKENDS, default="local")
    run.add_argument("--jobs", type=int, help="local worker processes (default: one per GPU or CPU core)")
    run.add_argument("--gpus", help="local: GPU ids dealt out to the workers, e.g. 0,1,2,3")
    run.add_argument("--address", help="ray: the cluster's address (auto, ray://host:10001); none starts one")
    run.add_argument("--cpus-per-run", type=float, default=1, help="ray: CPUs each run reserves")
    run.add_argument("--gpus-per-run", type=float, default=0, help="ray: GPUs each run reserves")
    run.add_argument("--retries", type=int, default=2, help="attempts after the first for a failing run")
    run.add_argument(
        "--divergence-factor", type=float, default=3.0, help="a loss above this times the first diverges"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    report = commands.add_parser("report", help="tables and plots from a sweep's records")
    report.add_argument("folder", help="the sweep's folder")
    report.add_argument("--out", help="where to write the report (default: the sweep's folder)")
    report.add_argument("--no-plots", action="store_true", help="tables only")


def _value(text: str) -> int | float | str:
    """A grid value from the command line: an integer, a number, else text.

    Examples:
      >>> _value("128"), _value("3e-3"), _value("maxp")
      (128, 0.003, 'maxp')
    """
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def grid_of(args: argparse.Namespace) -> Grid:
    """The grid the options describe."""
    axes: dict[str, list[Any]] = {"lr": args.lr}
    for axis in NAMED_AXES:
        if getattr(args, axis) is not None:
            axes[axis] = getattr(args, axis)
    for item in args.set:
        key, _, values = item.partition("=")
        if not key or not values:
            raise MaxPError(f"--set {item!r}: give an axis and its values as KEY=V1,V2")
        if key in axes:
            raise MaxPError(f"--set {item!r}: the axis {key!r} is given twice")
        axes[key] = [_value(v) for v in values.split(",")]
    return Grid(**axes)


def run_command(args: argparse.Namespace, out: TextIO) -> int:
    if args.sweep_command == "report":
        summary = write_report(args.folder, args.out, plots=not args.no_plots)
        print(markdown(summary), file=out)
        return 0
    try:
        done = run_sweep(
            args.train,
            grid_of(args),
            args.out,
            backend=args.backend,
            jobs=args.jobs,
            address=args.address,
            retries=args.retries,
            divergence_factor=args.divergence_factor,
            gpus=None if args.gpus is None else args.gpus.split(","),
            cpus_per_run=args.cpus_per_run,
            gpus_per_run=args.gpus_per_run,
            progress=not args.no_progress,
        )
    except SweepInterrupted as interrupted:
        print(str(interrupted), file=sys.stderr)
        return 130
    print(
        f"{done.trained} trained, {done.skipped} done before, {done.diverged} diverged, "
        f"{len(done.failed)} failed in {done.seconds:.1f} s; records in {done.out / 'runs'}. "
        f"Report: python -m maxp_core sweep report {done.out}",
        file=out,
    )
    if done.failed:
        first = done.failed[0]
        print(f"{first} failed: {done.errors[first]} (the whole traceback is in its record)", file=out)
    return 1 if done.failed else 0
