"""Find the input that multiplies each maxP weight, in any JAX model, from its jaxpr.

``apply_fn(params, x)`` is traced once. Walking the jaxpr (into ``jit``,
``custom_jvp_call`` and ``custom_vjp_call`` bodies), each weight leaf is followed
through dtype casts, copies and transposes to the first ``dot_general`` that consumes
it; the other operand of that product is the layer's input. :class:`LayerInputs`
then re-evaluates the same jaxpr and returns those inputs as ``(rows, fan_in)``
matrices, together with each weight as an ``(out, fan_in)`` matrix, which is the
layout :mod:`maxp_core.alignment` uses. It works under ``jax.jit`` like any function.

A weight used first by something other than a product (a gather, as an embedding
lookup does) has no input to measure; that is fine for an embedding, whose
alignment the LP does not use, and an error for any other role.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maxp_core import MaxPError, Role
from maxp_jax.jaxpr_tools import Interpreter, open_jaxpr
from maxp_jax.spec import MaxPSpec, leaf_key, path_string

_VIEW_PRIMITIVES = {"convert_element_type", "copy", "copy_p", "reduce_precision", "optimization_barrier"}


@dataclass(frozen=True)
class _Use:
    """Where a layer's weight meets its input: the equation and the contracting axes."""

    eqn_id: int
    input_position: int  # 0 or 1: which operand of the dot_general is the input
    input_contract: tuple[int, ...]
    weight_contract: tuple[int, ...]  # axes of the original weight leaf


class _Walker(Interpreter):
    """Evaluates a jaxpr, following weight leaves and recording their first product.

    A weight's note is ``(layer, permutation)``: the permutation of the leaf's axes that
    the transposes on its way have applied (``None`` for none).
    """

    def __init__(self, weight_vars: dict[int, int]) -> None:
        self.weight_of_input = weight_vars  # position in the flat inputs -> layer
        self.uses: dict[int, _Use] = {}
        self.blocked: dict[int, str] = {}
        self.captured: dict[int, Any] = {}
        self.counter = 0
        self.record: dict[int, _Use] | None = None

    def walk(self, closed: Any, flat_args: list[Any], record: dict[int, _Use] | None) -> list[Any]:
        """The outputs of ``closed`` on ``flat_args``: find the uses (``record=None``) or
        capture the inputs at the recorded ones."""
        self.record = record
        jaxpr, consts = open_jaxpr(closed)
        notes = [
            None if (layer := self.weight_of_input.get(pos)) is None else (layer, None)
            for pos in range(len(jaxpr.invars))
        ]
        return self.run(jaxpr, consts, flat_args, notes)[0]

    def notes_of(self, eqn: Any, values: list[Any], notes: list[Any]) -> list[Any]:
        eqn_id = self.counter
        self.counter += 1
        name = eqn.primitive.name
        if name == "dot_general":
            self._dot(eqn, eqn_id, values, notes, self.record)
        elif any(t is not None for t in notes) and name not in _VIEW_PRIMITIVES and name != "transpose":
            for t in notes:
                if t is not None:
                    self.blocked.setdefault(t[0], name)
        out: list[Any] = [None] * len(eqn.outvars)
        if name in _VIEW_PRIMITIVES and notes and notes[0] is not None:
            out[0] = notes[0]
        elif name == "transpose" and notes[0] is not None:
            layer, perm = notes[0]
            base = tuple(range(len(eqn.params["permutation"]))) if perm is None else perm
            out[0] = (layer, tuple(base[p] for p in eqn.params["permutation"]))
        return out

    def _dot(
        self, eqn: Any, eqn_id: int, invals: list[Any], in_tags: list[Any], record: dict[int, _Use] | None
    ) -> None:
        (contract_l, contract_r), _ = eqn.params["dimension_numbers"]
        for w_pos in (1, 0):
            tag = in_tags[w_pos]
            if tag is None:
                continue
            layer, perm = tag
            if record is None:
                if layer in self.uses or layer in self.blocked:
                    continue
                w_contract = contract_r if w_pos == 1 else contract_l
                x_contract = contract_l if w_pos == 1 else contract_r
                original = tuple(int(a if perm is None else perm[a]) for a in w_contract)
                self.uses[layer] = _Use(eqn_id, 1 - w_pos, tuple(int(a) for a in x_contract), original)
            else:
                use = record.get(layer)
                if use is not None and use.eqn_id == eqn_id and use.input_position == 1 - w_pos:
                    self.captured[layer] = invals[1 - w_pos]


