"""Alignment of weights and activations: the numpy reference of DESIGN section 4.

For a layer ``y = z @ W.T`` (``W`` of shape ``(out, fan_in)``) with ``z = z0 + dz`` and
``W = W0 + dW``, the output update splits into ``z0 @ dW.T + dz @ W0.T + dz @ dW.T``.
How fast each term grows with width is its *alignment*:

* ``alpha``: of ``(z0, dW)``; ``omega``: of ``(dz, W0)``; ``u``: of ``(dz, dW)``.

``rms`` mode, per sample row ``x`` of ``X`` and matrix ``Y``::

    (log rms(x @ Y.T) - log(rms(x) * rms(Y))) / log(fan_in)

averaged over rows: 1 when ``x`` lines up with ``Y``'s rows (the sum of ``fan_in``
terms grows like ``fan_in``), 0.5 for random directions (``sqrt(fan_in)``), near 0
when the terms cancel. ``spectral`` mode is the plain ratio
``|x @ Y.T|_2 / (|x|_2 * |Y|_spectral)``, averaged over rows, in ``[0, 1]``.

Rules that keep the LP safe:

* A measurement that carries no information is *missing* (NaN), never 0: 0 would be
  read as "no alignment" and give the largest learning rates. Missing is what comes
  out when no sample row is left (rows whose input factor is zero or not finite are
  left out, as are all rows when the matrix factor is zero or not finite, or the
  sample is empty) and when ``fan_in < 2`` (``log(1) = 0``: no width to scale with).
  The adapters keep a missing layer's previous alignment (:func:`fill_missing`).
* Rows whose product cancels exactly while both factors are usable do carry
  information: the term does not grow at all, and the alignment is 0.
* Each row of ``x`` and the whole of ``Y`` are first scaled by a power of two that
  brings their largest entry near 1. The value is invariant to those scales and
  powers of two are exact in floating point, so the same numbers come out at any
  magnitude (``1e160`` or ``1e-170`` in float64, ``1e17`` in float32) without overflow.
  An eager adapter may first compute without them (:func:`plain_stack_norms`) and keep
  that only where nothing came near the range's ends (:func:`plain_norms_of_l2`).
* ``rms`` values are clipped to ``[0, 1]``: 1 is the largest a product can reach,
  and a negative value (terms cancelling beyond random) would let the LP raise a
  learning rate without bound on noise.
* Complex inputs are refused: their imaginary part would be dropped.

Examples:
  >>> import numpy as np
  >>> rng = np.random.default_rng(0)
  >>> v = rng.standard_normal(4096)
  >>> w = np.outer(rng.standard_normal(64), v)   # every row of w is a multiple of v
  >>> round(log_rms_alignment(np.stack([v, -2 * v]), w), 6)   # inputs along v
  1.0
  >>> round(log_rms_alignment(rng.standard_normal((8, 4096)), w), 1)
  0.5
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from types import ModuleType
from typing import Any, Literal, NamedTuple

import numpy as np

from maxp_core import validate
from maxp_core.errors import MaxPError

AlignmentMode = Literal["rms", "spectral"]
MODES: tuple[str, ...] = ("rms", "spectral")


class _Products(NamedTuple):
    """The scaled rows and their products, and the matrices' RMS: :class:`RowNorms` are their
    row RMS."""

    rows: Any  # [z0; dz], each row scaled to unit peak
    both: Any  # rows @ dW.T: alpha's product, then u's
    omega: Any  # dz @ W0.T
    rms_dw: Any
    rms_w0: Any


class RowNorms(NamedTuple):
    """The RMS values the three rms alignments of a stack of layers are computed from.

    For ``L`` layers measured on ``r`` sample rows: the large products reduced to a few
    numbers per row, what :func:`stack_norms` computes where the layers live and
    :func:`alignments_of_norms` turns into alignments (on the host, for all stacks at once).
    """

    rows: Any  # (L, 2r): each row of [z0; dz], scaled to unit peak
    both: Any  # (L, 2r): each row of [z0; dz] @ dW.T (alpha's rows, then u's), dW at unit peak
    omega: Any  # (L, r): each row of dz @ W0.T, W0 at unit peak
    rms_dw: Any  # (L,): of dW at unit peak
    rms_w0: Any  # (L,): of W0 at unit peak

    def packed(self, xp: ModuleType = np) -> Any:
        """All of it as one ``(L, 5r + 2)`` array (one copy to the host)."""
        parts = [self.rows, self.both, self.omega, self.rms_dw[..., None], self.rms_w0[..., None]]
        return xp.concatenate(parts, -1)

    @classmethod
    def unpacked(cls, packed: Any) -> RowNorms:
        """The :class:`RowNorms` of an array :meth:`packed` made.

        Examples:
          >>> norms = RowNorms(*(np.full(shape, float(k)) for k, shape in
          ...                    enumerate([(1, 4), (1, 4), (1, 2), (1,), (1,)])))
          >>> RowNorms.unpacked(norms.packed()).omega.tolist()
          [[2.0, 2.0]]
        """
        r = (packed.shape[-1] - 2) // 5
        return cls(
            packed[..., : 2 * r],
            packed[..., 2 * r : 4 * r],
            packed[..., 4 * r : 5 * r],
            packed[..., 5 * r],
            packed[..., 5 * r + 1],
        )


class Alignment(NamedTuple):
    """The three alignments of a layer: floats, or arrays of one entry per layer from
    :func:`alignment_of_layers`."""

    alpha: float
    omega: float
    u: float


def _rows(x: Any, xp: ModuleType, what: str = "input") -> Any:
    """``x`` as float rows ``(rows, last axis)`` (float64 with numpy); complex refused."""
    if xp is np:
        x = np.asarray(x)
        if x.dtype.kind not in "biuf":
            raise MaxPError(f"alignment: the {what} must hold real numbers, got dtype {x.dtype}")
        if x.dtype.kind == "f":
            # Below its dtype's smallest normal number a value has lost its precision: zero.
            x = np.where(np.abs(x) < np.finfo(x.dtype).tiny, np.zeros_like(x), x)
        x = x.astype(np.float64)
    else:
        x = xp.asarray(x)
        if _is_complex(x.dtype):
            raise MaxPError(f"alignment: the {what} must hold real numbers, got dtype {x.dtype}")
    if x.ndim == 0:
        raise MaxPError(f"alignment: the {what} must have at least one axis, got a scalar")
    if x.ndim == 1:
        return x[None, :]
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # also when an axis is empty


def _is_complex(dtype: Any) -> bool:
    """Whether a numpy, torch or JAX dtype is complex."""
    return bool(getattr(dtype, "is_complex", False)) or getattr(dtype, "kind", "") == "c"


def _is_torch(xp: ModuleType) -> bool:
    return getattr(xp, "__name__", "") == "torch"


def _peak(x: Any, xp: ModuleType, axis: Any) -> Any:
    """Largest ``|x|`` over ``axis``, keeping the reduced axes (NaN if any entry is NaN)."""
    if _is_torch(xp):  # from the largest and the smallest entry: no array of |x| is allocated
        # (torch.aminmax would read x once, but runs ten times slower on a CPU)
        return xp.maximum(xp.amax(x, dim=axis, keepdim=True), -xp.amin(x, dim=axis, keepdim=True))
    return xp.max(xp.abs(x), axis=axis, keepdims=True)


def _unit_scale(x: Any, xp: ModuleType, axis: Any, in_place: bool = False) -> Any:
    """``x`` times a power of two that brings its largest entry over ``axis`` into ``[1, 2)``.

    Exact in floating point. Where the peak is not finite, ``x`` stays not finite; a
    peak below the dtype's smallest normal number is zero (near-zero: no precision left,
    so no information). ``in_place`` (numpy, torch) scales ``x`` itself.
    """
    if math.prod(x.shape) == 0:
        return x
    factor = _scale_factor(x, xp, axis)
    if in_place:
        x *= factor
        return x
    return x * factor


def _scale_factor(x: Any, xp: ModuleType, axis: Any) -> Any:
    """The power of two :func:`_unit_scale` multiplies ``x`` by, one per row or matrix (the
    reduced axes kept): 0 for a peak below the smallest normal number (or NaN); for an infinite
    peak a power that keeps ``x`` infinite."""
    peak = _peak(x, xp, axis)
    # peak = m * 2**e with m in [0.5, 1), so peak * 2**(1 - e) lies in [1, 2); frexp reads e off
    # the float's bits, where log2 and floor would take more operations and round near powers
    # of two. (Whatever e a NaN or inf gives, x stays not finite under any power.)
    usable = peak >= _smallest_normal(x, xp)
    exponent = xp.where(usable, 1 - xp.frexp(peak)[1], 0)
    return xp.where(usable, xp.exp2(_as_dtype_of(exponent, peak, xp)), xp.zeros_like(peak))


def _as_dtype_of(values: Any, like: Any, xp: ModuleType) -> Any:
    """``values`` in the dtype of ``like``."""
    if _is_torch(xp):
        return values.to(like.dtype)
    return values.astype(like.dtype)


def _smallest_normal(x: Any, xp: ModuleType) -> float:
    """The smallest normal number of ``x``'s floating dtype (0 for other dtypes)."""
    try:
        return float(xp.finfo(x.dtype).tiny)
    except (TypeError, ValueError):
        return 0.0


