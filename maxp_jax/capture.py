"""Find the input that multiplies each maxP weight, in any JAX model, from its jaxpr.

``apply_fn(params, x)`` is traced once. Walking the jaxpr (into the bodies of the
primitives of :data:`~maxp_jax.jaxpr_tools.CALL_PRIMITIVES`: ``jit``, ``remat2``,
``custom_jvp_call``, ``custom_vjp_call``, ...), each weight leaf is followed
through dtype casts, copies and transposes to the first ``dot_general`` that consumes
it; the other operand of that product is the layer's input. :class:`LayerInputs`
then re-evaluates the same jaxpr and returns those inputs as ``(rows, fan_in)``
matrices, together with each weight as an ``(out, fan_in)`` matrix, which is the
layout :mod:`maxp_core.alignment` uses. It works under ``jax.jit`` like any function.

The slices of a stacked leaf (:mod:`maxp_jax.stacking`) are followed into the
``scan`` that slices them, which stays a ``scan``: its body returns each slice's input
as one more stacked output.

A convolution's kernel (``conv_general_dilated``, ungrouped) is measured as the
matrix ``(out, in * window)`` it is, on its input's patches: one row per output
position, the same definition as a dense layer's.

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
from maxp_jax.jaxpr_tools import VALUE_VIEWS, Interpreter, open_jaxpr, unentered_advice
from maxp_jax.spec import MaxPSpec, TiedUses, leaf_key, path_string
from maxp_jax.stacking import LOOKUPS


@dataclass(frozen=True)
class _Use:
    """Where a layer's weight meets its input: the equation and the contracting axes."""

    eqn_id: int
    input_position: int  # 0 or 1: which operand of the dot_general is the input
    input_contract: tuple[int, ...]
    weight_contract: tuple[int, ...]  # axes of the original weight leaf
    conv: _Conv | None = None  # set where the weight is a convolution's kernel


