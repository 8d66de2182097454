"""Small helpers for walking jaxprs, shared by input capture and graph discovery."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

#: Primitives whose body is another jaxpr that is walked in place: ``jit`` (``pjit`` in
#: older JAX), ``remat2`` (``jax.checkpoint``, ``nn.remat``), ``custom_jvp_call``,
#: ``custom_vjp_call`` and ``closed_call``.
CALL_PRIMITIVES = frozenset(
    {
        "jit",
        "pjit",
        "closed_call",
        "core_call",
        "custom_jvp_call",
        "custom_vjp_call",
        "custom_vjp_call_jaxpr",
        "remat",
        "remat2",
        "checkpoint",
    }
)
#: Primitives with a body the walk does not enter, and what to do about a weight inside one.
UNENTERED = {
    "cond": "a weight used inside lax.cond (or lax.switch) cannot be placed; apply the layer outside the "
    "branch, or give a sample_input forward that takes one fixed branch",
    "while": "a weight used inside lax.while_loop or fori_loop cannot be placed; stack the layers and "
    "scan over them (lax.scan, nn.scan, nnx.scan), passing the stacked weights as the scanned operand",
    "shard_map": "a weight used inside shard_map cannot be followed, since the body sees shards; "
    "give maxP the forward of the unsharded model (sharding with jit and NamedSharding is fine)",
}
_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
#: Primitives that pass their first operand's values through unchanged (up to dtype).
VALUE_VIEWS = frozenset(
    {"convert_element_type", "copy", "copy_p", "reduce_precision", "optimization_barrier"}
)


def sub_jaxpr(eqn: Any) -> Any | None:
    """The body of a call-like equation (a Jaxpr or ClosedJaxpr), if it has one."""
    for name in _CALL_PARAMS:
        sub = eqn.params.get(name)
        if sub is not None and (hasattr(sub, "jaxpr") or hasattr(sub, "eqns")):
            return sub
    return None


def open_jaxpr(sub: Any) -> tuple[Any, list[Any]]:
    """``(jaxpr, consts)`` of a Jaxpr or ClosedJaxpr."""
    if hasattr(sub, "jaxpr"):
        return sub.jaxpr, list(sub.consts)
    return sub, []


def is_literal(var: Any) -> bool:
    """Whether a jaxpr operand is a literal constant rather than a variable."""
    return not hasattr(var, "aval") or type(var).__name__ == "Literal"


def unentered_advice(primitive: str) -> str:
    """What to do about a weight that flows into ``primitive``, if the walk cannot enter it."""
    advice = UNENTERED.get(primitive)
    return f"; {advice}" if advice else ""


class Interpreter:
    """Evaluates a jaxpr equation by equation, carrying a note beside every value.

    Values are whatever the equations are bound on: concrete arrays, or tracers under
    ``jax.eval_shape``. A note is what a walk keeps about a value (a weight's tag, a graph
    provenance); literals and constants carry ``None``. The body of a call primitive
    (:data:`CALL_PRIMITIVES`) is entered, so its equations are seen one at a time, unless
    :meth:`enters` says otherwise; a ``scan`` is walked by :meth:`run_scan` (by default
    its body once per iteration, each seeing its slice of the scanned operands); every
    other equation is bound on its operands' values once :meth:`notes_of` has given the
    notes of its results.
    """

    #: Bind each equation on its operands' values; ``False`` walks the notes alone (every
    #: value ``None``), for walks whose notes never look at a value.
    evaluates: bool = True
    #: The iteration of each ``scan`` the walk is inside, outermost first.
    steps: tuple[int, ...] = ()

    def enters(self, eqn: Any, notes: list[Any]) -> bool:
        """Whether to walk the body of ``eqn`` (its operands' notes ``notes``) instead of
        binding it as one operation."""
        if eqn.primitive.name == "scan":
            return True
        return eqn.primitive.name in CALL_PRIMITIVES and sub_jaxpr(eqn) is not None

    def notes_of(self, eqn: Any, values: list[Any], notes: list[Any]) -> list[Any]:
        """The notes of the results of ``eqn``, from its operands' values and notes."""
        return [None] * len(eqn.outvars)

    def slice_note(self, note: Any, step: int) -> Any:
        """The note of iteration ``step``'s slice of a scanned operand whose note is ``note``."""
        return note

    def stack_notes(self, notes: list[Any]) -> Any:
        """The note of a scan's stacked output, from its per-iteration notes (the last one)."""
        return notes[-1] if notes else None

    def run_scan(self, eqn: Any, values: list[Any], notes: list[Any]) -> tuple[list[Any], list[Any]]:
        """``(values, notes)`` of a ``scan``'s outputs, its body walked once per iteration."""
        body, consts = open_jaxpr(eqn.params["jaxpr"])
        n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
        length, reverse = int(eqn.params["length"]), bool(eqn.params["reverse"])
        fixed_v, fixed_n = values[:n_consts], notes[:n_consts]
        carry_v, carry_n = values[n_consts : n_consts + n_carry], notes[n_consts : n_consts + n_carry]
        xs_v, xs_n = values[n_consts + n_carry :], notes[n_consts + n_carry :]
        per_step: dict[int, tuple[list[Any], list[Any]]] = {}
        for t in reversed(range(length)) if reverse else range(length):
            x_v = [None if v is None else v[t] for v in xs_v]
            x_n = [self.slice_note(n, t) for n in xs_n]
            self.steps = (*self.steps, t)
            try:
                out_v, out_n = self.run(body, consts, fixed_v + carry_v + x_v, fixed_n + carry_n + x_n)
            finally:
                self.steps = self.steps[:-1]
            carry_v, carry_n = out_v[:n_carry], out_n[:n_carry]
            per_step[t] = (out_v[n_carry:], out_n[n_carry:])
        n_ys = len(eqn.outvars) - n_carry
        order = [per_step[t] for t in range(length)]
        ys_v = [
            None if not order or order[0][0][j] is None else jnp.stack([v[j] for v, _ in order])
            for j in range(n_ys)
        ]
        ys_n = [self.stack_notes([n[j] for _, n in order]) for j in range(n_ys)]
        return carry_v + ys_v, carry_n + ys_n

    def run(
        self, jaxpr: Any, consts: list[Any], args: list[Any], notes: list[Any]
    ) -> tuple[list[Any], list[Any]]:
        """``(values, notes)`` of the outputs of ``jaxpr`` applied to ``args``."""
        values: dict[int, Any] = {}
        tags: dict[int, Any] = {}

        def value(v: Any) -> Any:
            return v.val if is_literal(v) else values[id(v)]

        def note(v: Any) -> Any:
            return None if is_literal(v) else tags.get(id(v))

        for v, c in zip(jaxpr.constvars, consts, strict=True):
            values[id(v)] = c
        for v, a, n in zip(jaxpr.invars, args, notes, strict=True):
            values[id(v)] = a
            tags[id(v)] = n
        for eqn in jaxpr.eqns:
            invals = [value(v) for v in eqn.invars]
            innotes = [note(v) for v in eqn.invars]
            enters = self.enters(eqn, innotes)
            if enters and eqn.primitive.name == "scan":
                outvals, outnotes = self.run_scan(eqn, invals, innotes)
            elif enters:
                inner, inner_consts = open_jaxpr(sub_jaxpr(eqn))
                offset = len(invals) - len(inner.invars)
                outvals, outnotes = self.run(inner, inner_consts, invals[offset:], innotes[offset:])
            else:
                outnotes = self.notes_of(eqn, invals, innotes)
                if self.evaluates:
                    # As JAX's own evaluator binds: higher-order primitives (shard_map) rebuild
                    # their bind parameters from the equation's.
                    outvals = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
                    if not eqn.primitive.multiple_results:
                        outvals = [outvals]
                else:
                    outvals = [None] * len(eqn.outvars)
            for v, val, n in zip(eqn.outvars, outvals, outnotes, strict=True):
                values[id(v)] = val
                tags[id(v)] = n
        return [value(v) for v in jaxpr.outvars], [note(v) for v in jaxpr.outvars]
