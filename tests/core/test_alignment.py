"""Alignment: hand-derived cases and a loop-by-loop restatement of DESIGN section 4."""

import math
from typing import Any

import numpy as np
import pytest

from maxp_core import (
    Alignment,
    MaxPError,
    alignment,
    alignment_of_layers,
    alignment_of_stacks,
    layer_alignment,
    log_rms_alignment,
    spectral_alignment,
)
from maxp_core.alignment import (
    alignments_of_norms,
    measure_layers,
    measure_stacks,
    plain_norms_of_l2,
    plain_stack_l2,
    plain_stack_norms,
    sanitize,
    stack_norms,
    weight_norms,
)

RNG = np.random.default_rng(1234)


def rms_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    """DESIGN section 4 written row by row in plain Python."""
    rms_y = math.sqrt(sum(v * v for v in y.ravel()) / y.size)
    values = []
    for row in x:
        product = [sum(row[j] * yr[j] for j in range(len(row))) for yr in y]
        rms_p = math.sqrt(sum(p * p for p in product) / len(product))
        rms_x = math.sqrt(sum(v * v for v in row) / len(row))
        values.append((math.log(rms_p) - math.log(rms_x * rms_y)) / math.log(x.shape[1]))
    return min(max(sum(values) / len(values), 0.0), 1.0)


def test_rms_matches_the_definition() -> None:
    x = RNG.standard_normal((5, 24))
    y = RNG.standard_normal((7, 24)) + 0.3 * x[0]
    assert log_rms_alignment(x, y) == pytest.approx(rms_by_loops(x, y), abs=1e-12)


def test_fully_aligned_is_one_and_random_is_a_half() -> None:
    v = RNG.standard_normal(2048)
    y = np.outer(RNG.standard_normal(32), v)  # rank one along v
    assert log_rms_alignment(np.stack([v, 3 * v]), y) == pytest.approx(1.0, abs=1e-9)
    random_value = log_rms_alignment(RNG.standard_normal((16, 2048)), RNG.standard_normal((32, 2048)))
    assert random_value == pytest.approx(0.5, abs=0.02)


def test_no_change_is_missing_not_zero() -> None:
    z0, w0 = RNG.standard_normal((4, 16)), RNG.standard_normal((8, 16))
    assert all(math.isnan(v) for v in layer_alignment(z0, z0, w0, w0))
    assert math.isnan(spectral_alignment(np.zeros((3, 16)), w0))


def test_orthogonal_inputs_cancel_to_zero() -> None:
    y = np.zeros((4, 8))
    y[:, :4] = RNG.standard_normal((4, 4))
    x = np.zeros((2, 8))
    x[:, 4:] = 1.0  # outside y's row space: the product is exactly 0, which is information
    assert log_rms_alignment(x, y) == 0.0
    assert spectral_alignment(x, y) == 0.0


def test_non_finite_rows_are_left_out() -> None:
    x = RNG.standard_normal((3, 64))
    y = RNG.standard_normal((8, 64))
    clean = log_rms_alignment(x[1:], y)
    dirty = x.copy()
    dirty[0, 5] = np.nan
    assert log_rms_alignment(dirty, y) == pytest.approx(clean)
    dirty[0, 5] = np.inf
    assert log_rms_alignment(dirty, y) == pytest.approx(clean)
    assert math.isnan(log_rms_alignment(np.full((2, 64), np.nan), y))
    y_bad = y.copy()
    y_bad[0, 0] = np.inf
    for mode in ("rms", "spectral"):
        assert math.isnan(alignment(x, y_bad, mode))


def test_fan_in_below_two_is_missing() -> None:
    assert math.isnan(log_rms_alignment(np.ones((3, 1)), np.ones((4, 1))))
    assert math.isnan(log_rms_alignment(np.ones((3, 8)), np.ones((4, 8)), fan_in=1))


def test_values_stay_in_unit_interval() -> None:
    for _ in range(20):
        n = int(RNG.integers(2, 40))
        x, y = RNG.standard_normal((3, n)) * 1e3, RNG.standard_normal((5, n)) * 1e-3
        for mode in ("rms", "spectral"):
            assert 0.0 <= alignment(x, y, mode) <= 1.0


