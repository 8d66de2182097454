"""The abc symmetry: moving a layer's output multiplier into its init and learning rate.

``(a, b, c) -> (a + t, b - t, c - t)`` for Adam (``c - 2t`` for SGD) leaves training
unchanged in exact arithmetic: the multiplier ``n^-a`` scales the output, ``n^-b`` the
initial weights, and Adam's update is invariant to the gradient's scale while SGD's is
not (hence ``2t``). It is not exact for Adam's ``eps`` or for weight decay. Folding with
``t = -a`` removes the multiplier, so a model can stay untouched.

Examples:
  >>> fold_multiplier(0.5, 0.5, 0.5, "adam")   # muP readout
  (0.0, 1.0, 1.0)
  >>> fold_multiplier(-0.5, 0.5, 0.0, "sgd")   # muP embedding under SGD
  (0.0, 0.0, -1.0)
"""

from __future__ import annotations

from maxp_core.formulation import parse_optimizer


def shift(a: float, b: float, c: float, t: float, optimizer: str) -> tuple[float, float, float]:
    """``(a + t, b - t, c - t)`` for Adam, ``(a + t, b - t, c - 2t)`` for SGD."""
    step = 1.0 if parse_optimizer(optimizer) == "adam" else 2.0
    return a + t, b - t, c - step * t


def fold_multiplier(a: float, b: float, c: float, optimizer: str) -> tuple[float, float, float]:
    """The equivalent ``(0, b', c')`` without an output multiplier."""
    a2, b2, c2 = shift(a, b, c, -a, optimizer)
    return a2 + 0.0, b2 + 0.0, c2 + 0.0
