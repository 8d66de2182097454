"""How a model uses its parameter leaves: stacked over a leading axis, or tied.

Large JAX models stack their blocks: ``nn.scan``, ``nnx.scan`` and ``jax.lax.scan`` over
parameters with a leading "layers" axis, ``(L, d_in, d_out)`` for ``L`` dense kernels.
Each slice along that axis is its own maxP layer (its own role, graph node, alignment and
learning-rate factor). Language models often tie their embedding table to the readout
(``embed.attend(h)``): one leaf, looked up once and multiplied once, is two maxP layers.
:func:`leaf_uses` finds both from the jaxpr of ``apply_fn(params, x)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maxp_jax.jaxpr_tools import VALUE_VIEWS, Interpreter

#: Primitives that read rows of a table (an embedding lookup).
LOOKUPS = frozenset({"gather", "dynamic_slice", "take"})
#: Primitives that multiply a weight with an input.
PRODUCTS = frozenset({"dot_general", "conv_general_dilated"})


@dataclass
class LeafUses:
    """What :func:`leaf_uses` found: the leaves a ``scan`` slices (with its length) and the
    leaves both looked up and multiplied (tied tables)."""

    scanned: dict[str, int] = field(default_factory=dict)
    looked_up: set[str] = field(default_factory=set)
    multiplied: set[str] = field(default_factory=set)

    @property
    def tied(self) -> set[str]:
        return self.looked_up & self.multiplied


class _Follow(Interpreter):
    """Follows each parameter leaf (its note is its path, or ``("moved", path)`` once a
    transpose has moved its leading axis) through views to its uses."""

    evaluates = False

    def __init__(self) -> None:
        self.found = LeafUses()

    def run_scan(self, eqn: Any, values: list[Any], notes: list[Any]) -> tuple[list[Any], list[Any]]:
        scanned = notes[eqn.params["num_consts"] + eqn.params["num_carry"] :]
        for path in scanned:
            if isinstance(path, str):
                self.found.scanned.setdefault(path, int(eqn.params["length"]))
        return [None] * len(eqn.outvars), [None] * len(eqn.outvars)

    def notes_of(self, eqn: Any, values: list[Any], notes: list[Any]) -> list[Any]:
        name = eqn.primitive.name
        rest = [None] * (len(eqn.outvars) - 1)
        if name in VALUE_VIEWS or (name == "transpose" and eqn.params["permutation"][0] == 0):
            return [notes[0], *rest]
        if name == "transpose" and notes[0] is not None:
            # The leading axis has moved: no scan over it slices layers, but it is still the leaf.
            return [("moved", _path(notes[0])), *rest]
        uses = self.found.looked_up if name in LOOKUPS else None
        uses = self.found.multiplied if name in PRODUCTS else uses
        if uses is not None:
            uses.update(_path(note) for note in notes if note is not None)
        return [None] * len(eqn.outvars)


def _path(note: Any) -> str:
    return note[1] if isinstance(note, tuple) else note


def leaf_uses(closed: Any, paths: list[str]) -> LeafUses:
    """How the jaxpr ``closed`` uses each parameter leaf.

    Args:
      closed: the ClosedJaxpr of ``apply_fn(params, x)``.
      paths: the key (:func:`~maxp_jax.spec.leaf_key`) of each parameter leaf, in
        flattening order (the first inputs of the jaxpr).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> params = {"blocks": jnp.zeros((3, 8, 8)), "table": jnp.zeros((10, 8))}
      >>> def apply(p, ids):
      ...     h, _ = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), p["table"][ids], p["blocks"])
      ...     return h @ p["table"].T
      >>> uses = leaf_uses(jax.make_jaxpr(apply)(params, jnp.zeros(2, int)), ["blocks", "table"])
      >>> uses.scanned, uses.tied
      ({'blocks': 3}, {'table'})
    """
    notes: list[Any] = list(paths) + [None] * (len(closed.jaxpr.invars) - len(paths))
    walk = _Follow()
    walk.run(closed.jaxpr, list(closed.consts), [None] * len(notes), notes)
    return walk.found
