"""simulate_scan: deterministic, calibrated counts, patches inside the canvas."""

import numpy as np
import pytest

from ptychodus_ptychopinn_torch.simulate import simulate_scan


def test_noise_free_counts_are_calibrated(clean_scan):
    counts = clean_scan.reconstruct_input.diffraction_patterns.sum(axis=(1, 2))
    assert counts.mean() == pytest.approx(1e5, rel=1e-9)


def test_noisy_counts_are_poisson_around_target(small_scan):
    patterns = small_scan.reconstruct_input.diffraction_patterns
    assert np.all(patterns == np.round(patterns))
    assert patterns.sum(axis=(1, 2)).mean() == pytest.approx(1e5, rel=0.01)


def test_deterministic_for_seed():
    a = simulate_scan(num_positions=9, N=32, seed=5)
    b = simulate_scan(num_positions=9, N=32, seed=5)
    c = simulate_scan(num_positions=9, N=32, seed=6)
    pa, pb = a.reconstruct_input.diffraction_patterns, b.reconstruct_input.diffraction_patterns
    assert np.array_equal(pa, pb)
    assert not np.array_equal(pa, c.reconstruct_input.diffraction_patterns)


def test_object_ranges_and_patches_inside(clean_scan):
    product = clean_scan.product
    obj = product.object_.get_layer(0)
    assert np.abs(obj).min() >= 0.5 - 1e-9 and np.abs(obj).max() <= 1 + 1e-9
    assert np.abs(np.angle(obj)).max() <= np.pi / 2 + 1e-9
    geometry = product.object_.get_geometry()
    x = geometry.map_probe_positions_to_object_x_px(product.probe_positions)
    y = geometry.map_probe_positions_to_object_y_px(product.probe_positions)
    r = (64 - 1) / 2
    assert np.floor(x - r).min() >= 0 and np.floor(x - r).max() + 64 <= geometry.width_px
    assert np.floor(y - r).min() >= 0 and np.floor(y - r).max() + 64 <= geometry.height_px


def test_variants_and_bad_arguments():
    flat = simulate_scan(num_positions=4, N=32, obj="flat", probe="disk", noise=False)
    assert np.allclose(flat.product.object_.get_layer(0), 1.0)
    with pytest.raises(ValueError, match="probe must be"):
        simulate_scan(num_positions=4, N=32, probe="gaussian")
    with pytest.raises(ValueError, match="obj must be"):
        simulate_scan(num_positions=4, N=32, obj="photo")
    with pytest.raises(ValueError, match="overlap"):
        simulate_scan(num_positions=4, N=32, overlap=1.0)