def test_spectral_is_one_along_the_top_singular_vector() -> None:
    y = RNG.standard_normal((10, 30))
    top = np.linalg.svd(y)[2][0]
    assert spectral_alignment(top[None, :], y) == pytest.approx(1.0)
    x = RNG.standard_normal((4, 30))
    expected = np.mean(np.linalg.norm(x @ y.T, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, 2)))
    assert spectral_alignment(x, y) == pytest.approx(expected)


def test_layer_alignment_uses_the_right_pairs() -> None:
    z0, w0 = RNG.standard_normal((6, 32)), RNG.standard_normal((16, 32))
    dz, dw = RNG.standard_normal((6, 32)), np.outer(RNG.standard_normal(16), z0[0])
    got = layer_alignment(z0, z0 + dz, w0, w0 + dw)
    assert got.alpha == pytest.approx(log_rms_alignment(z0, dw))
    assert got.omega == pytest.approx(log_rms_alignment(dz, w0))
    assert got.u == pytest.approx(log_rms_alignment(dz, dw))


def test_stacked_layers_match_the_loops_layer_by_layer() -> None:
    # Three layers in one stack; the middle one has not moved its weight (alpha, u missing there),
    # which must not leak into its neighbours' averages.
    z0, w0 = RNG.standard_normal((3, 5, 24)), RNG.standard_normal((3, 7, 24))
    dz, dw = RNG.standard_normal((3, 5, 24)), RNG.standard_normal((3, 7, 24))
    dw[0] = np.outer(RNG.standard_normal(7), z0[0, 0])  # strongly aligned with a z0 row
    dw[1] = 0.0
    layers = [(z0[i], z0[i] + dz[i], w0[i], w0[i] + dw[i]) for i in range(3)]
    got = alignment_of_layers(layers)
    for i in range(3):
        moved = bool(np.any(dw[i]))
        assert got.alpha[i] == pytest.approx(rms_by_loops(z0[i], dw[i]) if moved else math.nan, nan_ok=True)
        assert got.omega[i] == pytest.approx(rms_by_loops(dz[i], w0[i]))
        assert got.u[i] == pytest.approx(rms_by_loops(dz[i], dw[i]) if moved else math.nan, nan_ok=True)
    spectral = alignment_of_layers(layers, "spectral")
    assert spectral.omega[2] == pytest.approx(spectral_alignment(dz[2], w0[2]))


@pytest.mark.parametrize("scratch", [False, True])
@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_stacks_match_the_loops_layer_by_layer(framework: str, scratch: bool) -> None:
    # One batched product for the whole stack; a layer whose weight has not moved is missing
    # in alpha and u, a layer at 1e30 and one at 1e-30 give the values of their unit-scale twins.
    z0, w0 = RNG.standard_normal((4, 5, 24)), RNG.standard_normal((4, 7, 24))
    dz, dw = RNG.standard_normal((4, 5, 24)), RNG.standard_normal((4, 7, 24))
    dw[0] = np.outer(RNG.standard_normal(7), z0[0, 0])
    dw[1] = 0.0
    scale = np.array([1.0, 1.0, 1e30, 1e-30])[:, None, None]
    z0, z, w0, w = z0, z0 + dz, w0 * scale, (w0 + dw) * scale
    if framework == "torch":
        torch = pytest.importorskip("torch")
        stacks = [torch.from_numpy(v.copy()) for v in (z0, z, w0, w)]
        got = alignment_of_stacks(*stacks, xp=torch, scratch=scratch)
        got = Alignment(*(v.numpy() for v in got))
    else:
        stacks = [v.copy() for v in (z0, z, w0, w)]
        got = alignment_of_stacks(*stacks, scratch=scratch)
    # With scratch the stacks are overwritten (dW, scaled), else left as they were.
    assert np.array_equal(np.asarray(stacks[3]), w) is not scratch
    for i in range(4):
        moved = bool(np.any(dw[i]))
        unscaled_w0 = w0[i] / scale[i]
        assert got.alpha[i] == pytest.approx(rms_by_loops(z0[i], dw[i]) if moved else math.nan, nan_ok=True)
        assert got.omega[i] == pytest.approx(rms_by_loops(dz[i], unscaled_w0))
        assert got.u[i] == pytest.approx(rms_by_loops(dz[i], dw[i]) if moved else math.nan, nan_ok=True)


