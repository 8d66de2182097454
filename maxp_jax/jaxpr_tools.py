"""Small helpers for walking jaxprs, shared by input capture and graph discovery."""

from __future__ import annotations

from typing import Any

#: Primitives whose body is another jaxpr that is walked in place.
CALL_PRIMITIVES = frozenset(
    {"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "remat", "checkpoint"}
)
_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


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


class Interpreter:
    """Evaluates a jaxpr equation by equation, carrying a note beside every value.

    Values are whatever the equations are bound on: concrete arrays, or tracers under
    ``jax.eval_shape``. A note is what a walk keeps about a value (a weight's tag, a graph
    provenance); literals and constants carry ``None``. The body of a call primitive
    (:data:`CALL_PRIMITIVES`) is entered, so its equations are seen one at a time, unless
    :meth:`enters` says otherwise; every other equation is bound on its operands' values
    once :meth:`notes_of` has given the notes of its results.
    """

    #: Bind each equation on its operands' values; ``False`` walks the notes alone (every
    #: value ``None``), for walks whose notes never look at a value.
    evaluates: bool = True

    def enters(self, eqn: Any) -> bool:
        """Whether to walk the body of ``eqn`` instead of binding it as one operation."""
        return eqn.primitive.name in CALL_PRIMITIVES and sub_jaxpr(eqn) is not None

    def notes_of(self, eqn: Any, values: list[Any], notes: list[Any]) -> list[Any]:
        """The notes of the results of ``eqn``, from its operands' values and notes."""
        return [None] * len(eqn.outvars)

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
            if self.enters(eqn):
                inner, inner_consts = open_jaxpr(sub_jaxpr(eqn))
                offset = len(invals) - len(inner.invars)
                outvals, outnotes = self.run(inner, inner_consts, invals[offset:], innotes[offset:])
            else:
                outnotes = self.notes_of(eqn, invals, innotes)
                if self.evaluates:
                    outvals = eqn.primitive.bind(*invals, **eqn.params)
                    if not eqn.primitive.multiple_results:
                        outvals = [outvals]
                else:
                    outvals = [None] * len(eqn.outvars)
            for v, val, n in zip(eqn.outvars, outvals, outnotes, strict=True):
                values[id(v)] = val
                tags[id(v)] = n
        return [value(v) for v in jaxpr.outvars], [note(v) for v in jaxpr.outvars]