def _as_rows(x: jax.Array, contract: tuple[int, ...]) -> jax.Array:
    """Move the contracted axes last and flatten: ``(rows, fan_in)``."""
    rest = [a for a in range(x.ndim) if a not in contract]
    moved = jnp.transpose(x, (*rest, *contract))
    fan_in = int(np.prod([x.shape[a] for a in contract]))
    return moved.reshape(-1, fan_in)


class LayerInputs:
    """The input of every measured maxP layer, found once from the jaxpr of ``apply_fn``.

    Args:
      spec: the :class:`~maxp_jax.MaxPSpec`.
      apply_fn: ``apply_fn(params, x) -> outputs``; any pytree of outputs.
      params: example params (arrays or shapes).
      x: an example input.

    Raises:
      MaxPError: a non-embedding layer's weight is not consumed by a matrix product.
    """

    def __init__(self, spec: MaxPSpec, apply_fn: Callable[[Any, Any], Any], params: Any, x: Any) -> None:
        self.spec = spec
        self.apply_fn = apply_fn
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        weight_index = {leaf_key(layer.weight_path): i for i, layer in enumerate(spec.layers)}
        self._weight_positions = {
            pos: weight_index[leaf_key(path_string(p))]
            for pos, (p, _) in enumerate(leaves)
            if leaf_key(path_string(p)) in weight_index
        }
        closed = jax.make_jaxpr(apply_fn)(params, x)
        self._num_param_leaves = len(leaves)
        walker = _Walker(self._weight_positions)
        flat = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
        jax.eval_shape(lambda *a: walker.walk(closed, list(a), None), *flat)
        self.uses = walker.uses
        self.measured: tuple[int, ...] = tuple(sorted(walker.uses))
        for i, layer in enumerate(spec.layers):
            if i not in walker.uses and layer.role is not Role.EMBEDDING:
                first = walker.blocked.get(i)
                reason = (
                    f"its weight first meets {first!r}"
                    if first
                    else "its weight is not used in a dot_general"
                )
                raise MaxPError(
                    f"{layer.weight_path}: cannot find the input that multiplies this weight ({reason}); "
                    "dynamic alignment needs each hidden and readout weight to enter a matrix product"
                )

    def __call__(self, params: Any, x: Any) -> tuple[Any, dict[int, jax.Array]]:
        """``(outputs, {layer index: input as (rows, fan_in)})`` for the measured layers."""
        closed = jax.make_jaxpr(self.apply_fn)(params, x)
        flat = jax.tree_util.tree_leaves((params, x))
        walker = _Walker(self._weight_positions)
        outs = walker.walk(closed, flat, self.uses)
        out_tree = jax.tree_util.tree_structure(jax.eval_shape(self.apply_fn, params, x))
        inputs = {i: _as_rows(walker.captured[i], self.uses[i].input_contract) for i in self.measured}
        return jax.tree_util.tree_unflatten(out_tree, outs), inputs

    def weight_matrices(self, params: Any) -> dict[int, jax.Array]:
        """Each measured layer's weight as ``(out, fan_in)`` (the contracted axes last)."""
        by_key = {leaf_key(path_string(p)): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        return {
            i: _as_rows(by_key[leaf_key(self.spec.layers[i].weight_path)], self.uses[i].weight_contract)
            for i in self.measured
        }
