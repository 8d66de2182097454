"""Layer roles and the stability-at-initialization rule that goes with each.

A weight-bearing layer's role follows from where it sits in the data flow:

* ``embedding``: a source. Its fan-in does not grow with width; ``a + b = 0``.
* ``hidden``: fan-in and fan-out both grow; ``a + b = 0.5``.
* ``readout``: a sink. Its fan-out does not grow; ``a + b >= 0.5``.

These are the conditions under which the layer's output is ``O(1)`` at
initialization (Everett et al. 2024, section 2).
"""

from __future__ import annotations

import enum

from maxp_core.errors import StabilityError

#: Absolute tolerance for the equalities ``a + b = 0`` and ``a + b = 0.5``.
AB_TOLERANCE = 1e-9


class Role(str, enum.Enum):
    """The semantic role of a weight-bearing layer."""

    EMBEDDING = "embedding"
    HIDDEN = "hidden"
    READOUT = "readout"

    @classmethod
    def parse(cls, value: str | Role, *, layer: str = "?") -> Role:
        """Return the role named by ``value``; raise naming ``layer`` if unknown."""
        if isinstance(value, Role):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            known = ", ".join(repr(r.value) for r in cls)
            raise StabilityError(
                f"layer {layer!r}: unknown role {value!r}; expected one of {known}"
            ) from None


def role_from_position(*, is_source: bool, is_sink: bool) -> Role:
    """The role a weight-bearing node has by its place in the graph."""
    if is_source:
        return Role.EMBEDDING
    if is_sink:
        return Role.READOUT
    return Role.HIDDEN


def check_init_stability(layer: str, role: Role | str, a: float, b: float) -> None:
    """Raise :class:`StabilityError` unless ``(a, b)`` is stable at init for ``role``.

    Args:
      layer: the layer's name, used in the message.
      role: ``embedding``, ``hidden`` or ``readout``.
      a: output-multiplier exponent.
      b: initialization exponent.

    Examples:
      >>> check_init_stability("fc1", "hidden", 0.0, 0.5)
      >>> check_init_stability("fc1", "hidden", 0.0, 1.0)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      maxp_core.errors.StabilityError: layer 'fc1' (hidden): a + b = 0.0 + 1.0 = 1.0, ...
    """
    role = Role.parse(role, layer=layer)
    total = a + b
    if role is Role.EMBEDDING:
        target, relation = 0.0, "="
        ok = abs(total - target) <= AB_TOLERANCE
    elif role is Role.HIDDEN:
        target, relation = 0.5, "="
        ok = abs(total - target) <= AB_TOLERANCE
    else:
        target, relation = 0.5, ">="
        ok = total >= target - AB_TOLERANCE
    if not ok:
        raise StabilityError(
            f"layer {layer!r} ({role.value}): a + b = {a!r} + {b!r} = {total!r}, "
            f"but {_article(role)} {role.value} layer needs a + b {relation} {target}; "
            f"change b to {target - a!r} or a to {target - b!r}"
        )


def _article(role: Role) -> str:
    return "an" if role is Role.EMBEDDING else "a"
