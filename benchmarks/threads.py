"""One CPU thread per training run, so that a run's numbers do not depend on the machine.

Float32 sums are taken in another order when a matrix product is split over another number
of threads, and training at a rate near the edge of stability magnifies the difference: the
same sweep run at 1 and at 2 threads agrees to the last bit for a few steps, then parts
(losses apart by 1e-3 within 60 steps at width 512). The sweeps pin both frameworks to one
thread, before JAX starts, so that a committed run can be replayed anywhere
(:mod:`benchmarks.reproduce`).
"""

from __future__ import annotations

import os
import sys
import warnings

#: The environment of a pinned process: OpenMP/MKL (PyTorch) and XLA's CPU backend (JAX).
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}


def pin_threads() -> None:
    """Run this process's training on one CPU thread (call it before JAX is imported).

    Where JAX was already imported under other flags (a test session, a notebook), its
    threads can no longer change: a warning says so, and its runs may not replay exactly.
    """
    if "jax" in sys.modules and os.environ.get("XLA_FLAGS") != SINGLE_THREAD_ENV["XLA_FLAGS"]:
        warnings.warn(
            "JAX was imported before pin_threads(), so its CPU threads stay as they are; for runs "
            "that replay exactly, start a fresh process (python -m benchmarks.sweep does)",
            RuntimeWarning,
            stacklevel=2,
        )
    else:
        os.environ.update(SINGLE_THREAD_ENV)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(1)
