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
from maxp_jax.jaxpr_tools import CALL_PRIMITIVES, is_literal, open_jaxpr, sub_jaxpr
from maxp_jax.spec import MaxPSpec, leaf_key, path_string

_VIEW_PRIMITIVES = {"convert_element_type", "copy", "copy_p", "reduce_precision", "optimization_barrier"}


@dataclass(frozen=True)
class _Use:
    """Where a layer's weight meets its input: the equation and the contracting axes."""

    eqn_id: int
    input_position: int  # 0 or 1: which operand of the dot_general is the input
    input_contract: tuple[int, ...]
    weight_contract: tuple[int, ...]  # axes of the original weight leaf


class _Walker:
    """Evaluates a jaxpr, following weight leaves and recording their first product."""

    def __init__(self, weight_vars: dict[int, int]) -> None:
        self.weight_of_input = weight_vars  # position in the flat inputs -> layer
        self.uses: dict[int, _Use] = {}
        self.blocked: dict[int, str] = {}
        self.captured: dict[int, Any] = {}
        self.counter = 0

    def run(self, closed: Any, flat_args: list[Any], record: dict[int, _Use] | None) -> list[Any]:
        jaxpr, consts = open_jaxpr(closed)
        tags = {
            id(v): (layer, None)
            for pos, v in enumerate(jaxpr.invars)
            if (layer := self.weight_of_input.get(pos)) is not None
        }
        return self._eval(jaxpr, consts, flat_args, tags, record)

    def _eval(
        self,
        jaxpr: Any,
        consts: list[Any],
        args: list[Any],
        tags: dict[int, Any],
        record: dict[int, _Use] | None,
    ) -> list[Any]:
        env: dict[int, Any] = {}

        def read(v: Any) -> Any:
            return v.val if is_literal(v) else env[id(v)]

        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[id(v)] = c
        for v, a in zip(jaxpr.invars, args, strict=True):
            env[id(v)] = a
        for eqn in jaxpr.eqns:
            eqn_id = self.counter
            self.counter += 1
            invals = [read(v) for v in eqn.invars]
            in_tags = [None if is_literal(v) else tags.get(id(v)) for v in eqn.invars]
            sub = sub_jaxpr(eqn)
            name = eqn.primitive.name
            if sub is not None and name in CALL_PRIMITIVES:
                inner, inner_consts = open_jaxpr(sub)
                offset = len(invals) - len(inner.invars)
                inner_tags = {
                    id(v): in_tags[offset + k]
                    for k, v in enumerate(inner.invars)
                    if in_tags[offset + k] is not None
                }
                outvals = self._eval(inner, inner_consts, invals[offset:], inner_tags, record)
            else:
                if name == "dot_general":
                    self._dot(eqn, eqn_id, invals, in_tags, record)
                elif (
                    any(t is not None for t in in_tags)
                    and name not in _VIEW_PRIMITIVES
                    and name != "transpose"
                ):
                    for t in in_tags:
                        if t is not None:
                            self.blocked.setdefault(t[0], name)
                outvals = eqn.primitive.bind(*invals, **eqn.params)
                if not eqn.primitive.multiple_results:
                    outvals = [outvals]
                self._propagate(eqn, in_tags, tags)
            for v, val in zip(eqn.outvars, outvals, strict=True):
                env[id(v)] = val
        return [read(v) for v in jaxpr.outvars]

    def _propagate(self, eqn: Any, in_tags: list[Any], tags: dict[int, Any]) -> None:
        name = eqn.primitive.name
        if name in _VIEW_PRIMITIVES and in_tags and in_tags[0] is not None:
            tags[id(eqn.outvars[0])] = in_tags[0]
        elif name == "transpose" and in_tags[0] is not None:
            layer, perm = in_tags[0]
            base = tuple(range(len(eqn.params["permutation"]))) if perm is None else perm
            tags[id(eqn.outvars[0])] = (layer, tuple(base[p] for p in eqn.params["permutation"]))

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
        jax.eval_shape(lambda *a: walker.run(closed, list(a), None), *flat)
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
        outs = walker.run(closed, flat, self.uses)
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