def _scaled_rows(x: Any, xp: ModuleType) -> Any:
    return _unit_scale(x, xp, -1)


def _scaled_matrix(y: Any, xp: ModuleType) -> Any:
    return _unit_scale(y, xp, (-2, -1))


def _masked_mean(values: Any, keep: Any, xp: ModuleType) -> Any:
    """Mean over the last axis of ``values`` where ``keep``; NaN (missing) where none is kept."""
    count = xp.sum(keep, axis=-1)
    total = xp.sum(xp.where(keep, values, xp.zeros_like(values)), axis=-1)
    return xp.where(count > 0, total / xp.clip(count, 1, None), xp.full_like(total, math.nan))


def _check_fan_in(fan_in: int | None, x: Any) -> int:
    if fan_in is None:
        return int(x.shape[-1])
    return validate.integer(fan_in, "alignment: fan_in", 0)


def _check_contracted(x: Any, y: Any, where: str = "alignment") -> None:
    if x.shape[-1] != y.shape[-1]:
        raise MaxPError(
            f"{where}: the input has {x.shape[-1]} features but the matrix contracts {y.shape[-1]}; "
            "x is (..., fan_in) and the matrix (out, fan_in)"
        )


def log_rms_alignment(x: Any, y: Any, fan_in: int | None = None, xp: ModuleType = np) -> Any:
    """Log-RMS alignment of the product ``x @ y.T``, averaged over the rows of ``x``.

    Args:
      x: activations, shape ``(..., fan_in)``; leading axes are flattened into rows.
      y: weight-like matrix, shape ``(out, fan_in)``.
      fan_in: the width that scales (default: ``x.shape[-1]``).
      xp: the array module: ``numpy`` (float64, the reference) or ``jax.numpy``
        (the input dtype, traceable under ``jit``).

    Returns:
      A float in ``[0, 1]``, or NaN when the sample carries no information (a 0-d
      array with ``jax.numpy``).
    """
    xr = _scaled_rows(_rows(x, xp), xp)
    ym = _scaled_matrix(_rows(y, xp, "matrix"), xp)
    _check_contracted(xr, ym)
    n = _check_fan_in(fan_in, xr)
    if n < 2:
        return _scalar(math.nan, xp)
    rms_p = _row_rms(xr @ ym.T, xp)
    return _scalar(_log_rms_of_norms(_row_rms(xr, xp), _rms(ym, xp), rms_p, np.log(n), xp), xp)


