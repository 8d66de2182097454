"""The base width: the width at which a maxP model is the user's own standard model.

Without one, maxp scales every layer by powers of its width ``n``: learning rate
``lr_prefactor * n^-c``, output multiplier ``n^-a``, initial standard deviation
``std_prefactor * n^-b``, so a rate tuned for the standard model is far too small for the
hidden layers of a model of any useful width. With a base width ``n0``, every power is taken
of the width ratio ``r = n / n0`` instead:

- learning rate ``lr_prefactor * r^-c`` and output multiplier ``r^-a``: at ``n = n0`` every
  layer runs at ``lr_prefactor`` with a multiplier of 1;
- the model's own initial weights are kept and scaled by ``r^-(b - b_standard)``, where
  ``b_standard`` is the width exponent of a standard initialisation (variance ``1/fan_in``):
  0 for a layer whose fan-in is fixed (an embedding), 1/2 for one whose fan-in grows. At
  ``n = n0`` the weights are the model's own draw.

The width exponents ``a``, ``b``, ``c`` are unchanged: away from ``n0`` the model scales
exactly as without a base width; only the constants move, so that the model at ``n0`` is
the user's model trained with one learning rate.

A single base width stands for the model width (``d_model``, the hidden size, a ResNet's
first-stage channels): the model width is read as the most common width among the layers
(ties: the smallest), and every width-sized dimension is taken to grow in proportion with
it, so every layer gets the same ratio ``r = model width / n0``. A mapping gives each layer
its own base width instead.

Examples:
  >>> widths = {"emb": 256, "up": 256, "down": 1024, "head": 256}
  >>> model_width(widths)
  256.0
  >>> width_ratios(widths, 64)
  {'emb': 4.0, 'up': 4.0, 'down': 4.0, 'head': 4.0}
  >>> width_ratios(widths, None)["down"]  # no base width: the width itself
  1024.0
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

from maxp_core import validate
from maxp_core.errors import MaxPError
from maxp_core.roles import Role

BaseWidth = float | Mapping[str, float] | None
"""A base width: one number for the model width, one per layer name, or ``None`` (width 1)."""

#: Width exponent of the standard deviation of a standard (``1/fan_in`` variance) init.
STANDARD_B = {Role.EMBEDDING: 0.0, Role.HIDDEN: 0.5, Role.READOUT: 0.5}


def check_base_width(base_width: object) -> BaseWidth:
    """``base_width`` validated: ``None``, a positive finite number, or a mapping of layer
    names to positive finite numbers.

    Examples:
      >>> check_base_width(64)
      64.0
      >>> check_base_width(0)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      maxp_core.errors.MaxPError: base_width = 0 must be > 0 (the model width at which ...
    """
    if base_width is None:
        return None
    if isinstance(base_width, Mapping):
        return {
            validate.text(name, "base_width key"): _positive(value, f"base_width[{name!r}]")
            for name, value in base_width.items()
        }
    return _positive(base_width, "base_width")


def _positive(value: object, what: str) -> float:
    try:
        return validate.positive_number(value, what)
    except MaxPError as error:
        raise MaxPError(f"{error} (the model width at which the learning rate was tuned)") from None


def model_width(widths: Mapping[str, float]) -> float:
    """The model width: the most common layer width, the smallest among equally common ones."""
    if not widths:
        raise MaxPError("a base width needs at least one maxP layer to read the model width from")
    counts = Counter(float(n) for n in widths.values())
    most = max(counts.values())
    return min(n for n, count in counts.items() if count == most)


def width_ratios(widths: Mapping[str, float], base_width: BaseWidth) -> dict[str, float]:
    """The number each layer's ``n^-a``, ``n^-c`` (and init) powers are taken of, by layer.

    Args:
      widths: each layer's width ``n``.
      base_width: ``None`` (the width itself, as without a base width), the model width at
        which the rates were tuned (every layer's ratio is ``model_width(widths) / base``),
        or a base width per layer name (every layer of ``widths`` must have one).

    Raises:
      MaxPError: a base width that is not a positive number, or a mapping that misses a
        layer (the message names it and lists the layers).
    """
    base = check_base_width(base_width)
    if base is None:
        return {name: float(n) for name, n in widths.items()}
    if isinstance(base, Mapping):
        missing = [name for name in widths if name not in base]
        if missing:
            raise MaxPError(
                f"base_width gives no base width for the layers {missing}; give one for every maxP layer "
                f"({list(widths)}) or a single number for the model width"
            )
        return {name: float(n) / base[name] for name, n in widths.items()}
    ratio = model_width(widths) / base
    return dict.fromkeys(widths, ratio)


def init_rescale(ratio: float, b: float, role: Role | str) -> float:
    """The factor that turns a standard initial weight into maxP's at width ratio ``ratio``:
    ``ratio^-(b - b_standard)`` (a zero-initialised weight, ``b = inf``, stays zero: 0).

    Examples:
      >>> init_rescale(4.0, 0.5, "embedding")  # muP's embedding: std n^-1/2 against a fixed fan-in
      0.5
      >>> init_rescale(4.0, 0.5, "hidden")  # muP's hidden layer is the standard init
      1.0
    """
    if math.isinf(b):
        return 0.0
    return float(ratio ** -(b - STANDARD_B[Role.parse(role)]))


def describe_base(widths: Mapping[str, float], base_width: BaseWidth) -> str | None:
    """One line for a layer table: the base width and the ratio it gives (``None`` without one)."""
    base = check_base_width(base_width)
    if base is None:
        return None
    if isinstance(base, Mapping):
        return "base widths per layer: rates lr_prefactor * (n / n_base)^-c, multipliers (n / n_base)^-a"
    ratio = model_width(widths) / base
    return (
        f"base width {base:g}: model width {model_width(widths):g} (the most common layer width), "
        f"ratio {ratio:.4g}; rates lr_prefactor * ratio^-c, multipliers ratio^-a (a folded multiplier "
        "moves into the rate and init), the model's own init scaled by ratio^-(b - b_standard)"
    )