def test_stacks_of_mismatched_shapes_and_narrow_layers() -> None:
    z, w = np.ones((2, 3, 8)), np.ones((2, 4, 8))
    with pytest.raises(MaxPError, match=r"inputs \(2, 3, 8\) then \(2, 3, 8\) and weights \(2, 4, 8\) then"):
        alignment_of_stacks(z, z, w, w[:, :3])
    with pytest.raises(MaxPError, match="the input has 8 features but the matrix contracts 6"):
        alignment_of_stacks(z, z, w[..., :6], w[..., :6])
    narrow = alignment_of_stacks(
        np.ones((2, 3, 1)), 2 * np.ones((2, 3, 1)), np.ones((2, 4, 1)), np.ones((2, 4, 1))
    )
    assert np.isnan(np.array(narrow)).all()  # fan_in 1: no width to scale with, missing


def test_layers_of_different_shapes_are_refused_by_index() -> None:
    small = (np.ones((4, 8)), np.ones((4, 8)), np.eye(6, 8), np.eye(6, 8))
    wide = (np.ones((4, 8)), np.ones((4, 8)), np.eye(5, 8), np.eye(5, 8))
    with pytest.raises(MaxPError, match=r"layer 1 has inputs \(4, 8\) and weight \(5, 8\)"):
        alignment_of_layers([small, wide])


def test_unknown_mode() -> None:
    with pytest.raises(MaxPError, match="unknown alignment mode 'l1'"):
        alignment(np.ones((2, 4)), np.ones((2, 4)), "l1")  # type: ignore[arg-type]


def test_sanitize() -> None:
    out = sanitize(np.array([0.7, np.nan, np.inf]), np.array([1.0, 0.5, 0.25]))
    np.testing.assert_array_equal(out, [0.7, 0.5, 0.25])


def array_module(framework: str) -> Any:
    """numpy, torch or jax.numpy (skipped when the framework is not installed)."""
    return (
        np if framework == "numpy" else pytest.importorskip({"torch": "torch", "jax": "jax.numpy"}[framework])
    )


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
def test_a_near_zero_initial_weight_or_input_is_missing(framework: str) -> None:
    """Below its dtype's smallest normal number a float32 value has lost its precision: the
    alignment that depends on it is missing (NaN) in every implementation; a tiny normal one
    is measured as usual (the alignment does not depend on scale)."""
    rng = np.random.default_rng(0)
    z0 = rng.standard_normal((8, 64)).astype(np.float32)
    dz = 0.1 * rng.standard_normal((8, 64)).astype(np.float32)
    w0 = rng.standard_normal((32, 64)).astype(np.float32)
    dw = 0.01 * rng.standard_normal((32, 64)).astype(np.float32)
    xp = array_module(framework)
    wrap = (lambda a: a) if framework == "numpy" else xp.asarray

    def measure(z_scale: float, w_scale: float) -> np.ndarray:
        args = (z0 * z_scale, z0 * z_scale + dz, w0 * w_scale, w0 * w_scale + dw)
        return np.array([float(v) for v in layer_alignment(*(wrap(a) for a in args), xp=xp)])

    reference = measure(1.0, 1.0)
    np.testing.assert_allclose(measure(1e-30, 1e-30), reference, atol=1e-5)
    subnormal = np.float32(1e-39)
    assert np.isnan(measure(1.0, subnormal)[1]) and np.isfinite(measure(1.0, subnormal)[[0, 2]]).all()
    assert np.isnan(measure(subnormal, 1.0)[0]) and np.isfinite(measure(subnormal, 1.0)[[1, 2]]).all()


@pytest.mark.parametrize("scale", [1e17, 1e-30])
@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
def test_perfectly_aligned_float32_layers_measure_one_at_extreme_scales(framework: str, scale: float) -> None:
    """Rows and matrices are scaled by powers of two before the products: float32 values near
    its overflow or underflow still measure full alignment, in every implementation."""
    rng = np.random.default_rng(0)
    v = rng.standard_normal(256)
    xp = array_module(framework)
    z0 = xp.asarray((np.stack([v, -3 * v]) * scale).astype(np.float32))
    w0 = xp.asarray((np.outer(rng.standard_normal(16), v) * scale).astype(np.float32))
    measured = alignment_of_layers([(z0, 3 * z0, w0, 4 * w0)], xp=xp)
    assert [float(a[0]) for a in measured] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)


