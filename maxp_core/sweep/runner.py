"""Running a sweep: every run of a grid once, on local processes or Ray, resumable and retried."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from maxp_core import validate
from maxp_core.errors import MaxPError
from maxp_core.resolve import warn_user
from maxp_core.sweep.grid import Grid
from maxp_core.sweep.local import LocalWorkers, Outcome, Task, usable_cores
from maxp_core.sweep.records import (
    RunFailed,
    TrainFn,
    execute,
    failed_record,
    is_done,
    resolve_train,
    write_run,
)

BACKENDS = ("local", "ray", "inline")


class Workers(Protocol):
    """What trains runs: local processes, Ray tasks or this process."""

    def capacity(self) -> int:
        """How many more runs can be handed over now."""

    def running(self) -> int:
        """Runs handed over and not back yet."""

    def submit(self, task: Task) -> None:
        """Hand a run over."""

    def wait(self, timeout: float) -> list[Outcome]:
        """The attempts that ended within ``timeout`` seconds."""

    def close(self) -> None:
        """Stop every worker."""


class InlineWorkers:
    """Runs trained one by one in this process: for debugging a training function (a
    debugger stops in it) and for tiny sweeps. A crash of the run is a crash of the sweep."""

    def __init__(self, train: TrainFn | str, divergence_factor: float | None) -> None:
        self.train, self.divergence_factor = train, divergence_factor
        self.queue: list[Task] = []

    def capacity(self) -> int:
        """One run at a time."""
        return 1 - len(self.queue)

    def running(self) -> int:
        """The run handed over, if any."""
        return len(self.queue)

    def submit(self, task: Task) -> None:
        """Take the run; it trains at the next :meth:`wait`."""
        self.queue.append(task)

    def wait(self, timeout: float) -> list[Outcome]:
        """Train the run handed over, here and now."""
        if not self.queue:
            return []
        task = self.queue.pop()
        try:
            record = execute(self.train, task.run_id, task.config, self.divergence_factor)
            return [Outcome(task.run_id, record, None)]
        except RunFailed as failure:
            return [Outcome(task.run_id, None, str(failure.args[0]), failure.retry)]

    def close(self) -> None:
        """Nothing runs elsewhere: forget what was handed over."""
        self.queue.clear()


class SweepInterrupted(KeyboardInterrupt):
    """The sweep was interrupted (Ctrl-C); what finished is saved and a second start resumes."""

    def __init__(self, trained: int, out: Path) -> None:
        super().__init__(
            f"interrupted: {trained} runs trained this time are saved under {out / 'runs'}; start the "
            "same sweep again to resume"
        )


@dataclass
class SweepResult:
    """What a call of :func:`run_sweep` did: runs trained now, skipped as already done, and
    the ids of those that failed on every attempt."""

    out: Path
    trained: int = 0
    skipped: int = 0
    diverged: int = 0
    failed: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # each failed run's error, its last line
    retried: int = 0
    seconds: float = 0.0


def run_sweep(
    train: TrainFn | str,
    grid: Grid,
    out: str | Path,
    *,
    backend: str = "local",
    jobs: int | None = None,
    address: str | None = None,
    retries: int = 2,
    divergence_factor: float | None = 3.0,
    gpus: Sequence[str] | None = None,
    cpus_per_run: float = 1,
    gpus_per_run: float = 0,
    progress: bool = True,
) -> SweepResult:
    """Train every run of ``grid`` not done yet under ``out``, writing ``out/runs/<id>.json`` each.

    Args:
      train: ``train(config) -> records`` (or ``"package.module:function"``): the config is a
        run's ``{axis: value}``, the records ``{"step": int, "loss": float, ...}`` per logged
        step, returned or yielded (a generator is stopped when the run diverges).
      grid: the runs, a :class:`~maxp_core.sweep.Grid`.
      out: the sweep's folder; a second start skips runs that finished or diverged there and
        trains again those that failed or never ran.
      backend: ``"local"`` (worker processes on this machine), ``"ray"`` (Ray tasks) or
        ``"inline"`` (this process, one run after another: for debugging).
      jobs: local worker processes (default: one per GPU in ``gpus``, else one per CPU core this
        process may use). A training function that uses a GPU wants ``gpus`` (or ``jobs=1``):
        without it every worker would train on the first GPU.
      address: Ray's cluster address (``"auto"``, ``"ray://host:10001"``); None joins the cluster
        ``RAY_ADDRESS`` names or one this machine runs, else starts a local one for the sweep.
      retries: attempts after the first for a run whose training raised or whose worker died;
        a run failing every attempt is recorded ``failed`` with the last traceback.
      divergence_factor: a run diverges when its loss exceeds this many times its first loss
        (None: only NaN or inf); it stops and is recorded ``diverged``.
      gpus: local: GPU ids dealt out one per worker (``CUDA_VISIBLE_DEVICES``).
      cpus_per_run, gpus_per_run: Ray: resources each run reserves.
      progress: a progress bar (tqdm) of runs done, running and failed.

    The local backend starts its workers with ``spawn``: call this under
    ``if __name__ == "__main__":`` in a script, and give a ``train`` defined at a module's top
    level (workers import it).

    Examples:
      >>> import tempfile
      >>> from maxp_core.sweep import Grid, run_sweep
      >>> def train(config):   # a loss that shrinks by (1 - lr) per step
      ...     return [{"step": t, "loss": (1 - config["lr"]) ** t} for t in range(5)]
      >>> done = run_sweep(train, Grid(lr=[0.1, 0.5]), tempfile.mkdtemp(), backend="inline",
      ...                  progress=False)
      >>> done.trained, done.failed
      (2, [])
    """
    if not isinstance(grid, Grid):
        raise MaxPError(f"run_sweep: grid must be a maxp_core.sweep.Grid, got {type(grid).__name__}")
    backend = validate.choice(backend, "run_sweep: backend", BACKENDS)
    retries = validate.integer(retries, "run_sweep: retries", 0)
    cpus_per_run = validate.positive_number(cpus_per_run, "run_sweep: cpus_per_run")
    gpus_per_run = validate.non_negative_number(gpus_per_run, "run_sweep: gpus_per_run")
    if divergence_factor is not None and not divergence_factor > 1:
        raise MaxPError(f"run_sweep: divergence_factor must be above 1 (or None), got {divergence_factor!r}")
    resolve_train(train)  # a name that names nothing is refused now, not once per run
    out = Path(out)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    _write_description(out, grid, train)
    tasks = [Task(grid.run_id(config), config) for config in grid.configs()]
    todo = deque(task for task in tasks if not is_done(runs_dir, task.run_id))
    result = SweepResult(out=out, skipped=len(tasks) - len(todo))
    if not todo:
        return result
    start = time.perf_counter()
    workers = _workers(backend, train, divergence_factor, jobs, gpus, address, cpus_per_run, gpus_per_run)
    bar = _progress_bar(len(todo), progress)
    by_id = {task.run_id: task for task in tasks}
    attempts: dict[str, int] = {}
    try:
        while todo or workers.running():
            while todo and workers.capacity() > 0:
                workers.submit(todo.popleft())
            for outcome in workers.wait(timeout=0.5):
                attempts[outcome.run_id] = attempts.get(outcome.run_id, 0) + 1
                tries = attempts[outcome.run_id]
                if outcome.record is not None:
                    write_run(runs_dir, {**outcome.record, "attempts": tries})
                    result.trained += 1
                    result.diverged += outcome.record["status"] == "diverged"
                elif tries <= retries and outcome.retry:
                    todo.append(by_id[outcome.run_id])
                    result.retried += 1
                    continue
                else:
                    task = by_id[outcome.run_id]
                    write_run(runs_dir, failed_record(task.run_id, task.config, outcome.error or "", tries))
                    result.failed.append(task.run_id)
                    result.errors[task.run_id] = last_line(outcome.error or "")
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.set_postfix(running=workers.running(), failed=len(result.failed), refresh=False)
    except KeyboardInterrupt:
        raise SweepInterrupted(result.trained, out) from None
    finally:
        workers.close()
        if bar is not None:
            bar.close()
    result.seconds = time.perf_counter() - start
    return result


def _workers(
    backend: str,
    train: TrainFn | str,
    divergence_factor: float | None,
    jobs: int | None,
    gpus: Sequence[str] | None,
    address: str | None,
    cpus_per_run: float,
    gpus_per_run: float,
) -> Workers:
    if backend == "inline":
        return InlineWorkers(train, divergence_factor)
    if backend == "ray":
        from maxp_core.sweep.ray_workers import RayWorkers

        return RayWorkers(train, divergence_factor, address, cpus_per_run, gpus_per_run)
    if jobs is None:
        jobs = len(gpus) if gpus else usable_cores()
    jobs = validate.integer(jobs, "run_sweep: jobs", 1)
    return LocalWorkers(train, jobs, divergence_factor, [str(g) for g in gpus or []])


def _write_description(out: Path, grid: Grid, train: TrainFn | str) -> None:
    """``sweep.json``: the grid and the training function, for the report and for a person.

    Raises:
      MaxPError: the folder holds runs of another training function, which would be skipped
        as done and reported beside the new ones.
    """
    name = train_name(train)
    path = out / "sweep.json"
    if path.exists():
        try:
            before = json.loads(path.read_text()).get("train")
        except (OSError, ValueError, AttributeError):
            before = None
        has_runs = any((out / "runs").glob("*.json"))
        if before is not None and before != name and has_runs:
            raise MaxPError(
                f"{out} holds a sweep of {before}, not of {name}; give another folder, or remove "
                "that one's runs/ and sweep.json to start over"
            )
        if has_runs and _earlier_grid(path) not in (None, grid.describe()):
            warn_user(
                f"{out} last ran another grid (sweep.json): its runs stay under runs/ and are trained "
                "only where this grid has them; the report reads this grid's runs"
            )
    path.write_text(json.dumps({"grid": grid.describe(), "train": name}, indent=1))


def _earlier_grid(path: Path) -> Any:
    try:
        return json.loads(path.read_text()).get("grid")
    except (OSError, ValueError, AttributeError):
        return None


def train_name(train: TrainFn | str) -> str:
    """How ``sweep.json`` names a training function: ``package.module:function``; a function of a
    script run as ``__main__`` by the script's name, as ``python -m maxp_core sweep run`` names it."""
    if isinstance(train, str):
        return train
    module = train.__module__
    if module == "__main__":
        script = getattr(sys.modules["__main__"], "__file__", None)
        module = Path(script).stem if script else module
    return f"{module}:{getattr(train, '__qualname__', type(train).__name__)}"


def last_line(error: str) -> str:
    """The last line of a traceback: the exception and its message.

    Example:
      >>> last_line("Traceback (most recent call last):\\n  ...\\nKeyError: 'seed'\\n")
      "KeyError: 'seed'"
    """
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else error


def _progress_bar(total: int, wanted: bool) -> Any:
    if not wanted:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="sweep runs", unit="run")
