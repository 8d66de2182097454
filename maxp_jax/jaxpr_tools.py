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
