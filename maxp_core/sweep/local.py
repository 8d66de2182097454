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
import pickle
import threading
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple

from maxp_core.errors import MaxPError
from maxp_core.sweep.records import RunFailed, TrainFn, execute, resolve_train

#: Thread counts of the common numeric libraries, split between workers unless set already.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class Task(NamedTuple):
    """One run to train: its id (the file name) and its config."""

    run_id: str
    config: dict[str, Any]


class Outcome(NamedTuple):
    """What came of one attempt: its record, or the error that ended it."""

    run_id: str
    record: dict[str, Any] | None
    error: str | None
    retry: bool = True  # whether another attempt could go otherwise


#: The worker's first message: it loaded the training function (or why it could not).
READY, BROKEN = "ready", "broken"
#: How long :meth:`LocalWorkers.close` waits for all workers together before killing them.
CLOSE_SECONDS = 5.0


class _Worker:
    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.task: Task | None = None
        self.ready = False


def _exit_with_parent(parent: int) -> None:
    """Stop this worker when the sweep's process is gone (killed, cancelled): a run left
    training would hold its CPU or GPU until it ends."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _worker_main(
    conn: Connection, train: TrainFn | str, divergence_factor: float | None, parent: int
) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    try:
        resolve_train(train)
    except Exception:
        conn.send((BROKEN, traceback.format_exc()))
        return
    conn.send((READY, None))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the sweep's process is gone
            return
        if message is None:
            return
        run_id, config = message
        try:
            conn.send(Outcome(run_id, execute(train, run_id, config, divergence_factor), None))
        except RunFailed as failure:
            conn.send(Outcome(run_id, None, str(failure.args[0]), failure.retry))


class LocalWorkers:
    """``jobs`` worker processes; ``gpus`` (device ids) are dealt out one per worker through
    ``CUDA_VISIBLE_DEVICES``, and each worker's numeric libraries get an equal share of the
    CPU cores (unless their thread counts are set already)."""

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
        """How many more runs can start now."""
        return sum(worker is None or worker.task is None for worker in self.workers)

    def running(self) -> int:
        """Runs being trained."""
        return sum(worker is not None and worker.task is not None for worker in self.workers)

    def submit(self, task: Task) -> None:
        """Hand ``task`` to an idle worker (started, or replaced if it died while idle)."""
        slot = next(i for i, w in enumerate(self.workers) if w is None or w.task is None)
        worker = self.workers[slot]
        if worker is not None and not worker.process.is_alive():
            self._discard(slot)
            worker = None
        worker = worker or self._start(slot)
        try:
            worker.conn.send((task.run_id, task.config))
        except (BrokenPipeError, OSError):  # it died between the check and the send
            self._discard(slot)
            worker = self._start(slot)
            worker.conn.send((task.run_id, task.config))
        worker.task = task

    def _start(self, slot: int) -> _Worker:
        threads = str(max(1, usable_cores() // self.jobs))
        env = {name: threads for name in THREAD_VARIABLES if name not in os.environ}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        parent, child = self.context.Pipe()
        process = self.context.Process(
            target=_worker_main, args=(child, self.train, self.divergence_factor, os.getpid())
        )
        # A spawned process starts from this environment: set before it imports anything.
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            process.start()
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise MaxPError(
                f"the training function cannot be sent to worker processes ({error}); define it at a "
                "module's top level or give it as 'package.module:function' (or use backend='inline')"
            ) from None
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        child.close()
        worker = _Worker(process, parent)
        self.workers[slot] = worker
        return worker

    def _discard(self, slot: int) -> None:
        worker = self.workers[slot]
        if worker is not None:
            worker.conn.close()
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join()
        self.workers[slot] = None

    def wait(self, timeout: float) -> list[Outcome]:
        """The outcomes of attempts that ended within ``timeout`` seconds (maybe none).

        Raises:
          MaxPError: a worker could not load the training function (every run would fail so).
        """
        busy = [w for w in self.workers if w is not None and w.task is not None]
        if not busy:
            return []
        ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout))
        outcomes = []
        for slot, worker in enumerate(self.workers):
            if worker is None or worker.task is None:
                continue
            message = None
            if worker.conn in ready:
                try:
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    message = None
            if isinstance(message, tuple) and message[:1] in ((READY,), (BROKEN,)):
                self._started(worker, message)
                continue
            if message is not None:
                outcomes.append(message)
                worker.task = None
                continue
            if worker.conn in ready or worker.process.sentinel in ready:
                worker.process.join(timeout=5)
                code = worker.process.exitcode
                if not worker.ready:
                    raise MaxPError(
                        f"a worker process exited (exit code {code}) before it could load the training "
                        "function: one defined inside `if __name__ == '__main__':`, in a notebook or on "
                        "stdin cannot be loaded by another process; define it at a module's top level, give "
                        "it as 'package.module:function', or use backend='inline'"
                    )
                outcomes.append(
                    Outcome(
                        worker.task.run_id,
                        None,
                        f"the worker process training this run died (exit code {code}); it was replaced",
                    )
                )
                self._discard(slot)
        return outcomes

    @staticmethod
    def _started(worker: _Worker, message: tuple[str, str | None]) -> None:
        if message[0] == BROKEN:
            raise MaxPError(f"a worker process cannot load the training function:\n{message[1]}")
        worker.ready = True

    def close(self) -> None:
        """Stop every worker: idle ones at once, busy ones killed after :data:`CLOSE_SECONDS`."""
        alive = [w for w in self.workers if w is not None]
        for worker in alive:
            with contextlib.suppress(BrokenPipeError, OSError):
                worker.conn.send(None)
        deadline = time.monotonic() + CLOSE_SECONDS
        for worker in alive:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self.workers = [None] * self.jobs


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
