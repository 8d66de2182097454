"""Checks every public entry runs on its arguments, with messages that name the culprit.

Each function takes the value and ``where`` (the layer, node, path or argument it belongs
to, as the message should name it) and returns the value in its canonical type, or raises
:class:`~maxp_core.errors.MaxPError` saying what was given and what would be valid.

Numbers are accepted as Python ``int``/``float`` or numpy scalars (``np.float32(-0.5)``,
``np.int64(0)``, 0-d arrays); booleans, strings, ``None`` and complex numbers are refused.

Examples:
  >>> import numpy as np
  >>> exponent(np.float32(-0.5), "layer 'emb': a")
  -0.5
  >>> alignment_value(1.5, "layer 'fc': alpha")  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  maxp_core.errors.MaxPError: layer 'fc': alpha = 1.5 is out of range; an alignment lies in [0, 1]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from maxp_core.errors import MaxPError

#: Largest ``|a|``, ``|b|`` or ``|c|`` accepted. Real parametrizations use exponents of
#: order 1; the bound keeps every number far below what solvers treat as infinite (1e20).
EXPONENT_BOUND = 100.0

ALIGNMENT_FIELDS: tuple[str, ...] = ("alpha", "omega", "u")


def real_number(value: Any, where: str) -> float:
    """A finite real number as ``float``; anything else raises naming ``where``."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise MaxPError(f"{where} must be a real number, got {type(value).__name__} {value!r}")
    try:
        result = float(value)
    except OverflowError:
        digits = len(str(abs(int(value)))) if isinstance(value, numbers.Integral) else "many"
        raise MaxPError(f"{where} is an integer of {digits} digits, too large to be a number here") from None
    if not math.isfinite(result):
        raise MaxPError(f"{where} = {value!r} is not a finite number")
    return result


def exponent(value: Any, where: str) -> float:
    """An exponent ``a``, ``b`` or ``c``: finite and within ``EXPONENT_BOUND``."""
    result = real_number(value, where)
    if abs(result) > EXPONENT_BOUND:
        raise MaxPError(
            f"{where} = {value!r} is out of range; exponents must lie in "
            f"[-{EXPONENT_BOUND:g}, {EXPONENT_BOUND:g}] (parametrizations use values of order 1)"
        )
    return result


def init_exponent(value: Any, where: str) -> float:
    """An initialization exponent ``b``: an :func:`exponent`, or ``+inf`` for a zero initial weight.

    ``std = n^-b`` is zero for ``b = inf``, so ``b = math.inf`` is how a layer whose weight
    starts at zero (a common choice for output projections and gates) is declared.
    """
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
        if float(value) == math.inf:
            return math.inf
        if math.isnan(float(value)) or math.isinf(float(value)):
            raise MaxPError(f"{where} = {value!r} is not a finite number; b = inf (a zero initial weight) is")
    return exponent(value, where)


def alignment_value(value: Any, where: str) -> float:
    """One alignment (``alpha``, ``omega`` or ``u``): finite and in ``[0, 1]``."""
    result = real_number(value, where)
    if not 0.0 <= result <= 1.0:
        raise MaxPError(f"{where} = {value!r} is out of range; an alignment lies in [0, 1]")
    return result


def alignment_triple(value: Any, where: str) -> tuple[float, float, float]:
    """``(alpha, omega, u)``: a sequence of exactly three alignments."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise MaxPError(f"{where} must be three numbers (alpha, omega, u), got {value!r}")
    if len(value) != 3:
        raise MaxPError(f"{where} must be three numbers (alpha, omega, u), got {len(value)}: {value!r}")
    alpha, omega, u = (
        alignment_value(v, f"{where}: {name}") for v, name in zip(value, ALIGNMENT_FIELDS, strict=True)
    )
    return alpha, omega, u


def positive_number(value: Any, where: str) -> float:
    """A finite number ``> 0`` (a learning rate, a standard deviation)."""
    result = real_number(value, where)
    if result <= 0.0:
        raise MaxPError(f"{where} = {value!r} must be > 0")
    return result


def non_negative_number(value: Any, where: str) -> float:
    """A finite number ``>= 0`` (a weight decay, a momentum)."""
    result = real_number(value, where)
    if result < 0.0:
        raise MaxPError(f"{where} = {value!r} must be >= 0")
    return result


def fraction(value: Any, where: str) -> float:
    """A decay rate in ``[0, 1)`` (an EMA weight, Adam's betas)."""
    result = real_number(value, where)
    if not 0.0 <= result < 1.0:
        raise MaxPError(f"{where} = {value!r} is out of range; it must lie in [0, 1)")
    return result


def integer(value: Any, where: str, minimum: int) -> int:
    """An integer ``>= minimum`` (numpy integers accepted; floats such as 2.0 refused)."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise MaxPError(f"{where} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise MaxPError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def boolean(value: Any, where: str) -> bool:
    """``True`` or ``False`` (numpy booleans accepted); strings such as ``"no"`` refused."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise MaxPError(f"{where} must be True or False, got {type(value).__name__} {value!r}")


def text(value: Any, where: str) -> str:
    """A string (names, modes, solver choices)."""
    if not isinstance(value, str):
        raise MaxPError(f"{where} must be a string, got {type(value).__name__} {value!r}")
    return value


def choice(value: Any, where: str, options: Sequence[str]) -> str:
    """One of ``options`` (compared exactly)."""
    if not isinstance(value, str) or value not in options:
        raise MaxPError(f"{where} must be one of {list(options)}, got {value!r}")
    return value


def real_array(values: Any, where: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A float64 array of real numbers (complex, strings and objects refused)."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as err:
        raise MaxPError(f"{where} is not an array of numbers: {err}") from None
    if array.dtype.kind not in "biuf":
        kind = "complex" if array.dtype.kind == "c" else str(array.dtype)
        raise MaxPError(f"{where} must hold real numbers, got {kind} values: {values!r}"[:300])
    if array.dtype.kind == "b":
        raise MaxPError(f"{where} must hold numbers, got booleans")
    if shape is not None and array.shape != shape:
        raise MaxPError(f"{where}: expected shape {shape}, got {array.shape}")
    return array.astype(np.float64)
