"""The published maxP's per-layer alignment functions, on this project's measurement.

:func:`compute_alignment` takes one layer's initial and current input and weight and
returns ``(alpha, omega, u)``, the alignments of the three update terms of
``z @ W.T = z0 @ W0.T + z0 @ dW.T + dz @ W0.T + dz @ dW.T``; :func:`compute_alignments_for_pms`
does it for a list of layers. Both compute with :func:`maxp_core.alignment.layer_alignment`,
so they return what this project's :class:`~maxp_torch.Parametrization` and ``maxp_jax``
measure. Inputs may be numpy arrays, anything ``np.asarray`` reads, or framework tensors
(read through ``.detach()`` and ``.cpu()`` when they have them, so no framework is imported
here); everything is computed in float64.

Deliberate differences from the published functions:

* **A term that carries no information is NaN, not 0.0.** The published returns 0.0
  when ``dW`` or ``dz`` is zero (for example before the first optimizer step, or for
  ``omega`` and ``u`` of a layer whose input is the data). An alignment of 0 means "this
  term does not grow with width", so an LP fed that 0 would pick the largest learning
  rates the constraints allow, silently. NaN is refused by every solver of this project
  with a message naming the layer (and :func:`maxp_core.alignment.fill_missing` replaces it
  by the previous value), so the gap is visible instead of being read as a measurement.
  Test such values with ``math.isnan``.
* **No absolute threshold.** The published skips a term when ``max|dW|`` or ``max|dz|``
  is below ``1e-12``; here only an exact zero (or a non-finite or empty factor) is
  missing, and a tiny update is measured like any other: the alignment does not depend
  on the size of the factors.
* **rms values are clipped to [0, 1].** A product cannot grow faster than ``fan_in``
  (value 1), and a value below 0 (terms cancelling beyond random) would let an LP raise a
  learning rate without bound on noise. The published keeps such values as they are.
* **fan_in < 2 gives NaN in rms mode** (no width to scale with: ``log 1 = 0``); the
  published divides by ``log 2`` instead. The spectral mode does not use ``fan_in``.
* Errors are :class:`~maxp_core.errors.MaxPError` (a ``ValueError``, as published) and
  name the valid values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from maxp_core import validate
from maxp_core.alignment import MODES, Alignment, AlignmentMode, layer_alignment
from maxp_core.errors import MaxPError

#: What the published returns for a layer with no snapshot: the "full" alignment preset.
FULL_ALIGNMENT = Alignment(alpha=1.0, omega=0.5, u=1.0)

#: One layer's ``((z0, w0), (z, w))``, as :func:`compute_alignments_for_pms` takes it.
Snapshot = tuple[tuple[Any, Any], tuple[Any, Any]]


def as_float64(x: Any, what: str = "input") -> np.ndarray:
    """``x`` as a float64 numpy array; tensors are read through ``.detach()`` and ``.cpu()``.

    Args:
      x: a numpy array, anything ``np.asarray`` reads (lists, scalars), or a framework
        tensor (a PyTorch tensor on any device, in any real dtype including bfloat16).
      what: how error messages name ``x``.

    Returns:
      A float64 array with ``x``'s shape.

    Raises:
      MaxPError: ``x`` holds complex numbers or is not numeric.

    Examples:
      >>> as_float64([[1, 2], [3, 4]]).dtype
      dtype('float64')
    """
    if hasattr(x, "detach"):
        x = x.detach()
    if hasattr(x, "cpu"):
        x = x.cpu()
    try:
        array = np.asarray(x)
    except TypeError:
        if not hasattr(x, "float"):
            raise MaxPError(
                f"compute_alignment: the {what} is not an array, got {type(x).__name__}"
            ) from None
        array = np.asarray(x.float())  # a dtype numpy lacks (bfloat16, float8): widen it first
    if array.dtype.kind not in "biuf":
        raise MaxPError(
            f"compute_alignment: the {what} must hold real numbers, got dtype {array.dtype} "
            f"({type(x).__name__})"
        )
    return array.astype(np.float64)


def checked_norm_mode(norm_mode: Any) -> AlignmentMode:
    """``norm_mode`` lower-cased and stripped, as published; anything but rms or spectral raises.

    Examples:
      >>> checked_norm_mode(" RMS ")
      'rms'
    """
    mode = norm_mode.lower().strip() if isinstance(norm_mode, str) else norm_mode
    if mode not in MODES:
        raise MaxPError(f"norm_mode must be one of {list(MODES)}, got {norm_mode!r}")
    return cast(AlignmentMode, mode)


def compute_alignment(
    z0: Any, w0: Any, z: Any, w: Any, fan_in: int, norm_mode: str = "rms"
) -> tuple[float, float, float]:
    """``(alpha, omega, u)`` of one layer from its initial and current input and weight.

    ``alpha`` is the alignment of ``z0 @ dW.T``, ``omega`` of ``dz @ W0.T`` and ``u`` of
    ``dz @ dW.T`` (``dz = z - z0``, ``dW = w - w0``). In ``"rms"`` mode each is, per row
    ``x`` of the input factor and for the matrix factor ``Y``,
    ``(log rms(x @ Y.T) - log(rms(x) * rms(Y))) / log(fan_in)`` averaged over rows: about 1
    when the rows line up with ``Y``, about 0.5 for random directions. ``"spectral"`` mode
    averages ``|x @ Y.T|_2 / (|x|_2 * sigma_max(Y))`` instead. The module docstring lists
    where this differs from the published function (NaN, not 0.0, for a term without
    information; rms values clipped to ``[0, 1]``).

    Args:
      z0: the layer's input at initialization, shape ``(..., fan_in)``; leading axes are
        flattened into rows.
      w0: its weight at initialization, ``(out, fan_in)``.
      z: its current input for the same samples (the shape of ``z0``).
      w: its current weight (the shape of ``w0``).
      fan_in: the width that scales: the base of the logarithm in rms mode.
      norm_mode: ``"rms"`` or ``"spectral"`` (case and surrounding spaces ignored).

    Returns:
      ``(alpha, omega, u)`` as floats (an :class:`~maxp_core.alignment.Alignment`, a tuple),
      NaN for a term whose factor is zero.

    Raises:
      MaxPError: an unknown ``norm_mode``, a ``fan_in`` that is not a positive integer, or
        shapes that do not fit together.

    Examples:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> z0, w0 = rng.standard_normal((8, 512)), rng.standard_normal((16, 512))
      >>> dw = np.outer(rng.standard_normal(16), z0[0])   # every row of dW along z0[0]
      >>> alpha, omega, u = compute_alignment(z0[:1], w0, z0[:1], w0 + dw, fan_in=512)
      >>> round(alpha, 6), omega, u   # the input did not change: omega and u carry no information
      (1.0, nan, nan)
    """
    mode = checked_norm_mode(norm_mode)
    width = validate.integer(fan_in, "compute_alignment: fan_in", 1)
    arrays = [
        as_float64(value, what)
        for value, what in (
            (z0, "initial input z0"),
            (w0, "initial weight w0"),
            (z, "input z"),
            (w, "weight w"),
        )
    ]
    initial_input, initial_weight, current_input, current_weight = arrays
    return layer_alignment(initial_input, current_input, initial_weight, current_weight, mode, width)


def compute_alignments_for_pms(
    snapshots: Sequence[Snapshot | None], fan_ins: Sequence[int], norm_mode: str = "rms"
) -> tuple[list[float], list[float], list[float]]:
    """:func:`compute_alignment` for a list of layers: ``(alpha_list, omega_list, u_list)``.

    Args:
      snapshots: one entry per layer: ``((z0, w0), (z, w))``, or ``None`` for a layer
        that was not captured, which gets the "full" preset ``(1.0, 0.5, 1.0)`` as published.
      fan_ins: each layer's width, in the same order.
      norm_mode: ``"rms"`` or ``"spectral"``.

    Returns:
      Three lists of floats, one entry per layer in the given order (NaN where a term
      carries no information, see :func:`compute_alignment`).

    Raises:
      MaxPError: the lists differ in length, an entry is not ``((z0, w0), (z, w))`` or
        ``None``, or :func:`compute_alignment` refuses an entry (the message names it).

    Examples:
      >>> compute_alignments_for_pms([None, None], [64, 64])
      ([1.0, 1.0], [0.5, 0.5], [1.0, 1.0])
    """
    mode = checked_norm_mode(norm_mode)
    if len(snapshots) != len(fan_ins):
        raise MaxPError(
            f"compute_alignments_for_pms: {len(snapshots)} snapshots but {len(fan_ins)} fan_ins; "
            "give one fan_in per snapshot"
        )
    columns: tuple[list[float], list[float], list[float]] = ([], [], [])
    for index, (snapshot, fan_in) in enumerate(zip(snapshots, fan_ins, strict=True)):
        values = FULL_ALIGNMENT if snapshot is None else _snapshot_alignment(index, snapshot, fan_in, mode)
        for column, value in zip(columns, values, strict=True):
            column.append(float(value))
    return columns


def _snapshot_alignment(
    index: int, snapshot: Any, fan_in: int, mode: AlignmentMode
) -> tuple[float, float, float]:
    """:func:`compute_alignment` of entry ``index``; errors name the entry."""
    try:
        (z0, w0), (z, w) = snapshot
    except (TypeError, ValueError):
        raise MaxPError(
            f"compute_alignments_for_pms: snapshot {index} must be ((z0, w0), (z, w)) or None, "
            f"got {type(snapshot).__name__}"
        ) from None
    try:
        return compute_alignment(z0, w0, z, w, fan_in, mode)
    except MaxPError as error:
        raise MaxPError(f"compute_alignments_for_pms: snapshot {index}: {error}") from None
