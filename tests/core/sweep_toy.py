"""A toy training function for the sweep tests: gradient descent on a quadratic, in numpy.

``f(x) = k x^2 / 2`` with curvature ``k = width / 64``, from ``x0 = 1 + seed / 10``; each step
multiplies ``x`` by ``1 - lr k``, so the loss ``x^2`` after ``t`` steps is
``x0^2 (1 - lr k)^(2t)``: it shrinks for ``lr k < 2`` and grows (diverges) above. ``mode``
makes a run fail: ``raise_once`` and ``die_once`` (the worker process exits) on their first
attempt only (a marker file under ``$SWEEP_TOY_MARKERS`` remembers it), ``always_raise`` on
every attempt. ``slow`` sleeps between steps; ``child`` starts a process of its own (as a
data loader with workers does); ``die_after`` ends its worker process shortly after the run.
"""

import multiprocessing
import os
import threading
import time
from pathlib import Path

import numpy as np

STEPS = 20


def expected_losses(lr: float, width: int, seed: int = 0, steps: int = STEPS) -> np.ndarray:
    """The loss at every step, by the closed form."""
    x0 = 1 + seed / 10
    return x0**2 * (1 - lr * width / 64) ** (2 * np.arange(steps))


def _first_attempt(config: dict) -> bool:
    name = "_".join(f"{k}{v}" for k, v in sorted(config.items()))
    marker = Path(os.environ["SWEEP_TOY_MARKERS"]) / name
    if marker.exists():
        return False
    marker.write_text("tried")
    return True


def train(config: dict):
    mode = config.get("mode", "ok")
    if mode == "interrupt" and config["lr"] > 0.3:
        raise KeyboardInterrupt  # Ctrl-C while this run trains
    if mode == "always_raise":
        raise ValueError("the toy always fails in this mode")
    if mode in ("raise_once", "die_once") and _first_attempt(config):
        if mode == "die_once":
            os._exit(7)
        raise RuntimeError("the toy fails on its first attempt")
    if mode == "child":
        child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0.01,))
        child.start()
        child.join()
    lr, k = config["lr"], config.get("width", 64) / 64
    x = np.float64(1 + config.get("seed", 0) / 10)
    for step in range(config.get("steps", STEPS)):
        yield {"step": step, "loss": float(x * x), "lr_times_k": lr * k}
        if mode == "slow":
            time.sleep(0.02)
        x = x - lr * k * x
    if mode == "die_after":
        threading.Timer(0.2, os._exit, (9,)).start()


def no_loss(config: dict):
    """Records without their loss: a mistake no second attempt mends."""
    return [{"step": 0, "error": 1.0}]
