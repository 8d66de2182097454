"""The constant in front of a layer's initial standard deviation ``n^-b``.

maxP's exponent ``b`` says how the initial standard deviation scales with the width ``n``;
the constant must still make each layer a standard one at any given width. A hidden or
readout layer whose contracted size (fan-in) is a fixed multiple ``k`` of its width (a
convolution's window, a dense layer after a flattened feature map) draws
``std_prefactor * k^-1/2 * n^-b``, which is ``1/sqrt(fan_in)`` for ``b = 1/2``: without the
``k^-1/2`` a 3x3 convolution starts three times too large and activations grow through
depth. An embedding keeps ``n^-b`` (its fan-in does not grow) with only its window counted.

Examples:
  >>> std_correction("hidden", fan_in=9 * 64, width=64, window=9)  # a 3x3 convolution
  0.3333333333333333
  >>> std_correction("hidden", fan_in=64, width=64, window=1)  # a dense layer: nothing changes
  1.0
  >>> std_correction("embedding", fan_in=27, width=64, window=9)  # a 3x3 stem on 3 channels
  0.3333333333333333
"""

from __future__ import annotations

from collections.abc import Sequence

from maxp_core.resolve import warn_user
from maxp_core.roles import Role

#: The largest forward gain ``fan_in * (std * multiplier)^2`` a hidden layer may start with
#: before activations grow through depth: 2 is He's gain for ReLU, with 5% to spare.
LARGEST_GAIN = 2.1


def std_correction(role: Role | str, fan_in: int, width: float, window: int) -> float:
    """The factor a layer's ``std_prefactor * n^-b`` is multiplied by (see the module)."""
    if Role.parse(role) is Role.EMBEDDING:
        return float(window) ** -0.5
    return float(fan_in / width) ** -0.5


def forward_gain(fan_in: int, std: float, multiplier: float = 1.0) -> float:
    """How much a layer multiplies its input's mean square at initialisation (before the
    nonlinearity): ``fan_in * (std * multiplier)^2``."""
    return fan_in * (std * multiplier) ** 2


def warn_on_growing_init(layers: Sequence[tuple[str, Role | str, float]]) -> None:
    """Warn, naming them, about hidden layers whose initial forward gain exceeds :data:`LARGEST_GAIN`.

    Args:
      layers: ``(name, role, forward gain)`` per layer.
    """
    growing = [
        f"{name} (gain {gain:.3g})"
        for name, role, gain in layers
        if Role.parse(role) is Role.HIDDEN and gain > LARGEST_GAIN
    ]
    if growing:
        warn_user(
            f"the hidden layers {growing} start with fan_in * (std * multiplier)^2 above {LARGEST_GAIN:g}: "
            "activations at initialisation grow through depth by about that factor per layer (half of it "
            "after a ReLU). Lower std_prefactor, or check the layer's width and fan-in"
        )