def _float32_layers(scale: float, count: int = 2) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(5)
    layers = []
    for _ in range(count):
        z0, w0 = rng.standard_normal((6, 48)), rng.standard_normal((20, 48))
        dz, dw = 0.3 * rng.standard_normal((6, 48)), 0.1 * rng.standard_normal((20, 48)) + 0.05
        layers.append(tuple((v * scale).astype(np.float32) for v in (z0, z0 + dz, w0, w0 + dw)))
    return layers


@pytest.mark.parametrize("scale", [1.0, 1e17, 1e-30])
@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
def test_initial_norms_and_fan_in_first_weights_measure_what_alignment_of_layers_does(
    framework: str, scale: float
) -> None:
    """The two shortcuts of measure_layers, initial weights' norms computed once and weights
    given (fan_in, out), change no number, near float32's overflow and underflow too."""
    xp = array_module(framework)
    layers = _float32_layers(scale)
    reference = np.array(
        alignment_of_layers([tuple(xp.asarray(v) for v in layer) for layer in layers], xp=xp)
    )
    norms = [weight_norms(xp.asarray(w0), xp) for _, _, w0, _ in layers]
    transposed = [tuple(xp.asarray(v) for v in (z0, z, w0.T, w.T)) for z0, z, w0, w in layers]
    for given, fan_in_first in (
        ([tuple(xp.asarray(v) for v in layer) for layer in layers], False),
        (transposed, True),
    ):
        for initial_norms in (None, norms):
            al, finite = measure_layers(given, xp=xp, initial_norms=initial_norms, fan_in_first=fan_in_first)
            np.testing.assert_allclose(np.array(al), reference, atol=2e-6)
            assert np.asarray(finite).tolist() == [True, True]
    assert np.isfinite(reference).all() and (reference > 0.05).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
def test_a_non_finite_weight_is_flagged_by_the_measurement_itself(framework: str, bad: float) -> None:
    xp = array_module(framework)
    layers = _float32_layers(1.0, count=3)
    z0, z, w0, w = layers[1]
    w = w.copy()
    w[7, 11] = bad
    layers[1] = (z0, z, w0, w)
    _, finite = measure_layers([tuple(xp.asarray(v) for v in layer) for layer in layers], xp=xp)
    assert np.asarray(finite).tolist() == [True, False, True]


def test_weight_norms_are_a_power_of_two_and_the_rms_after_it() -> None:
    w = np.array([[3.0, -5.0], [0.5, 1.0]])  # peak 5: scaled by 1/4 into [1, 2)
    np.testing.assert_array_equal(weight_norms(w), [0.25, 0.25 * math.sqrt((9 + 25 + 0.25 + 1) / 4)])
    stack = weight_norms(np.stack([w, 2.0**-1000 * w, np.zeros((2, 2))]))
    assert stack.shape == (3, 2)
    np.testing.assert_array_equal(stack[1], [0.25 * 2.0**1000, stack[0][1]])  # exact at any magnitude
    np.testing.assert_array_equal(stack[2], [0.0, 0.0])  # no information: the RMS is 0


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
def test_empty_layers_are_missing_and_finite_and_subnormal_peaks_raise_no_warning(framework: str) -> None:
    """A layer with no input features carries no information (missing), its weight is not
    flagged as non-finite, and no backend warns on the way; nor on float64 inputs whose rows'
    peaks are subnormal (their power of two would overflow if it were taken)."""
    import warnings

    xp = array_module(framework)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = [
            xp.asarray(np.ones(shape, dtype=np.float32))
            for shape in ((2, 3, 0), (2, 3, 0), (2, 4, 0), (2, 4, 0))
        ]
        al, finite = measure_stacks(*empty, xp=xp)
        assert np.isnan(np.array([np.asarray(v) for v in al])).all()
        assert np.asarray(finite).tolist() == [True, True]
        if framework == "numpy":  # float64: the subnormal range lies below 2**-1022
            rng = np.random.default_rng(0)
            z0 = rng.standard_normal((8, 64))
            tiny_dz = 1e-310 * rng.standard_normal((8, 64))
            w0, dw = rng.standard_normal((16, 64)), 0.1 * rng.standard_normal((16, 64))
            omega = measure_layers([(z0, z0 + tiny_dz, w0, w0 + dw)])[0].omega
            assert np.isnan(omega).all()  # dz below the smallest normal number: no information


