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
        x = make_input(width)
        capture = LayerInputs(spec, apply_fn, params, x)

        def observe(p: Any) -> dict[str, Any]:
            out, inputs = capture(p, x)
            seen = {  # an embedding's input is the data itself
                f"input of {spec.layers[i].name}": v
                for i, v in inputs.items()
                if spec.layers[i].role is not Role.EMBEDDING
            }
            seen["output"] = out
            return seen

        before = observe(params)
        state = tx.init(params)
        loss = jax.jit(jax.value_and_grad(lambda p: jnp.mean(jnp.square(apply_fn(p, x)))))
        for _ in range(steps):
            _, grads = loss(params)
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
        after = observe(params)
        for name, value in before.items():
            entry = stats.setdefault(name, {"init": [], "update": []})
            entry["init"].append(_rms(value))
            entry["update"].append(_rms(np.asarray(after[name]) - np.asarray(value)))
    return list(stats), flagged(stats, widths, tolerance), stats
