"""Do today's code and the committed results still agree? Replay committed runs and compare.

Run ``python -m benchmarks.reproduce`` (``--steps``, ``--all``). Every sweep run is
deterministic given its settings, so the first steps of a committed run, trained again
with today's code, must give the same losses to float precision. By default one run per
method of each CPU sweep is replayed (the method's best rate at the smallest size, seed 0:
the run its evidence leans on; in the tie-rule sweeps, the default rule's arm); ``--all``
replays every run. Records made on an accelerator are not replayed on a CPU (their floats
differ by design). Like the sweeps, the replay runs on one CPU thread
(:mod:`benchmarks.threads`). A run that no longer reproduces names the command that
regenerates its arm.

Example:
  >>> checks = sample_checks(RESULTS_ROOT / "sweep" / "digits-torch")
  >>> sorted(check.record["method"] for check in checks), {check.record["width"] for check in checks}
  (['maxp', 'mup-full', 'mup-no', 'sp'], {64})
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.threads import single_threaded

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
#: Steps replayed per run: past maxP's first re-solves (after 20 steps, every 10).
REPLAY_STEPS = 40
#: The arm of each tie-rule sweep sampled by default: the default rule (the others' code paths are
#: the main sweeps'; ``--all`` replays them too).
TIE_RULE_SAMPLE = ("maxp-preset",)
#: Relative tolerance on each replayed loss. Float32 kernels sum in another order on another
#: CPU: runs made in another session agree to 1e-6 over 40 steps; a changed LP answer moves
#: losses by 1e-2 within 12 steps of the re-solve.
RTOL = 1e-4


@dataclass(frozen=True)
class Check:
    """One committed run to replay: its file, its sweep's folder and what kind of sweep."""

    path: Path
    sweep_dir: Path
    kind: str  # "sweep" or "depth"

    @property
    def record(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())

    @property
    def label(self) -> str:
        r = self.record
        size = f"d{r['depth']}" if self.kind == "depth" else f"w{r['width']}"
        where = self.sweep_dir.relative_to(RESULTS_ROOT).as_posix()
        return f"{where} {r['method']} {size} lr{r['lr']:g} s{r['seed']}"


def sweep_args(sweep_dir: Path) -> dict[str, Any]:
    """The arguments a sweep folder's report was written with."""
    name = "depth.json" if (sweep_dir / "depth.json").exists() else "sweep.json"
    return json.loads((sweep_dir / name).read_text())["args"]


def regenerate_command(sweep_dir: Path, methods: list[str]) -> str:
    """The command that trains ``methods`` of the sweep in ``sweep_dir`` again and rewrites its report."""
    args = sweep_args(sweep_dir)
    depth = (sweep_dir / "depth.json").exists()
    words = ["python", "-m", "benchmarks.depth_sweep" if depth else "benchmarks.sweep"]
    words += ["--task", args["task"]]
    if depth:
        words += ["--depths", *map(str, args["depths"]), "--width", str(args["width"])]
    else:
        words += ["--framework", args["framework"], "--widths", *map(str, args["widths"])]
    words += ["--lrs", *(f"{lr:g}" for lr in args["lrs"]), "--methods", *args["methods"]]
    words += ["--seeds", str(args["seeds"]), "--steps", str(args["steps"])]
    if args.get("warmup"):
        words += ["--warmup", str(args["warmup"])]
    if not depth:
        words += ["--device", "cpu"]
    words += ["--retrain", *methods, "--out", sweep_dir.relative_to(RESULTS_ROOT.parent.parent).as_posix()]
    return shlex.join(words)


def _cpu_sweeps() -> list[tuple[Path, str]]:
    """Sweep folders whose runs were made on a CPU, with their kind."""
    found = []
    for kind, pattern in (
        ("sweep", "sweep/*/sweep.json"),
        ("sweep", "tie_rule/*/sweep.json"),
        ("depth", "depth/*/depth.json"),
    ):
        for report in sorted(RESULTS_ROOT.glob(pattern)):
            runs = [json.loads(p.read_text()) for p in sorted((report.parent / "runs").glob("*.json"))[:20]]
            if runs and all(str(r.get("device", "cpu")) == "cpu" for r in runs):
                found.append((report.parent, kind))
    return found