def test_alignments_of_norms_refuses_a_fan_in_that_is_no_width() -> None:
    norms = stack_norms(*(np.ones(shape) for shape in ((2, 3, 4), (2, 3, 4), (2, 5, 4), (2, 5, 4))))
    for bad in (2.5, "64", True, -1):
        with pytest.raises(MaxPError, match="alignments_of_norms: fan_in must be an integer >= 0"):
            alignments_of_norms(norms, bad)
    for bad_widths in (np.array([64]), np.array([64.0, 64.0]), np.array([64, -1])):
        with pytest.raises(MaxPError, match=r"one per layer, shape \(2,\)"):
            alignments_of_norms(norms, bad_widths)
    # Per layer, each with its own width: the same as one width for all.
    same = alignments_of_norms(norms, 4)[0]
    np.testing.assert_array_equal(np.array(alignments_of_norms(norms, np.array([4, 4]))[0]), np.array(same))


def plain_case(scales: list[tuple[float, float]], seed: int = 0) -> tuple[np.ndarray, ...]:
    """Float32 stacks ``(z0, z, w0, w)`` of one layer per ``(input scale, weight-change scale)``."""
    rng = np.random.default_rng(seed)
    layers = len(scales)
    z0 = rng.standard_normal((layers, 8, 64))
    w0 = rng.standard_normal((layers, 16, 64)) / 8
    dz = rng.standard_normal(z0.shape) * np.array([s for s, _ in scales])[:, None, None]
    dw = rng.standard_normal(w0.shape) * np.array([s for _, s in scales])[:, None, None]
    return tuple(v.astype(np.float32) for v in (z0, z0 + dz, w0, w0 + dw))


def test_plain_norms_that_hold_give_the_scaled_alignments() -> None:
    """Across ordinary magnitudes the float32 norms without powers of two hold, and give what the
    scaled float64 reference gives; so do the exact zeros of a layer whose input did not change
    (its omega and u missing) and of a zero-initialized weight (its omega missing)."""
    scales = [(1.0, 1e-3), (1e-3, 1e-6), (1e3, 1e2), (0.0, 1e-2), (1e-2, 1e-4), (1.0, 1e-2)]
    z0, z, w0, w = plain_case(scales)
    w[5] -= w0[5]
    w0[5] = 0.0
    plain, held = plain_stack_norms(z0, z, w0, w)
    assert held.all()
    reference = stack_norms(*(v.astype(np.float64) for v in (z0, z, w0, w)))
    got, expected = alignments_of_norms(plain, 64)[0], alignments_of_norms(reference, 64)[0]
    np.testing.assert_allclose(np.array(got), np.array(expected), rtol=0, atol=2e-5)
    assert np.isnan(got.omega[3]) and np.isnan(got.u[3])
    assert np.isnan(got.omega[5]) and np.isfinite(got.alpha[5]) and np.isfinite(got.u[5])


def test_plain_norms_do_not_hold_where_the_range_ends_and_the_scaled_ones_still_measure() -> None:
    """Each way a float32 computation without powers of two goes wrong marks its own layer only:
    a weight change whose squares underflow (the plain RMS reads 0: alpha and u would be
    missing, the scaled one measures them), products that overflow, a weight that did not
    change, a NaN, an input row of subnormal numbers."""
    z0, z, w0, w = plain_case([(1.0, 1e-3), (1.0, 1e-3), (1e20, 1e20), (1.0, 0.0), (1.0, 1e-3), (1.0, 1e-3)])
    w0[1] *= np.float32(1e-24)  # a weight of 1e-25 that changes by as much
    change = np.random.default_rng(1).standard_normal(w0[1].shape).astype(np.float32)
    w[1] = w0[1] + np.float32(1e-25) * change
    z[4, 2, 7] = np.nan
    z0[5, 1], z[5, 1] = 0.0, np.float32(1e-40)  # a change of subnormal numbers: no precision left
    plain, held = plain_stack_norms(z0, z, w0, w)
    assert held.tolist() == [True, False, False, False, False, False]
    scaled = alignments_of_norms(stack_norms(z0, z, w0, w), 64)[0]
    unscaled = alignments_of_norms(plain, 64)[0]
    assert np.isnan(unscaled.u[1]) and 0.3 < scaled.u[1] < 0.7  # what holding guards against
    assert np.isfinite(scaled.alpha[2])


