"""Layers stacked over a leading axis: which parameter leaves a ``scan`` slices.

Large JAX models stack their blocks: ``nn.scan``, ``nnx.scan`` and ``jax.lax.scan`` over
parameters with a leading "layers" axis, ``(L, d_in, d_out)`` for ``L`` dense kernels.
Each slice along that axis is its own maxP layer (its own role, graph node, alignment and
learning-rate factor); :func:`scanned_leaves` finds the stacked leaves from the jaxpr, as
the scanned-over operands of a ``scan``.
"""

from __future__ import annotations

from typing import Any

from maxp_jax.jaxpr_tools import VALUE_VIEWS, Interpreter


class _ScanOperands(Interpreter):
    """Follows each parameter leaf (its note is its path) to the ``scan`` that slices it."""

    evaluates = False

    def __init__(self) -> None:
        self.lengths: dict[str, int] = {}

    def run_scan(self, eqn: Any, values: list[Any], notes: list[Any]) -> tuple[list[Any], list[Any]]:
        scanned = notes[eqn.params["num_consts"] + eqn.params["num_carry"] :]
        for path in scanned:
            if path is not None:
                self.lengths.setdefault(path, int(eqn.params["length"]))
        return [None] * len(eqn.outvars), [None] * len(eqn.outvars)

    def notes_of(self, eqn: Any, values: list[Any], notes: list[Any]) -> list[Any]:
        if eqn.primitive.name in VALUE_VIEWS:
            return [notes[0]] + [None] * (len(eqn.outvars) - 1)
        return [None] * len(eqn.outvars)


def scanned_leaves(closed: Any, paths: list[str]) -> dict[str, int]:
    """The parameter leaves a ``scan`` slices, with the scan's length.

    Args:
      closed: the ClosedJaxpr of ``apply_fn(params, x)``.
      paths: the key (:func:`~maxp_jax.spec.leaf_key`) of each parameter leaf, in
        flattening order (the first inputs of the jaxpr).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> params = {"blocks": jnp.zeros((3, 8, 8)), "w_in": jnp.zeros((4, 8))}
      >>> def apply(p, x):
      ...     h, _ = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x @ p["w_in"], p["blocks"])
      ...     return h
      >>> scanned_leaves(jax.make_jaxpr(apply)(params, jnp.ones((2, 4))), ["blocks", "w_in"])
      {'blocks': 3}
    """
    notes: list[Any] = list(paths) + [None] * (len(closed.jaxpr.invars) - len(paths))
    walk = _ScanOperands()
    walk.run(closed.jaxpr, list(closed.consts), [None] * len(notes), notes)
    return walk.lengths