@dataclass(frozen=True)
class _Conv:
    """What a ``conv_general_dilated`` needs to give its input as patches (one row per
    output position, ``in_channels x window`` columns) and its kernel as a matrix."""

    window_strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    lhs_dilation: tuple[int, ...]
    rhs_dilation: tuple[int, ...]
    lhs_spec: tuple[int, ...]  # (batch, feature, spatial...) axes of the input
    rhs_spec: tuple[int, ...]  # (out, in, spatial...) axes of the kernel

    def rows(self, x: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
        """``(rows, in * window)``: the patches of ``x`` that the kernel multiplies."""
        x = jnp.transpose(x, self.lhs_spec)  # (batch, in, spatial...)
        patches = jax.lax.conv_general_dilated_patches(
            x,
            [kernel_shape[a] for a in self.rhs_spec[2:]],
            self.window_strides,
            self.padding,
            self.lhs_dilation,
            self.rhs_dilation,
        )  # (batch, in * window, out spatial...), columns ordered (in, window)
        return jnp.moveaxis(patches, 1, -1).reshape(-1, patches.shape[1])

    def matrix(self, kernel: jax.Array) -> jax.Array:
        """``(out, in * window)``: the kernel in the patches' column order."""
        return jnp.transpose(kernel, self.rhs_spec).reshape(kernel.shape[self.rhs_spec[0]], -1)


class _Walker(Interpreter):
    """Evaluates a jaxpr, following weight leaves and recording their first product.

    A weight's note is ``(layer, permutation)``: the permutation of the leaf's axes that
    the transposes on its way have applied (``None`` for none). ``layer`` is a layer
    index, or the tuple of the layers of a stacked leaf's slices once a ``scan`` has
    sliced it; before that, a stacked leaf's note is ``("stack", layers)``. A ``scan`` is
    traced as a ``scan`` (its body once), and the inputs captured in its body come out
    stacked, one slice per layer.
    """

    def __init__(self, weight_vars: dict[int, Any]) -> None:
        self.weight_of_input = weight_vars  # position in the flat inputs -> layer(s)
        # A tied table is followed as its readout; its lookup does not end the search.
        self.tied_readouts = {v.readout for v in weight_vars.values() if isinstance(v, TiedUses)}
        self.uses: dict[int, _Use] = {}
        self.blocked: dict[int, str] = {}
        self.captured: dict[Any, Any] = {}
        self.counter = 0
        self.record: dict[int, _Use] | None = None

    def walk(self, closed: Any, flat_args: list[Any], record: dict[int, _Use] | None) -> list[Any]:
        """The outputs of ``closed`` on ``flat_args``: find the uses (``record=None``) or
        capture the inputs at the recorded ones."""
        self.record = record
        jaxpr, consts = open_jaxpr(closed)
        notes = [_leaf_note(self.weight_of_input.get(pos)) for pos in range(len(jaxpr.invars))]
        return self.run(jaxpr, consts, flat_args, notes)[0]

    def enters(self, eqn: Any, notes: list[Any]) -> bool:
        # A body no weight flows into is bound whole, so a custom_vjp or checkpoint there keeps
        # its own gradient rule when the training forward runs through LayerInputs.
        return super().enters(eqn, notes) and any(n is not None for n in notes)

    def slice_note(self, note: Any, step: int) -> Any:
        if note is not None and note[0] == "stack":
            return (note[1], None)
        return note

    def run_scan(self, eqn: Any, values: list[Any], notes: list[Any]) -> tuple[list[Any], list[Any]]:
        body, consts = open_jaxpr(eqn.params["jaxpr"])
        n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
        head = n_consts + n_carry
        fixed, carry, xs = values[:n_consts], values[n_consts:head], values[head:]
        body_notes = notes[:head] + [self.slice_note(n, 0) for n in notes[head:]]
        start = self.counter
        trace: dict[Any, Any] = {}

        def step(carry: Any, x: Any) -> Any:
            # Equation ids restart at each trace of the body, so both passes number alike.
            self.counter = start
            before = set(self.captured)
            outs, out_notes = self.run(body, consts, [*fixed, *carry, *x], body_notes)
            trace.update(
                keys=[k for k in self.captured if k not in before], notes=out_notes, end=self.counter
            )
            return outs[:n_carry], (outs[n_carry:], [self.captured.pop(k) for k in trace["keys"]])

        carry_out, (ys, inputs) = jax.lax.scan(
            step, carry, xs, length=eqn.params["length"], reverse=eqn.params["reverse"]
        )
        self.counter = trace["end"]
        for key, stacked in zip(trace["keys"], inputs, strict=True):
            if isinstance(key, tuple):
                self.captured.update({k: stacked[t] for t, k in enumerate(key)})
            else:  # a layer shared by every iteration: its input in the last one
                self.captured[key] = stacked[0 if eqn.params["reverse"] else -1]
        return [*carry_out, *ys], list(trace["notes"][:n_carry]) + [None] * len(ys)

    def notes_of(self, eqn: Any, values: list[Any], notes: list[Any]) -> list[Any]:
        eqn_id = self.counter
        self.counter += 1
        name = eqn.primitive.name
        if name == "dot_general":
            self._dot(eqn, eqn_id, values, notes, self.record)
        elif name == "conv_general_dilated" and notes[1] is not None and _plain_conv(eqn, notes):
            self._conv(eqn, eqn_id, values, notes, self.record)
        elif any(t is not None for t in notes) and name not in VALUE_VIEWS and name != "transpose":
            for t in notes:
                if t is not None:
                    for layer in _members(t):
                        if not (name in LOOKUPS and layer in self.tied_readouts):
                            self.blocked.setdefault(layer, name)
        out: list[Any] = [None] * len(eqn.outvars)
        if name in VALUE_VIEWS and notes and notes[0] is not None:
            out[0] = notes[0]
        elif name == "transpose" and notes[0] is not None and notes[0][0] != "stack":
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
            if layer == "stack":
                for k in perm:
                    self.blocked.setdefault(k, "dot_general before a scan slices the stacked weight")
                continue
            members = _members(tag)
            if record is None:
                if any(k in self.uses or k in self.blocked for k in members):
                    continue
                w_contract = contract_r if w_pos == 1 else contract_l
                x_contract = contract_l if w_pos == 1 else contract_r
                original = tuple(int(a if perm is None else perm[a]) for a in w_contract)
                use = _Use(eqn_id, 1 - w_pos, tuple(int(a) for a in x_contract), original)
                self.uses.update(dict.fromkeys(members, use))
            else:
                seen = record.get(members[0])
                if seen is not None and seen.eqn_id == eqn_id and seen.input_position == 1 - w_pos:
                    self.captured[layer] = invals[1 - w_pos]

    def _conv(
        self, eqn: Any, eqn_id: int, invals: list[Any], in_tags: list[Any], record: dict[int, _Use] | None
    ) -> None:
        """A convolution's kernel meets its input: the layer's input is its patches."""
        layer = in_tags[1][0]
        members = _members(in_tags[1])
        if record is None:
            if not any(k in self.uses or k in self.blocked for k in members):
                self.uses.update(dict.fromkeys(members, _Use(eqn_id, 0, (), (), _conv_of(eqn))))
        else:
            use = record.get(members[0])
            if use is not None and use.eqn_id == eqn_id and use.conv is not None:
                self.captured[layer] = invals[0]


def _plain_conv(eqn: Any, notes: list[Any]) -> bool:
    """A convolution whose kernel is a weight as stored (not transposed, not grouped) and
    whose input is not one."""
    params = eqn.params
    return (
        notes[0] is None
        and notes[1][0] != "stack"
        and notes[1][1] is None
        and params["feature_group_count"] == 1
        and params["batch_group_count"] == 1
    )


def _leaf_note(layers: Any) -> Any:
    """The note of a parameter leaf: ``None``, ``(layer, None)`` (a tied table's readout
    layer), or ``("stack", layers)``."""
    if layers is None:
        return None
    if isinstance(layers, TiedUses):
        return (layers.readout, None)
    return ("stack", layers) if isinstance(layers, tuple) else (layers, None)


def _conv_of(eqn: Any) -> _Conv:
    params = eqn.params
    numbers = params["dimension_numbers"]
    return _Conv(
        window_strides=tuple(int(v) for v in params["window_strides"]),
        padding=tuple((int(lo), int(hi)) for lo, hi in params["padding"]),
        lhs_dilation=tuple(int(v) for v in params["lhs_dilation"]),
        rhs_dilation=tuple(int(v) for v in params["rhs_dilation"]),
        lhs_spec=tuple(int(v) for v in numbers.lhs_spec),
        rhs_spec=tuple(int(v) for v in numbers.rhs_spec),
    )


def _members(note: Any) -> tuple[int, ...]:
    """The layer indices a weight note stands for."""
    layer, rest = note
    if layer == "stack":
        return tuple(rest)
    return tuple(layer) if isinstance(layer, tuple) else (layer,)


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
        index = spec.leaf_layer_index()
        weight_index = {
            leaf_key(layer.weight_path): index[leaf_key(layer.weight_path)] for layer in spec.layers
        }
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
                    + unentered_advice(first or "")
                )

    def __call__(self, params: Any, x: Any) -> tuple[Any, dict[int, jax.Array]]:
        """``(outputs, {layer index: input as (rows, fan_in)})`` for the measured layers."""
        closed = jax.make_jaxpr(self.apply_fn)(params, x)
        flat = jax.tree_util.tree_leaves((params, x))
        walker = _Walker(self._weight_positions)
        outs = walker.walk(closed, flat, self.uses)
        out_tree = jax.tree_util.tree_structure(jax.eval_shape(self.apply_fn, params, x))
        inputs = {i: self._rows(i, walker.captured[i]) for i in self.measured}
        return jax.tree_util.tree_unflatten(out_tree, outs), inputs

    def _rows(self, i: int, x: jax.Array) -> jax.Array:
        """Layer ``i``'s input as ``(rows, fan_in)``: patches for a convolution."""
        use = self.uses[i]
        if use.conv is not None:
            return use.conv.rows(x, self.spec.layers[i].shape)
        return _as_rows(x, use.input_contract)

    def weight_matrices(self, params: Any) -> dict[int, jax.Array]:
        """Each measured layer's weight as ``(out, fan_in)`` (the contracted axes last), or as
        ``(fan_in, out)`` where :meth:`fan_in_first` says so: a kernel whose contracted axes
        come first (flax ``Dense``) is only reshaped, as a transpose would copy it."""
        by_key = {leaf_key(path_string(p)): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        layers = self.spec.layers
        weights = {i: layers[i].weight_of(by_key[leaf_key(layers[i].weight_path)]) for i in self.measured}
        matrices = {}
        for i, w in weights.items():
            conv = self.uses[i].conv
            if conv is not None:
                matrices[i] = conv.matrix(w)
            elif self.fan_in_first(i):
                matrices[i] = w.reshape(self.spec.layers[i].fan_in, -1)
            else:
                matrices[i] = _as_rows(w, self.uses[i].weight_contract)
        return matrices

    def fan_in_first(self, i: int) -> bool:
        """Whether :meth:`weight_matrices` gives layer ``i``'s weight as ``(fan_in, out)``."""
        use = self.uses[i]
        return use.conv is None and use.weight_contract == tuple(range(len(use.weight_contract)))
