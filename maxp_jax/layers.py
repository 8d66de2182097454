"""Explicit output multipliers for flax models (``MaxPSpec(multipliers="explicit")``).

The multiplier of a layer is ``width^-a`` (:meth:`MaxPSpec.multiplier`). These layers
keep the parameter names of the flax layers they extend, so rules written for a plain
model match them too.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
from flax import nnx


def multiplier(a: float, width: int) -> float:
    """``width^-a``: the output multiplier of a layer with exponent ``a``.

    Examples:
      >>> multiplier(0.5, 256)
      0.0625
    """
    return float(width) ** -float(a)


class ScaledDense(nn.Dense):
    """``flax.linen.Dense`` whose output is multiplied by ``multiplier``."""

    multiplier: float = 1.0

    def __call__(self, inputs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        return super().__call__(inputs, *args, **kwargs) * self.multiplier


class ScaledEmbed(nn.Embed):
    """``flax.linen.Embed`` whose output is multiplied by ``multiplier``."""

    multiplier: float = 1.0

    def __call__(self, inputs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        return super().__call__(inputs, *args, **kwargs) * self.multiplier


class ScaledLinear(nnx.Linear):
    """``flax.nnx.Linear`` whose output is multiplied by ``multiplier``."""

    def __init__(
        self, in_features: int, out_features: int, *, multiplier: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(in_features, out_features, **kwargs)
        self.multiplier = float(multiplier)

    def __call__(self, inputs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        return super().__call__(inputs, *args, **kwargs) * self.multiplier
