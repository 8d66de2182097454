"""The published per-layer alignment functions against an independent computation from the definition."""

import math

import numpy as np
import pytest

from maxp_core.compat.alignment import (
    FULL_ALIGNMENT,
    as_float64,
    compute_alignment,
    compute_alignments_for_pms,
)
from maxp_core.errors import MaxPError

RNG = np.random.default_rng(2024)


def rms_reference(x: np.ndarray, y: np.ndarray, fan_in: int) -> float:
    """log(row-RMS of x @ y.T / (row-RMS of x * RMS of y)) / log(fan_in), averaged over rows."""
    rows = x.reshape(-1, x.shape[-1])
    product = rows @ y.T
    row_rms = np.sqrt(np.mean(product**2, axis=1))
    input_rms = np.sqrt(np.mean(rows**2, axis=1))
    matrix_rms = np.sqrt(np.mean(y**2))
    return float(np.mean(np.log(row_rms / (input_rms * matrix_rms)) / np.log(fan_in)))


def spectral_reference(x: np.ndarray, y: np.ndarray) -> float:
    """|x @ y.T|_2 / (|x|_2 * largest singular value of y), averaged over rows."""
    rows = x.reshape(-1, x.shape[-1])
    ratios = np.linalg.norm(rows @ y.T, axis=1) / (np.linalg.norm(rows, axis=1) * np.linalg.norm(y, 2))
    return float(np.mean(ratios))


def random_layer(rows: tuple[int, ...] = (6,), fan_in: int = 64, out: int = 32) -> tuple[np.ndarray, ...]:
    z0 = RNG.standard_normal((*rows, fan_in))
    w0 = RNG.standard_normal((out, fan_in)) / math.sqrt(fan_in)
    z = z0 + 0.3 * RNG.standard_normal(z0.shape)
    w = (
        w0
        + 0.1 * RNG.standard_normal(w0.shape)
        + 0.2 * np.outer(RNG.standard_normal(out), z0.reshape(-1, fan_in)[0])
    )
    return z0, w0, z, w


@pytest.mark.parametrize("rows", [(6,), (3, 4)])
def test_rms_terms_match_the_definition(rows: tuple[int, ...]) -> None:
    z0, w0, z, w = random_layer(rows)
    alpha, omega, u = compute_alignment(z0, w0, z, w, fan_in=64)
    assert alpha == pytest.approx(rms_reference(z0, w - w0, 64), abs=1e-10)
    assert omega == pytest.approx(rms_reference(z - z0, w0, 64), abs=1e-10)
    assert u == pytest.approx(rms_reference(z - z0, w - w0, 64), abs=1e-10)
    assert all(0.0 < v < 1.0 for v in (alpha, omega, u))


def test_spectral_terms_match_the_definition() -> None:
    z0, w0, z, w = random_layer((3, 4))
    alpha, omega, u = compute_alignment(z0, w0, z, w, fan_in=64, norm_mode=" Spectral ")
    assert alpha == pytest.approx(spectral_reference(z0, w - w0), abs=1e-10)
    assert omega == pytest.approx(spectral_reference(z - z0, w0), abs=1e-10)
    assert u == pytest.approx(spectral_reference(z - z0, w - w0), abs=1e-10)


def test_fully_aligned_rank_one_is_one_and_random_is_a_half() -> None:
    n = 4096
    direction = RNG.standard_normal(n)
    z0 = np.stack([direction, -3.0 * direction])
    w0 = RNG.standard_normal((16, n))
    aligned_dw = np.outer(RNG.standard_normal(16), direction)
    assert compute_alignment(z0, w0, z0, w0 + aligned_dw, n)[0] == pytest.approx(1.0, abs=1e-9)
    random_dw = RNG.standard_normal((16, n))
    random_z0 = RNG.standard_normal((8, n))
    assert compute_alignment(random_z0, w0, random_z0, w0 + random_dw, n)[0] == pytest.approx(0.5, abs=0.05)


def test_a_term_without_information_is_missing_not_zero() -> None:
    z0, w0, z, w = random_layer()
    alpha, omega, u = compute_alignment(z0, w0, z, w0, fan_in=64)  # dW = 0
    assert math.isnan(alpha) and math.isnan(u) and 0.0 < omega < 1.0
    alpha, omega, u = compute_alignment(z0, w0, z0, w, fan_in=64)  # dz = 0
    assert 0.0 < alpha < 1.0 and math.isnan(omega) and math.isnan(u)
    assert all(math.isnan(v) for v in compute_alignment(z0, w0, z0, w0, fan_in=64))