def sample_checks(sweep_dir: Path) -> list[Check]:
    """One run per method: its best rate at the smallest size, seed 0 (see the module docstring)."""
    kind = "depth" if (sweep_dir / "depth.json").exists() else "sweep"
    summary = json.loads((sweep_dir / f"{kind if kind == 'depth' else 'sweep'}.json").read_text())["summary"]
    args = sweep_args(sweep_dir)
    smallest = min(args["depths"] if kind == "depth" else args["widths"])
    checks = []
    methods = args["methods"]
    if sweep_dir.parent.name == "tie_rule":
        methods = [m for m in methods if m in TIE_RULE_SAMPLE]
    for method in methods:
        best = summary["best"][method][str(smallest)]["best_lr"]
        if best is None:
            continue
        size = f"d{smallest}" if kind == "depth" else f"w{smallest}"
        path = sweep_dir / "runs" / f"{method}_{size}_lr{best:.3g}_s0.json"
        if path.exists():
            checks.append(Check(path, sweep_dir, kind))
    return checks


def all_checks(sample: bool = True) -> list[Check]:
    """The runs to replay in every CPU sweep: a sample (one per method) or all of them."""
    checks = []
    for sweep_dir, kind in _cpu_sweeps():
        if sample:
            checks += sample_checks(sweep_dir)
        else:
            checks += [Check(p, sweep_dir, kind) for p in sorted((sweep_dir / "runs").glob("*.json"))]
    return checks


def replay(check: Check, steps: int = REPLAY_STEPS) -> list[float]:
    """The first ``steps`` losses of ``check``'s run, trained again with today's code."""
    from benchmarks.sweep import TABLE_FILE, make_trainer
    from benchmarks.sweep_tasks import load_task
    from maxp_core.tables import AlignmentTable

    record = check.record
    steps = min(steps, len(record["losses"]))
    args = sweep_args(check.sweep_dir)
    if check.kind == "depth":
        from benchmarks.depth_sweep import run_group

        with tempfile.TemporaryDirectory() as tmp:
            group = run_group(
                args["task"],
                record["method"],
                record["depth"],
                min(args["depths"]),
                args["width"],
                [(record["lr"], record["seed"])],
                steps,
                Path(tmp),
            )
            return [float(v) for v in next(iter(group))["losses"]]
    table_path = check.sweep_dir / TABLE_FILE
    table = AlignmentTable.read(table_path) if record["method"] == "maxp-meas" else None
    task = load_task(args["task"])
    train = make_trainer(
        task, args["framework"], record["method"], record["width"], "cpu", table, record.get("warmup", 0)
    )
    return [float(v) for v in train(record["lr"], record["seed"], steps)["losses"]]


def mismatch(check: Check, replayed: list[float]) -> str | None:
    """Why the replay disagrees with the committed losses, or ``None`` when it agrees."""
    committed = np.asarray(check.record["losses"][: len(replayed)], dtype=np.float64)
    today = np.asarray(replayed, dtype=np.float64)
    if len(today) != len(committed):
        return f"{check.label}: {len(today)} losses replayed against {len(committed)} committed"
    close = np.isclose(today, committed, rtol=RTOL, atol=0.0)
    if close.all():
        return None
    step = int(np.argmin(close))
    method = check.record["method"]
    return (
        f"{check.label} ({check.path.name}) no longer reproduces: at step {step + 1} the committed loss "
        f"is {committed[step]:.8g} and today's code gives {today[step]:.8g} (code that made it: "
        f"{check.record.get('code', 'not recorded')}). Regenerate its arm: "
        f"{regenerate_command(check.sweep_dir, [method])}"
    )


@single_threaded
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reproduce", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--steps", type=int, default=REPLAY_STEPS, help="steps replayed per run")
    parser.add_argument("--all", action="store_true", help="replay every run, not one per method")
    parser.add_argument("--json", action="store_true", help="end with {run: problem or null} as JSON")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    from tqdm import tqdm

    problems: dict[str, str | None] = {}
    checks = all_checks(sample=not args.all)
    for check in tqdm(checks, desc="replaying committed runs", unit="run"):
        problems[check.label] = mismatch(check, replay(check, args.steps))
        if problems[check.label]:
            tqdm.write(str(problems[check.label]))
    failed = sum(p is not None for p in problems.values())
    print(f"{len(checks) - failed} of {len(checks)} committed runs reproduce")
    if args.json:
        print(json.dumps(problems))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
