"""Runs trained in local worker processes: nothing to start, and a worker that dies is replaced.

Each worker is a fresh (spawned) Python process that trains one run after another. The
parent hands a worker its next run and waits on every worker's pipe and on the processes
themselves, so a run whose worker is killed (out of memory, a segfault in a native library)
comes back as a failed attempt naming the exit code, and the worker is replaced.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple

from maxp_core.sweep.records import RunFailed, TrainFn, execute

#: Thread counts of the common numeric libraries, split between workers unless set already.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class Task(NamedTuple):
    run_id: str
    config: dict[str, Any]


class Outcome(NamedTuple):
    """What came of one attempt: its record, or the error that ended it."""

    run_id: str
    record: dict[str, Any] | None
    error: str | None


class _Worker:
    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.task: Task | None = None


def _worker_main(
    conn: Connection, train: TrainFn | str, divergence_factor: float | None, env: dict[str, str]
) -> None:
    os.environ.update(env)
    while True:
        message = conn.recv()
        if message is None:
            return
        run_id, config = message
        try:
            conn.send(Outcome(run_id, execute(train, run_id, config, divergence_factor), None))
        except RunFailed as failure:
            conn.send(Outcome(run_id, None, str(failure.args[0])))


class LocalWorkers:
    """``jobs`` worker processes; ``gpus`` (device ids) are dealt out one per worker through
    ``CUDA_VISIBLE_DEVICES``."""

    def __init__(
        self,
        train: TrainFn | str,
        jobs: int,
        divergence_factor: float | None,
        gpus: Sequence[str] | None = None,
    ) -> None:
        self.train = train
        self.jobs = jobs
        self.divergence_factor = divergence_factor
        self.gpus = list(gpus or [])
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[_Worker | None] = [None] * jobs

    def capacity(self) -> int:
        return sum(worker is None or worker.task is None for worker in self.workers)

    def running(self) -> int:
        return sum(worker is not None and worker.task is not None for worker in self.workers)

    def submit(self, task: Task) -> None:
        slot = next(i for i, w in enumerate(self.workers) if w is None or w.task is None)
        worker = self.workers[slot] or self._start(slot)
        worker.task = task
        worker.conn.send((task.run_id, task.config))

    def _start(self, slot: int) -> _Worker:
        env = {}
        threads = str(max(1, (os.cpu_count() or 1) // self.jobs))
        env.update({name: threads for name in THREAD_VARIABLES if name not in os.environ})
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        parent, child = self.context.Pipe()
        process = self.context.Process(
            target=_worker_main, args=(child, self.train, self.divergence_factor, env), daemon=True
        )
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self.workers[slot] = worker
        return worker

    def wait(self, timeout: float) -> list[Outcome]:
        """The outcomes of attempts that ended within ``timeout`` seconds (maybe none)."""
        busy = [w for w in self.workers if w is not None and w.task is not None]
        if not busy:
            return []
        ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout))
        outcomes = []
        for slot, worker in enumerate(self.workers):
            if worker is None or worker.task is None:
                continue
            if worker.conn in ready:
                try:
                    outcome = worker.conn.recv()
                except (EOFError, OSError):
                    outcome = None
                if outcome is not None:
                    outcomes.append(outcome)
                    worker.task = None
                    continue
            if worker.conn in ready or worker.process.sentinel in ready:
                worker.process.join(timeout=5)
                code = worker.process.exitcode
                outcomes.append(
                    Outcome(
                        worker.task.run_id,
                        None,
                        f"the worker process training this run died (exit code {code}); it was replaced",
                    )
                )
                worker.conn.close()
                self.workers[slot] = None
        return outcomes

    def close(self) -> None:
        for worker in self.workers:
            if worker is None:
                continue
            with contextlib.suppress(BrokenPipeError, OSError):
                worker.conn.send(None)
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self.workers = [None] * self.jobs