def test_a_tiny_update_is_measured_like_a_large_one() -> None:
    z0, w0, _, w = random_layer()
    large = compute_alignment(z0, w0, z0, w, fan_in=64)[0]
    tiny = compute_alignment(z0, w0 * 1e-20, z0, w0 * 1e-20 + (w - w0) * 1e-20, fan_in=64)[0]
    assert tiny == pytest.approx(large, abs=1e-12)


def test_fan_in_below_two_has_no_width_to_scale_with() -> None:
    z0, w0, z, w = random_layer()
    assert all(math.isnan(v) for v in compute_alignment(z0, w0, z, w, fan_in=1))
    assert not any(math.isnan(v) for v in compute_alignment(z0, w0, z, w, fan_in=1, norm_mode="spectral"))


@pytest.mark.parametrize("norm_mode", ["l1", "", None])
def test_unknown_norm_mode_names_the_valid_ones(norm_mode: object) -> None:
    z0, w0, z, w = random_layer()
    with pytest.raises(MaxPError, match=r"norm_mode must be one of \['rms', 'spectral'\]") as caught:
        compute_alignment(z0, w0, z, w, 64, norm_mode)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("fan_in", [0, 2.0, True, "64"])
def test_fan_in_must_be_a_positive_integer(fan_in: object) -> None:
    z0, w0, z, w = random_layer()
    with pytest.raises(MaxPError, match="compute_alignment: fan_in must be an integer >= 1"):
        compute_alignment(z0, w0, z, w, fan_in)  # type: ignore[arg-type]


def test_shapes_that_do_not_fit_are_refused() -> None:
    z0, w0, z, w = random_layer()
    with pytest.raises(MaxPError, match="initial and current inputs must match"):
        compute_alignment(z0, w0, z[:3], w, 64)
    with pytest.raises(MaxPError, match="fan_in"):
        compute_alignment(z0, w0[:, :10], z, w[:, :10], 64)


def test_array_likes_and_duck_typed_tensors_are_read_as_float64() -> None:
    z0, w0, z, w = random_layer()

    class FakeTensor:
        """Has what a framework tensor has: detach() and cpu(), then numpy conversion."""

        def __init__(self, array: np.ndarray) -> None:
            self.array = array.astype(np.float32)
            self.calls: list[str] = []

        def detach(self) -> "FakeTensor":
            self.calls.append("detach")
            return self

        def cpu(self) -> "FakeTensor":
            self.calls.append("cpu")
            return self

        def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
            return self.array

    fake = FakeTensor(z0)
    expected = compute_alignment(z0.astype(np.float32), w0.tolist(), z, w, 64)
    assert compute_alignment(fake, w0.tolist(), z, w, 64) == expected
    assert fake.calls == ["detach", "cpu"]
    assert as_float64([[1, 2]]).dtype == np.float64
    with pytest.raises(MaxPError, match="the input must hold real numbers, got dtype complex128"):
        as_float64(np.ones(3, dtype=complex))
    with pytest.raises(MaxPError, match="must hold real numbers, got dtype object"):
        compute_alignment(z0, w0, z, {"not": "an array"}, 64)


def test_alignments_for_a_list_of_layers() -> None:
    layers = [random_layer(), random_layer(fan_in=32)]
    snapshots = [((z0, w0), (z, w)) for z0, w0, z, w in layers]
    alpha, omega, u = compute_alignments_for_pms([snapshots[0], None, snapshots[1]], [64, 64, 32])
    one = compute_alignment(*layers[0], fan_in=64)
    other = compute_alignment(*layers[1], fan_in=32)
    assert (alpha, omega, u) == (
        [one[0], FULL_ALIGNMENT.alpha, other[0]],
        [one[1], FULL_ALIGNMENT.omega, other[1]],
        [one[2], FULL_ALIGNMENT.u, other[2]],
    )
    assert FULL_ALIGNMENT == (1.0, 0.5, 1.0)
    assert all(type(v) is float for column in (alpha, omega, u) for v in column)


def test_alignments_for_a_list_name_the_entry_that_is_wrong() -> None:
    z0, w0, z, w = random_layer()
    with pytest.raises(MaxPError, match="2 snapshots but 1 fan_ins"):
        compute_alignments_for_pms([None, None], [64])
    with pytest.raises(MaxPError, match=r"snapshot 1 must be \(\(z0, w0\), \(z, w\)\) or None, got tuple"):
        compute_alignments_for_pms([None, (z0, w0, z, w)], [64, 64])
    with pytest.raises(MaxPError, match=r"snapshot 0: .*inputs must match"):
        compute_alignments_for_pms([((z0, w0), (z[:2], w))], [64])
    with pytest.raises(MaxPError, match="norm_mode"):
        compute_alignments_for_pms([None], [64], norm_mode="frobenius")
