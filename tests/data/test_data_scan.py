"""ScanData construction and validation errors (exact messages)."""

import numpy as np
import pytest

from ptychodus_ptychopinn_torch.data.scan import ScanData, amplitudes_from_counts


def make(m=6, n=8, shape=(40, 40), **overrides):
    rng = np.random.default_rng(0)
    kwargs = dict(
        amplitudes=rng.random((m, n, n)).astype(np.float32),
        probe=np.ones((n, n), complex),
        positions_px=np.column_stack([np.linspace(10, 30, m), np.linspace(12, 28, m)]),
        object_shape=shape,
        object_guess=None,
        bad_pixels=None,
    )
    kwargs.update(overrides)
    return ScanData(**kwargs)


def test_dtypes_and_properties():
    scan = make(amplitudes=np.full((6, 8, 8), 2.0), object_guess=np.ones((40, 40)))
    assert scan.amplitudes.dtype == np.float32 and scan.probe.dtype == np.complex64
    assert scan.positions_px.dtype == np.float64 and scan.object_guess.dtype == np.complex64
    assert (scan.N, scan.num_positions, scan.object_shape) == (8, 6, (40, 40))
    assert scan.mean_counts == pytest.approx(4.0 * 64)


def test_bad_pixels_are_zeroed_on_a_copy():
    amp = np.ones((6, 8, 8), np.float32)
    bad = np.zeros((8, 8), bool)
    bad[2, 3] = True
    scan = make(amplitudes=amp, bad_pixels=bad)
    assert scan.amplitudes[:, 2, 3].max() == 0 and amp[0, 2, 3] == 1
    assert scan.mean_counts == pytest.approx(63.0)


def test_empty_scan():
    with pytest.raises(ValueError, match="scan is empty"):
        make(amplitudes=np.zeros((0, 8, 8)), positions_px=np.zeros((0, 2)))


def test_non_square_patterns():
    with pytest.raises(ValueError, match=r"must be square \(M, N, N\); got 8x6"):
        make(amplitudes=np.ones((6, 8, 6)))


def test_wrong_ndim_patterns():
    with pytest.raises(ValueError, match=r"3-D array \(M, N, N\)"):
        make(amplitudes=np.ones((8, 8)))


def test_nan_and_negative_amplitudes():
    amp = np.ones((6, 8, 8))
    amp[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        make(amplitudes=amp)
    amp[1, 1, 1] = -1
    with pytest.raises(ValueError, match="negative"):
        make(amplitudes=amp)


def test_count_conversion_errors():
    counts = np.ones((2, 4, 4))
    counts[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        amplitudes_from_counts(counts)
    counts[0, 0, 0] = -3
    with pytest.raises(ValueError, match="negative counts"):
        amplitudes_from_counts(counts)
    bad = np.zeros((4, 4), bool)
    bad[0, 0] = True  # a bad pixel may hold anything
    assert amplitudes_from_counts(counts, bad)[0, 0, 0] == 0


def test_count_conversion_uint32_precision():
    counts = np.array([[[4_000_000_000, 9], [0, 1]]], dtype=np.uint32)
    amp = amplitudes_from_counts(counts)
    assert amp.dtype == np.float32
    np.testing.assert_allclose(amp[0], np.sqrt(counts[0].astype(np.float64)), rtol=1e-7)


def test_position_count_mismatch():
    with pytest.raises(ValueError, match="6 diffraction patterns but 5 positions"):
        make(positions_px=np.full((5, 2), 20.0))


def test_positions_outside_canvas():
    pos = np.full((6, 2), 20.0)
    pos[3] = (39.5, 10.0)
    with pytest.raises(ValueError, match=r"1 scan positions lie outside .* index 3 .*0 <= x <= 39"):
        make(positions_px=pos)
    pos[3] = (10.0, -0.1)
    with pytest.raises(ValueError, match="outside the object canvas"):
        make(positions_px=pos)


def test_missing_or_wrong_probe():
    with pytest.raises(ValueError, match="probe is missing"):
        make(probe=None)
    with pytest.raises(ValueError, match=r"probe shape \(16, 16\) does not match .* \(8, 8\)"):
        make(probe=np.ones((16, 16), complex))
    with pytest.raises(ValueError, match=r"probe shape \(1, 8, 8\)"):
        make(probe=np.ones((1, 8, 8), complex))
    with pytest.raises(ValueError, match="all zeros"):
        make(probe=np.zeros((8, 8), complex))


def test_object_guess_and_bad_pixel_shapes():
    with pytest.raises(ValueError, match=r"object_guess shape \(30, 40\) does not match"):
        make(object_guess=np.ones((30, 40)))
    with pytest.raises(ValueError, match=r"bad_pixels shape \(4, 4\)"):
        make(bad_pixels=np.zeros((4, 4), bool))


def test_validate_against_configuration():
    scan = make(m=6, n=8)
    scan.validate(N=8, gridsize=2, neighbor_count=4)
    with pytest.raises(ValueError, match=r"8x8 but the model is configured for N=64"):
        scan.validate(N=64)
    with pytest.raises(ValueError, match=r"6 positions but gridsize=3 needs at least gridsize\*\*2=9"):
        scan.validate(gridsize=3, neighbor_count=9)
    with pytest.raises(ValueError, match=r"neighbor_count=6 needs more than 6"):
        scan.validate(gridsize=2, neighbor_count=6)
    with pytest.raises(ValueError, match=r"neighbor_count=3 is smaller than gridsize\*\*2=4"):
        scan.validate(gridsize=2, neighbor_count=3)