def _log_rms_of_norms(rms_x: Any, rms_y: Any, rms_p: Any, log_n: Any, xp: ModuleType) -> Any:
    """The log-RMS alignment given each row's ``rms(x)``, ``rms(y)`` and ``rms(x @ y.T)``.

    Leading axes are a stack of layers: ``rms_x`` and ``rms_p`` are ``(..., rows)``, ``rms_y`` is
    ``(...)``; the result is ``(...)``. ``log_n`` is ``log(fan_in)``: a number, or one per layer
    with a trailing axis of 1. Both factors come scaled to unit peak, so their product
    neither overflows nor underflows.
    """
    scale = rms_x * rms_y[..., None]
    usable = xp.isfinite(scale) & (scale > 0) & xp.isfinite(rms_p)
    kept = usable & (rms_p > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        values = (xp.log(rms_p) - xp.log(scale)) / log_n
    count = xp.sum(kept, axis=-1)
    mean = xp.sum(xp.where(kept, values, 0.0), axis=-1) / xp.clip(count, 1, None)
    # Usable rows whose products all cancel exactly: the term does not grow, alignment 0; no
    # usable row: missing.
    nothing = xp.where(xp.any(usable, axis=-1), 0.0, math.nan)
    return xp.clip(xp.where(count > 0, mean, nothing), 0.0, 1.0)


def _l2(x: Any, axis: Any, xp: ModuleType) -> Any:
    """The L2 norm over ``axis`` (0 over empty axes)."""
    if _is_torch(xp):  # a norm reduces without an array of squares
        return xp.linalg.vector_norm(x, dim=axis)
    return xp.sqrt(xp.sum(x * x, axis=axis))


def _abs_peak(x: Any, xp: ModuleType) -> Any:
    """Largest ``|x|`` over the last axis (NaN where an entry is): two operations, and an array
    of ``|x|`` as large as ``x`` (rows of a sample here, not weights)."""
    if _is_torch(xp):
        return xp.amax(xp.abs(x), dim=-1)
    return xp.max(xp.abs(x), axis=-1)


def _row_rms(x: Any, xp: ModuleType) -> Any:
    """RMS over the last axis (0 over an empty one)."""
    if _is_torch(xp):
        return _l2(x, -1, xp) / math.sqrt(max(1, x.shape[-1]))
    return xp.sqrt(xp.sum(x * x, axis=-1) / max(1, x.shape[-1]))


def _rms(y: Any, xp: ModuleType) -> Any:
    """RMS over the last two axes (each matrix of a stack; 0 for an empty one)."""
    count = max(1, y.shape[-2] * y.shape[-1])  # 0 for an empty matrix
    if _is_torch(xp):
        return _l2(y, (-2, -1), xp) / math.sqrt(count)
    return xp.sqrt(xp.sum(y * y, axis=(-2, -1)) / count)


def spectral_alignment(x: Any, y: Any, xp: ModuleType = np) -> Any:
    """``|x @ y.T|_2 / (|x|_2 |y|_spectral)`` averaged over rows, in ``[0, 1]``; NaN when missing."""
    xr = _scaled_rows(_rows(x, xp), xp)
    ym = _scaled_matrix(_rows(y, xp, "matrix"), xp)
    _check_contracted(xr, ym)
    if math.prod(ym.shape) == 0:
        return _scalar(math.nan, xp)
    finite_y = xp.all(xp.isfinite(ym))
    safe_y = xp.where(finite_y, ym, xp.zeros_like(ym))
    sigma = xp.linalg.norm(safe_y, ord=2)
    usable_y = finite_y & (sigma > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        norm_p = xp.sqrt(xp.sum((xr @ safe_y.T) ** 2, axis=1))
        norm_x = xp.sqrt(xp.sum(xr * xr, axis=1))
        values = norm_p / (norm_x * sigma)
    keep = xp.isfinite(values) & xp.isfinite(norm_x) & (norm_x > 0) & usable_y
    value = _masked_mean(values, keep, xp)
    return _scalar(xp.clip(value, 0.0, 1.0), xp)


def _scalar(value: Any, xp: ModuleType) -> Any:
    return float(value) if xp is np else xp.asarray(value)


def alignment(
    x: Any, y: Any, mode: AlignmentMode = "rms", fan_in: int | None = None, xp: ModuleType = np
) -> Any:
    """Alignment of ``x @ y.T`` in the given mode (``"rms"`` or ``"spectral"``)."""
    if mode == "rms":
        return log_rms_alignment(x, y, fan_in, xp)
    if mode == "spectral":
        return spectral_alignment(x, y, xp)
    raise MaxPError(f"unknown alignment mode {mode!r}; expected one of {list(MODES)}")


def layer_alignment(
    z0: Any,
    z: Any,
    w0: Any,
    w: Any,
    mode: AlignmentMode = "rms",
    fan_in: int | None = None,
    xp: ModuleType = np,
) -> Alignment:
    """``(alpha, omega, u)`` of a layer from its initial and current input and weight.

    Args:
      z0: input at initialization, shape ``(rows, fan_in)``.
      z: current input for the same samples.
      w0: weight at initialization, shape ``(out, fan_in)`` (torch layout).
      w: current weight.
      mode: ``"rms"`` or ``"spectral"``.
      fan_in: the width that scales (default: the last axis of ``z0``).
      xp: ``numpy`` (float64) or ``jax.numpy`` / ``torch`` (traceable, no host copy).

    Examples:
      >>> import numpy as np
      >>> z0 = np.ones((4, 16)); w0 = np.eye(8, 16)
      >>> layer_alignment(z0, z0, w0, w0)   # nothing changed: no information, missing
      Alignment(alpha=nan, omega=nan, u=nan)
    """
    one_layer: tuple[Any, ...] = tuple(alignment_of_layers([(z0, z, w0, w)], mode, fan_in, xp))
    return Alignment(*(_scalar(value[0], xp) for value in one_layer))


def alignment_of_layers(
    layers: Sequence[tuple[Any, Any, Any, Any]],
    mode: AlignmentMode = "rms",
    fan_in: int | None = None,
    xp: ModuleType = np,
) -> Alignment:
    """:func:`layer_alignment` of several equally shaped layers at once.

    ``layers`` holds one ``(z0, z, w0, w)`` per layer, all of the same shapes. The large
    products are taken layer by layer (no weight is copied into a stack); the many small
    reductions after them run once on the stacked products, so a group of layers costs about
    as many operations as one, which matters where every operation is a kernel launch. Each
    field of the result is an array of shape ``(len(layers),)``.

    Examples:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> def layer(scale):
      ...     z0, w0 = rng.standard_normal((8, 256)), rng.standard_normal((16, 256))
      ...     dw = np.outer(rng.standard_normal(16), np.ones(256))   # every row along ones
      ...     return z0, z0 + scale, w0, w0 + dw
      >>> np.round(alignment_of_layers([layer(1.0), layer(-3.0)]).u, 6)   # dz = scale * ones
      array([1., 1.])
    """
    if mode not in MODES:
        raise MaxPError(f"unknown alignment mode {mode!r}; expected one of {list(MODES)}")
    if mode == "rms":
        return measure_layers(layers, fan_in, xp)[0]
    checked = _checked_layers(layers, xp)
    n = _check_fan_in(fan_in, checked[0][0])
    per_layer = []
    for z0, z, w0, w in checked:
        pairs = ((z0, w - w0), (z - z0, w0), (z - z0, w - w0))
        per_layer.append([xp.asarray(alignment(x, y, mode, n, xp)) for x, y in pairs])
    return Alignment(*(xp.stack([row[j] for row in per_layer]) for j in range(3)))


def measure_layers(
    layers: Sequence[tuple[Any, Any, Any, Any]],
    fan_in: int | None = None,
    xp: ModuleType = np,
    initial_norms: Sequence[Any] | None = None,
    fan_in_first: bool = False,
) -> tuple[Alignment, Any]:
    """RMS-mode :func:`alignment_of_layers`, and whether each layer's weight change is finite.

    The second result (``(len(layers),)`` booleans) comes off the weight change's RMS that the
    alignments need anyway: a weight that holds NaN or inf, where the initial one does not,
    is flagged without another pass over it. ``initial_norms`` (one :func:`weight_norms` of each
    layer's ``w0``) are what the initial weights always give: computed once at initialisation,
    they spare two passes over every initial weight per measurement. ``fan_in_first`` takes
    the weights as ``(fan_in, out)``, the layout of a flax ``Dense`` kernel, which a transpose
    would copy.

    Examples:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> z0, w0 = rng.standard_normal((8, 64)), rng.standard_normal((16, 64))
      >>> nan_weight = w0.copy(); nan_weight[3, 5] = np.nan
      >>> measure_layers([(z0, z0 + 1, w0, w0 + 1), (z0, z0 + 1, w0, nan_weight)])[1].tolist()
      [True, False]
    """
    checked = _checked_layers(layers, xp, fan_in_first)
    n = _check_fan_in(fan_in, checked[0][0])
    if initial_norms is not None and len(initial_norms) != len(checked):
        raise MaxPError(
            f"measure_layers: {len(initial_norms)} initial_norms for {len(checked)} layers; give one "
            "weight_norms(w0) per layer"
        )
    parts = [
        _products(
            *layer,
            xp,
            initial_norms=None if initial_norms is None else initial_norms[k],
            fan_in_first=fan_in_first,
        )
        for k, layer in enumerate(checked)
    ]
    # Reduced once for the stack: under a compiler the reductions of all layers fuse.
    products = _Products(*(xp.stack(list(group)) for group in zip(*parts, strict=True)))
    return alignments_of_norms(_reduced(products, xp), n, xp)


def weight_norms(w0: Any, xp: ModuleType = np) -> Any:
    """What the measurement reads of an initial weight ``(out, fan_in)`` (or a stack of them):
    ``[power of two, RMS after it]``, shape ``(..., 2)``, for :func:`measure_layers`.

    The power of two brings the weight's largest entry into ``[1, 2)`` (:func:`_unit_scale`);
    the RMS is taken of the scaled weight, so neither overflows at any magnitude.

    Examples:
      >>> weight_norms(np.full((4, 4), 3.0)).tolist()   # scaled by 1/2: every entry 1.5
      [0.5, 1.5]
    """
    w0 = xp.asarray(w0)
    if xp is np:  # float64, as every numpy measurement
        w0 = _rows(w0, xp, "initial weight").reshape(w0.shape)
    if math.prod(w0.shape) == 0:
        factor = xp.ones_like(_rms(w0, xp))[..., None, None]
    else:
        factor = _scale_factor(w0, xp, (-2, -1))
    return xp.stack([factor[..., 0, 0], _rms(w0 * factor, xp)], axis=-1)


def _checked_layers(
    layers: Sequence[tuple[Any, Any, Any, Any]], xp: ModuleType, fan_in_first: bool = False
) -> list[tuple[Any, Any, Any, Any]]:
    """Every layer's ``(z0, z, w0, w)`` as rows, all layers of the shapes of the first."""
    if not layers:
        raise MaxPError("alignment_of_layers needs at least one layer")
    checked = [_layer_rows(index, layer, xp, fan_in_first) for index, layer in enumerate(layers)]
    first = (tuple(checked[0][0].shape), tuple(checked[0][3].shape))
    for index, (z0, _, _, w) in enumerate(checked):
        shapes = (tuple(z0.shape), tuple(w.shape))
        if shapes != first:
            raise MaxPError(
                f"alignment_of_layers: layer {index} has inputs {shapes[0]} and weight {shapes[1]} "
                f"but layer 0 has {first[0]} and {first[1]}; measure only equally shaped layers "
                "together (groups_of_equal_shape)"
            )
    return checked


def alignment_of_stacks(
    z0: Any, z: Any, w0: Any, w: Any, fan_in: int | None = None, xp: ModuleType = np, scratch: bool = False
) -> Alignment:
    """RMS-mode :func:`alignment_of_layers` of layers given as stacked arrays.

    ``z0`` and ``z`` are ``(layers, rows, fan_in)``, ``w0`` and ``w`` are ``(layers, out, fan_in)``.
    Every operation, the products included, runs once on the whole stack (a batched matrix
    product), so the cost in operations does not grow with the number of layers: what an
    eager framework wants, where each operation is a kernel launch or a host dispatch. The
    caller chooses how many layers to stack at once (the stacks are copies of its weights).
    ``scratch=True`` (numpy, torch) says the four stacks are the caller's own copies: the
    differences and scalings then overwrite them, and nothing of the weights' size is
    allocated (on a CPU, fresh large arrays cost page faults that dwarf the arithmetic).

    Examples:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> z0, w0 = rng.standard_normal((2, 8, 256)), rng.standard_normal((2, 16, 256))
      >>> dw = np.einsum("lo,i->loi", rng.standard_normal((2, 16)), np.ones(256))
      >>> np.round(alignment_of_stacks(z0, z0 + 1.0, w0, w0 + dw).u, 6)   # dz and dW along ones
      array([1., 1.])
    """
    return measure_stacks(z0, z, w0, w, fan_in, xp, scratch)[0]


def measure_stacks(
    z0: Any,
    z: Any,
    w0: Any,
    w: Any,
    fan_in: int | None = None,
    xp: ModuleType = np,
    scratch: bool = False,
    initial_norms: Any = None,
) -> tuple[Alignment, Any]:
    """:func:`alignment_of_stacks`, and whether each layer's weight change is finite.

    As :func:`measure_layers` for stacked arrays: the flags come off the RMS of the weight
    change, and ``initial_norms`` (``(layers, 2)``, :func:`weight_norms` of ``w0``) spare
    the passes over the initial weights.

    Examples:
      >>> import numpy as np
      >>> w0 = np.ones((2, 3, 4)); w = w0.copy(); w[1, 0, 0] = np.inf
      >>> measure_stacks(np.ones((2, 5, 4)), np.full((2, 5, 4), 2.0), w0, w)[1].tolist()
      [True, False]
    """
    norms = stack_norms(z0, z, w0, w, xp, scratch, initial_norms)
    return alignments_of_norms(norms, _check_fan_in(fan_in, xp.asarray(z0)), xp)


def stack_norms(
    z0: Any, z: Any, w0: Any, w: Any, xp: ModuleType = np, scratch: bool = False, initial_norms: Any = None
) -> RowNorms:
    """The :class:`RowNorms` of stacked layers (arguments as :func:`measure_stacks`).

    The part of a measurement that reads the layers' tensors: what comes out is a few numbers
    per sample row, which :func:`alignments_of_norms` turns into alignments. An eager
    framework copies these to the host and finishes every stack there in one go, instead of
    running the reductions' many small operations once per stack on the device.

    Examples:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> z0, w0 = rng.standard_normal((2, 8, 256)), rng.standard_normal((2, 16, 256))
      >>> dw = np.einsum("lo,i->loi", rng.standard_normal((2, 16)), np.ones(256))
      >>> norms = stack_norms(z0, z0 + 1.0, w0, w0 + dw)
      >>> norms.rows.shape, norms.omega.shape, norms.rms_dw.shape
      ((2, 16), (2, 8), (2,))
      >>> np.round(alignments_of_norms(norms, 256)[0].u, 6)   # dz and dW along ones
      array([1., 1.])
    """
    z0, z, w0, w = _checked_stacks(z0, z, w0, w, xp)
    return _reduced(_products(z0, z, w0, w, xp, scratch, initial_norms), xp)


def _checked_stacks(z0: Any, z: Any, w0: Any, w: Any, xp: ModuleType) -> tuple[Any, Any, Any, Any]:
    z0, z, w0, w = (xp.asarray(v) for v in (z0, z, w0, w))
    for value, what in ((z0, "initial input"), (z, "input"), (w0, "initial weight"), (w, "weight")):
        if _is_complex(value.dtype):
            raise MaxPError(
                f"alignment_of_stacks: the {what} must hold real numbers, got dtype {value.dtype}"
            )
    if z0.ndim != 3 or w0.ndim != 3 or z0.shape != z.shape or w0.shape != w.shape:
        raise MaxPError(
            f"alignment_of_stacks: inputs {tuple(z0.shape)} then {tuple(z.shape)} and weights "
            f"{tuple(w0.shape)} then {tuple(w.shape)}; give (layers, rows, fan_in) inputs and "
            "(layers, out, fan_in) weights, the initial and current ones of equal shapes"
        )
    _check_contracted(z0, w0, "alignment_of_stacks")
    return z0, z, w0, w


def plain_stack_norms(
    z0: Any, z: Any, w0: Any, w: Any, xp: ModuleType = np, scratch: bool = False, initial_norms: Any = None
) -> tuple[RowNorms, Any]:
    """:func:`stack_norms` computed without the powers of two on the rows and weight changes,
    and per layer whether those norms hold (:func:`plain_norms_of_l2`).

    The powers of two only keep sums of squares and products in the floating range; the
    alignments do not depend on them. Finding and applying them costs a dozen small
    operations and three passes over the weight change per stack, which dominate an eager
    measurement on a CPU. Where nothing comes near the range's ends, the plain norms are
    :func:`stack_norms`' up to powers of two and rounding; where they do not hold, measure
    the stack again with :func:`stack_norms`. It is :func:`plain_stack_l2` (what reads the
    layers' tensors, where they live) followed by :func:`plain_norms_of_l2` (on the host).

    Examples:
      >>> rng = np.random.default_rng(0)
      >>> z0, w0 = rng.standard_normal((2, 8, 64)), rng.standard_normal((2, 16, 64))
      >>> z, w = z0 + rng.standard_normal(z0.shape), w0 + 1e-3 * rng.standard_normal(w0.shape)
      >>> plain, held = plain_stack_norms(z0, z, w0, w)
      >>> held.tolist()
      [True, True]
      >>> scaled = stack_norms(z0, z, w0, w)
      >>> np.allclose(alignments_of_norms(plain, 64)[0], alignments_of_norms(scaled, 64)[0])
      True
    """
    finfo = _narrowest_finfo([xp.asarray(v).dtype for v in (z0, z, w0, w)], xp)
    packed = plain_stack_l2(z0, z, w0, w, xp, scratch, initial_norms)
    out, fan_in = xp.asarray(w0).shape[-2:]
    host = np.asarray(packed.cpu().to(xp.float64)) if _is_torch(xp) else np.asarray(packed, dtype=np.float64)
    return plain_norms_of_l2(host, fan_in=fan_in, out=out, finfo=finfo)


def _narrowest_finfo(dtypes: list[Any], xp: ModuleType) -> Any:
    """The ``finfo`` of the floating type with the narrowest :func:`plain_range` among
    ``dtypes`` (the stacks may mix types: each product is computed in one of them); refused by
    name for a type that is not floating."""
    finfos = []
    for dtype in dtypes:
        try:
            finfos.append(xp.finfo(dtype))
        except (TypeError, ValueError):
            raise MaxPError(
                f"plain measurement: the inputs and weights must be floating point, got dtype {dtype}"
            ) from None
    return max(finfos, key=plain_range)


def plain_stack_l2(
    z0: Any, z: Any, w0: Any, w: Any, xp: ModuleType = np, scratch: bool = False, initial_norms: Any = None
) -> Any:
    """What :func:`plain_stack_norms` reads of a stack of layers (arguments as
    :func:`measure_stacks`), packed as one ``(L, 7r + 3)`` array for one copy to the host:
    the L2 norms of each row of ``[z0; dz]``, of ``[z0; dz] @ dW.T`` and of ``dz @ W0.T``,
    of ``dW``; ``W0``'s :func:`weight_norms` (its power of two and the RMS after it); each
    row's peak ``|x|``. About a dozen operations per stack, in the stack's floating type.

    ``initial_norms``: :func:`weight_norms` of ``w0`` where known (initial weights do not
    change); ``scratch``: ``z`` and ``w`` are copies the differences may be written over.

    Examples:
      >>> z0, w0 = np.ones((1, 2, 4)), np.ones((1, 3, 4))
      >>> packed = plain_stack_l2(z0, 3 * z0, w0, 2 * w0)[0]   # dz = 2 and dW = 1 everywhere
      >>> np.round(packed[:4], 4).tolist(), np.round(packed[4:10], 4).tolist()   # rows, products
      ([2.0, 2.0, 4.0, 4.0], [6.9282, 6.9282, 13.8564, 13.8564, 13.8564, 13.8564])
      >>> np.round(packed[10:], 4).tolist()   # dW, W0's power of two and RMS after it, row peaks
      [3.4641, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    """
    z0, z, w0, w = _checked_stacks(z0, z, w0, w, xp)
    _narrowest_finfo([v.dtype for v in (z0, z, w0, w)], xp)  # refuses what is not floating
    rows = z0.shape[-2]
    # What leaves the range shows in the norms, which plain_norms_of_l2 reads: no numpy warning.
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        if initial_norms is None:
            initial_norms = weight_norms(w0, xp)
        dz, dw = _differences(z0, z, w0, w, scratch)
        stacked = xp.concatenate([z0, dz], axis=-2)
        both = stacked @ xp.swapaxes(dw, -1, -2)
        omega = stacked[..., rows:, :] @ xp.swapaxes(w0, -1, -2)
        lengths = [_l2(x, -1, xp) for x in (stacked, both, omega)] + [_l2(dw, (-2, -1), xp)[..., None]]
        peaks = _abs_peak(stacked, xp) if stacked.shape[-1] else xp.zeros_like(lengths[0])
        return xp.concatenate([*lengths, _as_dtype_of(initial_norms, peaks, xp), peaks], -1)


def plain_norms_of_l2(
    packed: np.ndarray, *, fan_in: int, out: int, finfo: Any
) -> tuple[RowNorms, np.ndarray]:
    """:func:`plain_stack_l2`'s array (on the host, of stacks of one shape) as the
    :class:`RowNorms` :func:`stack_norms` would give, and per layer whether they are those up
    to rounding: computed in the floating type ``finfo`` describes, nothing they were taken
    of came near its range's ends.

    They hold when every RMS (of a row of ``[z0; dz]``, of its products, of the weight
    change) lies within :func:`plain_range` of 1 in either direction, or is that of a
    product with a row that is exactly zero or with an initial weight that is (below the
    normal numbers, as :func:`weight_norms` reads it: a zero-initialized readout's omega).
    Anything not finite, a weight that did not change, a row whose entries underflow or a
    product with a tiny initial weight falls outside: such a layer is measured again with
    :func:`stack_norms`, which says what it means. The initial weight's power of two goes
    onto ``omega`` here, exactly, in float64.

    Examples:
      >>> packed = np.array([[2.0, 2.0, 4.0, 4.0, 8.0, 16.0, 0.5, 1.5, 1.0, 1.0]])   # one row
      >>> norms, held = plain_norms_of_l2(packed, fan_in=4, out=16, finfo=np.finfo(np.float32))
      >>> norms.rows.tolist(), norms.omega.tolist(), norms.rms_dw.tolist(), held.tolist()
      ([[1.0, 1.0]], [[1.0]], [2.0], [True])
      >>> plain_norms_of_l2(packed * 1e-30, fan_in=4, out=16, finfo=np.finfo(np.float32))[1].tolist()
      [False]
    """
    width = packed.shape[-1] if packed.ndim else 0
    if packed.ndim < 1 or width < 3 or (width - 3) % 7 or min(fan_in, out) < 0:
        raise MaxPError(
            f"plain_norms_of_l2: expected plain_stack_l2's (layers, 7r + 3) array and sizes >= 0, got "
            f"shape {tuple(packed.shape)}, fan_in={fan_in}, out={out}"
        )
    r = (width - 3) // 7
    counts = np.concatenate([np.full(2 * r, fan_in), np.full(3 * r, out), [out * fan_in]])
    rms = packed[..., : 5 * r + 1] / np.sqrt(np.maximum(counts, 1.0))
    factor, rms_w0, peaks = packed[..., 5 * r + 1], packed[..., 5 * r + 2], packed[..., 5 * r + 3 :]
    rows, both, omega = rms[..., : 2 * r], rms[..., 2 * r : 4 * r], rms[..., 4 * r : 5 * r]
    rms_dw = rms[..., 5 * r]
    low = plain_range(finfo)
    zero = peaks == 0

    def held(values: Any, zero_factor: Any) -> Any:
        return ((values >= low) & (values <= 1.0 / low)) | (zero_factor & (values == 0))

    holds = (  # a NaN compares False: not held
        np.all(held(rows, zero) & held(both, zero), axis=-1)
        & np.all(held(omega, zero[..., r:] | (factor == 0)[..., None]), axis=-1)
        & held(rms_dw, False)
        & np.isfinite(rms_w0)
    )
    norms = RowNorms(rows, both, omega * factor[..., None], rms_dw, rms_w0)
    return norms, holds


def plain_range(finfo: Any) -> float:
    """The smallest plain RMS trusted for a floating type's ``finfo`` (``tiny`` and ``eps``),
    ``sqrt(tiny / eps)``; its inverse is the largest.

    Above it a sum of squares loses less than an ``eps`` to underflow, below its inverse no
    product of two such values (nor a sum of squares of up to ``1/eps`` entries) overflows.
    :func:`plain_norms_of_l2` checks the RMS of every array it computed (rows, products, weight
    change) against it, so what a product's terms lost or gained on the way shows in its own.

    Examples:
      >>> plain_range(np.finfo(np.float32)) == 2.0**-51.5
      True
    """
    try:
        tiny, eps = float(finfo.tiny), float(finfo.eps)
    except (AttributeError, TypeError, ValueError):
        raise MaxPError(
            f"plain_range: expected a floating type's finfo (np.finfo, torch.finfo, jnp.finfo), got {finfo!r}"
        ) from None
    return math.sqrt(tiny / eps)


def plain_suits(finfo: Any) -> bool:
    """Whether :func:`plain_stack_norms` pays off for a floating type: where the range it
    trusts is narrow (float16: RMS values within a factor of 4 of 1), ordinary values fall
    outside it and nearly every stack would be measured twice.

    Examples:
      >>> plain_suits(np.finfo(np.float32)), plain_suits(np.finfo(np.float16))
      (True, False)
    """
    return plain_range(finfo) <= 2.0**-40


def alignments_of_norms(norms: RowNorms, fan_in: Any, xp: ModuleType = np) -> tuple[Alignment, Any]:
    """The alignments of a stack of layers from their :class:`RowNorms`, and whether each
    layer's weight change is finite.

    ``fan_in`` is the width that scales: one number, or with numpy one per layer. A layer whose
    ``fan_in`` is below 2 has no width to scale with: its alignments are missing. Alpha, u
    and omega are reduced in one pass over the three terms' rows.

    Examples:
      >>> norms = RowNorms(rows=np.ones((2, 4)), both=np.full((2, 4), 8.0), omega=np.ones((2, 2)),
      ...                  rms_dw=np.ones(2), rms_w0=np.ones(2))
      >>> al, finite = alignments_of_norms(norms, np.array([64, 1]))
      >>> al.alpha.tolist(), al.omega.tolist(), finite.tolist()   # log 8 / log 64; rms 1: no growth
      ([0.5, nan], [0.0, nan], [True, True])
    """
    r = norms.omega.shape[-1]
    lead = tuple(norms.rms_dw.shape)
    rms_x = xp.concatenate([norms.rows, norms.rows[..., r:]], -1).reshape(*lead, 3, r)
    rms_y = xp.stack([norms.rms_dw, norms.rms_dw, norms.rms_w0], -1)
    rms_p = xp.concatenate([norms.both, norms.omega], -1).reshape(*lead, 3, r)
    finite = xp.isfinite(norms.rms_dw)
    if not isinstance(fan_in, list | tuple | np.ndarray):
        fan_in = validate.integer(fan_in, "alignments_of_norms: fan_in", 0)
        if fan_in < 2:
            nan = xp.full(lead, math.nan)
            return Alignment(nan, nan, nan), finite
        values = _log_rms_of_norms(rms_x, rms_y, rms_p, math.log(fan_in), xp)
    else:
        widths = _fan_ins(fan_in, lead)
        log_n = np.log(np.maximum(widths, 2.0))[..., None, None]
        values = _log_rms_of_norms(rms_x, rms_y, rms_p, log_n, xp)
        values = xp.where((widths >= 2)[..., None], values, math.nan)
    return Alignment(alpha=values[..., 0], omega=values[..., 2], u=values[..., 1]), finite


def _fan_ins(fan_in: Any, lead: tuple[int, ...]) -> np.ndarray:
    """One fan_in per layer, as floats; refused by name unless integers >= 0 of shape ``lead``."""
    widths = np.asarray(fan_in)
    if widths.shape != lead or widths.dtype.kind not in "iu" or (widths < 0).any():
        raise MaxPError(
            f"alignments_of_norms: fan_in must be one integer >= 0 or one per layer, shape {lead}; "
            f"got {widths.dtype} of shape {widths.shape}"
        )
    return widths.astype(np.float64)


def _reduced(products: _Products, xp: ModuleType) -> RowNorms:
    """The row RMS of :func:`_products`."""
    rows, both, omega, rms_dw, rms_w0 = products
    return RowNorms(_row_rms(rows, xp), _row_rms(both, xp), _row_rms(omega, xp), rms_dw, rms_w0)


def _products(
    z0: Any,
    z: Any,
    w0: Any,
    w: Any,
    xp: ModuleType,
    scratch: bool = False,
    initial_norms: Any = None,
    fan_in_first: bool = False,
) -> _Products:
    """What the row RMS of a layer or a stack of them are taken of: each factor scaled to unit peak
    first (:func:`_unit_scale`); with ``scratch`` the inputs are overwritten.
    ``initial_norms`` is :func:`weight_norms` of ``w0``, when known; ``fan_in_first``: the
    weights are ``(fan_in, out)`` (not with ``scratch``).
    """
    rows = z0.shape[-2]
    dz, dw = _differences(z0, z, w0, w, scratch)
    # Every row, of z0 and of dz, scaled to unit peak at once.
    stacked = _unit_scale(xp.concatenate([z0, dz], axis=-2), xp, -1, in_place=_is_writable(xp))
    dz = stacked[..., rows:, :]
    if scratch:  # scaling the caller's copies in place allocates nothing
        dw = _unit_scale(dw, xp, (-2, -1), True)
        both = stacked @ xp.swapaxes(dw, -1, -2)
        if initial_norms is None:
            w0 = _unit_scale(w0, xp, (-2, -1), True)
            omega, rms_w0 = dz @ xp.swapaxes(w0, -1, -2), _rms(w0, xp)
        else:
            omega = (dz * initial_norms[..., 0, None, None]) @ xp.swapaxes(w0, -1, -2)
            rms_w0 = initial_norms[..., 1]
        return _Products(stacked, both, omega, _rms(dw, xp), rms_w0)
    # Otherwise each matrix's power of two goes onto the rows it multiplies, which are few:
    # (s x) @ y.T = x @ (s y).T exactly, and no scaled copy of a weight is made; the RMS
    # takes the scaled weight inside its reduction, which a compiler fuses into one pass.
    if math.prod(dw.shape) == 0:
        f_dw = xp.ones_like(_rms(dw, xp))[..., None, None]
    else:
        f_dw = _scale_factor(dw, xp, (-2, -1))
    if initial_norms is None:
        initial_norms = weight_norms(w0, xp)
    f_w0, rms_w0 = initial_norms[..., 0, None, None], initial_norms[..., 1]
    if not fan_in_first:
        dw, w0 = xp.swapaxes(dw, -1, -2), xp.swapaxes(w0, -1, -2)
    # One product of the stacked rows with dW serves alpha and u.
    both = (stacked * f_dw) @ dw
    omega = (dz * f_w0) @ w0
    return _Products(stacked, both, omega, _rms(dw * f_dw, xp), rms_w0)


def _differences(z0: Any, z: Any, w0: Any, w: Any, scratch: bool) -> tuple[Any, Any]:
    """``(z - z0, w - w0)``; with ``scratch`` written over ``z`` and ``w``."""
    if not scratch:
        return z - z0, w - w0
    z -= z0
    w -= w0
    return z, w


def _is_writable(xp: ModuleType) -> bool:
    """Whether arrays of ``xp`` can be scaled in place (numpy and torch; not JAX's)."""
    return xp is np or _is_torch(xp)


def _layer_rows(
    index: int, layer: Any, xp: ModuleType, fan_in_first: bool = False
) -> tuple[Any, Any, Any, Any]:
    """``(z0, z, w0, w)`` of one layer as rows, with shapes that fit together (weights
    ``(out, fan_in)``, or ``(fan_in, out)`` with ``fan_in_first``)."""
    if not isinstance(layer, tuple | list) or len(layer) != 4:
        raise MaxPError(
            f"alignment: layer {index} must be a (z0, z, w0, w) tuple, got {type(layer).__name__}"
        )
    z0, z, w0, w = (
        _rows(v, xp, what)
        for v, what in zip(layer, ("initial input", "input", "initial weight", "weight"), strict=True)
    )
    contracted = w.shape[0] if fan_in_first else w.shape[-1]
    if tuple(z0.shape) != tuple(z.shape) or tuple(w0.shape) != tuple(w.shape) or z.shape[-1] != contracted:
        layout = "(fan_in, out)" if fan_in_first else "(out, fan_in)"
        raise MaxPError(
            f"alignment: layer {index} has inputs {tuple(z0.shape)} then {tuple(z.shape)} and weights "
            f"{tuple(w0.shape)} then {tuple(w.shape)}; the initial and current inputs must match, "
            f"as must the weights, and the inputs' last axis must be the weights' fan_in {layout}"
        )
    return z0, z, w0, w


def groups_of_equal_shape(layers: Iterable[int], shape_of: Callable[[int], Hashable]) -> list[list[int]]:
    """Split ``layers`` into groups :func:`alignment_of_layers` can measure together.

    ``shape_of(k)`` returns what must match within a group (shapes, width, dtype, device).
    Groups keep the order in which their first layer appears, layers their given order.

    Examples:
      >>> groups_of_equal_shape([0, 1, 2, 3], lambda k: "readout" if k == 2 else "hidden")
      [[0, 1, 3], [2]]
    """
    groups: dict[Hashable, list[int]] = {}
    for k in layers:
        groups.setdefault(shape_of(k), []).append(k)
    return list(groups.values())


def sanitize(values: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Replace non-finite entries of ``values`` by ``fallback`` (same shape)."""
    return fill_missing(values, fallback)[0]


def fill_missing(values: np.ndarray, previous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Missing (non-finite) measurements take their previous value; also return where.

    Examples:
      >>> filled, missing = fill_missing(np.array([0.7, np.nan]), np.array([1.0, 0.5]))
      >>> filled.tolist(), missing.tolist()
      ([0.7, 0.5], [False, True])
    """
    values = np.asarray(values, dtype=np.float64)
    missing = ~np.isfinite(values)
    return np.where(missing, np.asarray(previous, dtype=np.float64), values), missing


def why_missing(alpha_missing: bool, omega_missing: bool, u_missing: bool) -> str:
    """Which factor of a layer's measurement carried no information, in words.

    Examples:
      >>> why_missing(False, True, False)
      'its input has not changed from its initial value (dz = 0)'
    """
    if alpha_missing and omega_missing:
        return (
            "neither its input nor its weight has changed since initialisation, or no sample row is "
            "usable (inputs empty, all zero or not finite, or fan_in < 2)"
        )
    if alpha_missing:
        return (
            "its weight has not moved from its initial value (dW = 0) or is not finite, "
            "or its initial input is zero"
        )
    if omega_missing:
        return "its input has not changed from its initial value (dz = 0)"
    return "the product of its input change and weight change carries no information"
