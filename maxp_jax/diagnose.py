"""Coordinate checks for JAX models: each layer's input and the output, across widths.

:func:`coord_check` measures the RMS of what enters every maxP layer (the previous op's
activation, found from the jaxpr) and of the model output, at init and the RMS of their
change after a few optimizer steps; :mod:`maxp_core.coordcheck` fits the slopes, prints
the table (:func:`maxp_core.coordcheck.slope_table`) and draws the plot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maxp_core import Role
from maxp_core.coordcheck import SLOPE_TOLERANCE, flagged
from maxp_jax.capture import LayerInputs
from maxp_jax.spec import MaxPSpec

Stats = dict[str, dict[str, list[float]]]


def _rms(x: Any) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64)))))


def _observe(capture: LayerInputs, spec: MaxPSpec, params: Any, x: Any) -> dict[str, Any]:
    """What enters each non-embedding layer (an embedding's input is the data) and the output."""
    out, inputs = capture(params, x)
    seen = {
        f"input of {spec.layers[i].name}": v
        for i, v in inputs.items()
        if spec.layers[i].role is not Role.EMBEDDING
    }
    seen["output"] = out
    return seen


def _one_width(
    apply_fn: Callable[[Any, Any], Any],
    params: Any,
    spec: MaxPSpec,
    tx: optax.GradientTransformation,
    x: Any,
    steps: int,
) -> dict[str, tuple[float, float]]:
    """``{op: (rms at init, rms of its change after steps)}`` at one width."""
    capture = LayerInputs(spec, apply_fn, params, x)
    before = _observe(capture, spec, params, x)
    state = tx.init(params)
    grad = jax.jit(jax.grad(lambda p: jnp.mean(jnp.square(apply_fn(p, x)))))
    for _ in range(steps):
        updates, state = tx.update(grad(params), state, params)
        params = optax.apply_updates(params, updates)
    after = _observe(capture, spec, params, x)
    return {k: (_rms(v), _rms(np.asarray(after[k]) - np.asarray(v))) for k, v in before.items()}


def coord_check(
    make: Callable[[int], tuple[Callable[[Any, Any], Any], Any, MaxPSpec, optax.GradientTransformation]],
    make_input: Callable[[int], Any],
    widths: Sequence[int],
    steps: int = 3,
    tolerance: float = SLOPE_TOLERANCE,
) -> tuple[list[str], list[str], Stats]:
    """Sweep widths; return ``(ops, flagged ops, stats)`` like :func:`maxp_torch.diagnose_axis`.

    Args:
      make: ``width -> (apply_fn, params, spec, tx)``.
      make_input: ``width -> input batch``.
      widths: at least two widths.
      steps: optimizer steps on the mean square of the output before measuring changes.
    """
    stats: Stats = {}
    for width in widths:
        apply_fn, params, spec, tx = make(width)
        for name, (init, update) in _one_width(apply_fn, params, spec, tx, make_input(width), steps).items():
            entry = stats.setdefault(name, {"init": [], "update": []})
            entry["init"].append(init)
            entry["update"].append(update)
    return list(stats), flagged(stats, widths, tolerance), stats