def test_a_product_with_a_tiny_initial_weight_that_underflows_does_not_hold() -> None:
    """An initial weight of normal numbers near 1e-36 times an input change of 1e-12 gives a
    product of exact zeros in float32 (each term underflows), where the scaled measurement
    (both factors at unit peak) still reads omega: the zero must not count as a zero weight's."""
    z0, z, w0, w = plain_case([(1.0, 1e-3), (1.0, 1e-3)])
    z0[0] *= np.float32(1e-12)  # inputs and their change near 1e-12
    change = np.random.default_rng(2).standard_normal(z0[0].shape).astype(np.float32)
    z[0] = z0[0] + np.float32(1e-12) * change
    w0[0] *= np.float32(1e-35)
    w[0] = w0[0] + np.float32(1e-3) * np.sign(w0[0])
    packed = plain_stack_l2(z0, z, w0, w)
    norms, held = plain_norms_of_l2(packed.astype(np.float64), fan_in=64, out=16, finfo=np.finfo(np.float32))
    assert (norms.omega[0] == 0).all() and held.tolist() == [False, True]
    scaled = alignments_of_norms(stack_norms(z0, z, w0, w), 64)[0]
    assert 0.3 < scaled.omega[0] < 0.7  # random directions: what the plain zero would have hidden


def test_plain_norms_of_mixed_types_are_checked_in_the_narrowest_range() -> None:
    """float64 inputs with float32 weights whose change squares to below float32's normal
    numbers: checked against float64's range the plain norms would hold and alpha and u be off;
    against float32's (the narrowest of the four types) they do not hold."""
    rng = np.random.default_rng(0)
    z0 = rng.standard_normal((1, 4, 64))
    z = z0 + rng.standard_normal(z0.shape)
    w0 = np.float32(1e-22) * rng.standard_normal((1, 16, 64)).astype(np.float32)
    w = w0 + np.float32(3e-23) * rng.standard_normal(w0.shape).astype(np.float32)
    assert plain_stack_norms(z0, z, w0, w)[1].tolist() == [False]
    with pytest.raises(MaxPError, match="must be floating point, got dtype int64"):
        plain_stack_norms(z0, z, w0.astype(np.int64), w)
    torch = pytest.importorskip("torch")
    ones = torch.ones((1, 2, 4), dtype=torch.int64)
    with pytest.raises(MaxPError, match=r"must be floating point, got dtype torch\.int64"):
        plain_stack_l2(ones, ones, ones, ones, torch)
    with pytest.raises(MaxPError, match=r"7r \+ 3\) array and sizes >= 0, got shape \(1, 9\)"):
        plain_norms_of_l2(np.ones((1, 9)), fan_in=4, out=4, finfo=np.finfo(np.float32))


def test_plain_norms_of_layers_without_features_do_not_hold_and_complex_stacks_are_refused() -> None:
    packed = plain_stack_l2(*(np.zeros(shape) for shape in ((2, 3, 0), (2, 3, 0), (2, 4, 0), (2, 4, 0))))
    assert packed.shape == (2, 7 * 3 + 3)
    assert not plain_norms_of_l2(packed, fan_in=0, out=4, finfo=np.finfo(np.float64))[1].any()
    z0 = np.ones((1, 2, 3), dtype=np.complex64)
    with pytest.raises(MaxPError, match="the initial input must hold real numbers, got dtype complex64"):
        measure_stacks(z0, z0.real, np.ones((1, 4, 3)), np.ones((1, 4, 3)))
    with pytest.raises(MaxPError, match="plain_range: expected a floating type's finfo"):
        plain_norms_of_l2(packed, fan_in=0, out=4, finfo=np.float32)
