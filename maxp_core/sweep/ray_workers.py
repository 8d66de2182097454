"""Runs trained as Ray tasks: over a cluster's machines, or a local cluster started for the sweep.

Each run is one task (``num_cpus`` and ``num_gpus`` per run; Ray gives a GPU task its
``CUDA_VISIBLE_DEVICES``). A task returns the run's record to this process, which writes
it, so workers need no shared file system. A task whose training raised, or whose worker
died (Ray's ``WorkerCrashedError``, a lost node), comes back as a failed attempt that the
sweep retries like a local one.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from maxp_core.errors import MaxPError
from maxp_core.sweep.local import Outcome, Task
from maxp_core.sweep.records import RunFailed, TrainFn, execute


def _ray_task(
    train: TrainFn | str, run_id: str, config: dict[str, Any], divergence_factor: float | None
) -> tuple[dict[str, Any] | None, str | None, bool]:
    try:
        return execute(train, run_id, config, divergence_factor), None, True
    except RunFailed as failure:
        return None, str(failure.args[0]), failure.retry


def _installed(path: str) -> bool:
    return "site-packages" in path or "dist-packages" in path or path.endswith(".zip")


class RayWorkers:
    """Runs as Ray tasks on the cluster at ``address`` (``"auto"``: the one this machine belongs
    to); with ``address`` None, Ray joins the cluster ``RAY_ADDRESS`` names or one running on this
    machine, else starts a local one (stopped at :meth:`close`)."""

    def __init__(
        self,
        train: TrainFn | str,
        divergence_factor: float | None,
        address: str | None = None,
        cpus_per_run: float = 1,
        gpus_per_run: float = 0,
        max_pending: int | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise MaxPError("backend='ray' needs Ray: pip install 'maxp[ray]' (or pip install ray)") from None
        self.ray = ray
        self.started_here = not ray.is_initialized()
        if self.started_here:
            # Workers import the training function's module as this process does (its own
            # folders, not this environment's site-packages, which a worker has its own of).
            path = os.pathsep.join(p for p in sys.path if p and not _installed(p))
            ray.init(
                address=address,
                runtime_env={"env_vars": {"PYTHONPATH": path}},
                include_dashboard=False,
                log_to_driver=False,
            )
        self.task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(_ray_task)
        self.train = train
        self.divergence_factor = divergence_factor
        self.pending: dict[Any, str] = {}
        total = int(ray.cluster_resources().get("CPU", 1) // max(cpus_per_run, 1e-9))
        self.max_pending = max_pending or max(1, 2 * total)

    def capacity(self) -> int:
        """How many more runs may be handed to Ray now (twice its CPUs' worth are kept queued)."""
        return self.max_pending - len(self.pending)

    def running(self) -> int:
        """Runs handed to Ray and not back yet (training or queued)."""
        return len(self.pending)

    def submit(self, task: Task) -> None:
        """Start ``task`` as a Ray task."""
        ref = self.task.remote(self.train, task.run_id, task.config, self.divergence_factor)
        self.pending[ref] = task.run_id

    def wait(self, timeout: float) -> list[Outcome]:
        """The outcomes of tasks that ended within ``timeout`` seconds (maybe none)."""
        if not self.pending:
            return []
        done, _ = self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=timeout)
        outcomes = []
        for ref in done:
            run_id = self.pending.pop(ref)
            try:
                record, error, retry = self.ray.get(ref)
            except self.ray.exceptions.RayError as failure:  # the worker died or its node was lost
                record, error, retry = None, f"the Ray task training this run failed: {failure}", True
            outcomes.append(Outcome(run_id, record, error, retry))
        return outcomes

    def close(self) -> None:
        """Cancel what is still running; stop the cluster if this sweep started it."""
        for ref in self.pending:
            self.ray.cancel(ref, force=True)
        self.pending.clear()
        if self.started_here:
            self.ray.shutdown()
