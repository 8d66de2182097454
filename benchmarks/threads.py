"""One CPU thread per training run, so that a run's numbers do not depend on the machine.

Float32 sums are taken in another order when a matrix product is split over another number
of threads, and training at a rate near the edge of stability magnifies the difference: the
same sweep run at 1 and at 2 threads agrees to the last bit for a few steps, then parts
(losses apart by 1e-3 within 60 steps at width 512). The sweeps pin both frameworks to one
thread, before JAX starts, so that a committed run can be replayed on a machine of the same
kind (:mod:`benchmarks.reproduce`; another CPU family may sum in another order still).
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

#: The environment of a pinned process: OpenMP/MKL (PyTorch) and XLA's CPU backend (JAX).
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: The XLA flag that keeps JAX's CPU matrix products on one thread, added to the user's flags.
XLA_SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false"


def pin_threads() -> None:
    """Run this process's training on one CPU thread (call it before JAX is imported).

    Where JAX was already imported without the flag (a test session, a notebook), its
    threads can no longer change: a warning says so, and its runs may not replay exactly.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if XLA_SINGLE_THREAD not in flags.split():
        if "jax" in sys.modules:
            warnings.warn(
                "JAX was imported before pin_threads(), so its CPU threads stay as they are; for runs "
                "that replay exactly, start a fresh process (python -m benchmarks.sweep does)",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            os.environ["XLA_FLAGS"] = f"{flags} {XLA_SINGLE_THREAD}".strip()
    os.environ.update(SINGLE_THREAD_ENV)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(1)


def single_threaded(main: Callable[..., int]) -> Callable[..., int]:
    """``main`` run under :func:`pin_threads`, the process's threads and environment restored
    afterwards (a benchmark's ``main`` called from a test leaves the session as it was)."""

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> int:
        saved = {key: os.environ.get(key) for key in (*SINGLE_THREAD_ENV, "XLA_FLAGS")}
        threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
        pin_threads()
        try:
            return main(*args, **kwargs)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if threads is not None:
                sys.modules["torch"].set_num_threads(threads)

    return run
