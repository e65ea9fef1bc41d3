"""Stitching: exact placement conventions and detail preservation with true patches."""

import numpy as np
import pytest
import torch

from ptychodus_ptychopinn_torch.data.dataset import extract_patches, extract_windows
from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
from ptychodus_ptychopinn_torch.evaluation import evaluate_object
from ptychodus_ptychopinn_torch.inference import PatchStitcher, stitch_patches
from ptychodus_ptychopinn_torch.physics import probe_weight
from ptychodus_ptychopinn_torch.simulate import simulate_scan


def test_bright_pixel_lands_at_its_object_pixel():
    n = 8
    patch = torch.zeros(1, n, n, dtype=torch.complex64)
    patch[0, 4, 4] = 1.0  # patch centre is (N-1)/2 = 3.5, so pixel 4 sits half a pixel right/down
    stitcher = PatchStitcher((20, 30), torch.ones(n, n), device=torch.device("cpu"))
    stitcher.add(patch, torch.tensor([[20.5, 10.5]], dtype=torch.float64))
    canvas = stitcher.numerator.view(20, 30)
    assert torch.nonzero(canvas.abs() > 0.5).tolist() == [[11, 21]]  # row y+0.5, column x+0.5
    assert torch.allclose(canvas[11, 21], torch.tensor(1 + 0j))


def test_subpixel_position_is_a_fourier_shift_of_the_patch():
    n = 16
    yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(n, dtype=torch.float64), indexing="ij")
    blob = torch.exp(-((xx - 7.5) ** 2 + (yy - 7.5) ** 2) / 6.0).to(torch.complex64)[None]
    stitcher = PatchStitcher((40, 40), torch.ones(n, n), device=torch.device("cpu"))
    stitcher.add(blob, torch.tensor([[20.25, 19.5]], dtype=torch.float64))
    canvas = stitcher.numerator.view(40, 40).real.double()
    cy = (canvas.sum(1) * torch.arange(40)).sum() / canvas.sum()
    cx = (canvas.sum(0) * torch.arange(40)).sum() / canvas.sum()
    assert abs(float(cx) - 20.25) < 1e-3 and abs(float(cy) - 19.5) < 1e-3


def test_weight_is_transformed_once_and_shifted_per_patch_as_before():
    """The probe weight's FFT is taken once; each patch applies only its phase ramp, giving
    exactly what shifting the weight itself (the former per-batch transform) gave."""
    from ptychodus_ptychopinn_torch import physics

    n = 16
    generator = torch.Generator().manual_seed(0)
    weight = torch.rand(n, n, generator=generator)
    patches = torch.randn(5, n, n, dtype=torch.complex64, generator=generator)
    positions = torch.rand(5, 2, generator=generator, dtype=torch.float64) * 20 + 10
    stitcher = PatchStitcher((48, 48), weight, device=torch.device("cpu"))
    calls = []
    original_fft2 = torch.fft.fft2

    def counting_fft2(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return original_fft2(x, *args, **kwargs)

    torch.fft.fft2 = counting_fft2
    try:
        stitcher.add(patches, positions)
    finally:
        torch.fft.fft2 = original_fft2
    assert calls == [(5, n, n)]  # the patches only; the weight was transformed in __init__

    half = (n - 1) / 2.0
    lower = torch.floor(positions - half)
    frac = (positions - half - lower).to(torch.float32)
    weights = physics.fourier_shift(weight.expand(5, -1, -1), frac)
    expected = PatchStitcher((48, 48), weight, device=torch.device("cpu"))
    rows = lower[:, 1].long().view(-1, 1, 1) + torch.arange(n).view(1, n, 1)
    cols = lower[:, 0].long().view(-1, 1, 1) + torch.arange(n).view(1, 1, n)
    flat = (rows * 48 + cols).reshape(-1)
    expected.numerator.index_add_(0, flat, (physics.fourier_shift(patches, frac) * weights).reshape(-1))
    expected.denominator.index_add_(0, flat, weights.reshape(-1))
    assert torch.equal(stitcher.numerator, expected.numerator)
    assert torch.equal(stitcher.denominator, expected.denominator)


def test_patches_outside_the_canvas_are_clipped():
    n = 8
    stitcher = PatchStitcher((10, 10), torch.ones(n, n), device=torch.device("cpu"))
    stitcher.add(torch.ones(1, n, n, dtype=torch.complex64), torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    obj = stitcher.result()
    assert obj.shape == (10, 10)
    assert torch.allclose(obj[:5, :5], torch.ones(5, 5, dtype=torch.complex64))
    assert obj[9, 9] == 0


@pytest.fixture(scope="module")
def clean_sim():
    return simulate_scan(num_positions=100, N=64, noise=False, seed=2)


def test_true_patches_reproduce_the_object_with_detail(clean_sim):
    """Exact truth patches through the stitcher must keep detail (SSIM >= 0.95)."""
    scan = scan_from_reconstruct_input(clean_sim.reconstruct_input)
    truth = clean_sim.product.object_.get_layer(0)
    patches = extract_patches(truth, scan.positions_px, scan.N)
    intensity = np.abs(scan.probe) ** 2
    stitcher = PatchStitcher(scan.object_shape, torch.as_tensor(intensity / intensity.max()), device=torch.device("cpu"))
    stitcher.add(torch.as_tensor(patches), torch.as_tensor(scan.positions_px))
    obj = stitcher.result().numpy()
    metrics = evaluate_object(obj, clean_sim.product)
    assert metrics["amplitude_ssim"] >= 0.95, metrics
    assert metrics["phase_ssim"] >= 0.95, metrics
    # and pixel for pixel where the probe illuminated well
    coverage = stitcher.coverage().numpy()
    well = coverage > 0.1 * coverage.max()
    assert np.median(np.abs(obj[well] - truth[well])) < 0.01


def test_stitch_patches_matches_the_stitcher(clean_sim):
    scan = scan_from_reconstruct_input(clean_sim.reconstruct_input)
    patches = torch.as_tensor(extract_patches(clean_sim.product.object_.get_layer(0), scan.positions_px, scan.N))
    positions = torch.as_tensor(scan.positions_px)
    whole = stitch_patches([(patches, positions)], scan.object_shape, torch.as_tensor(scan.probe))
    halves = stitch_patches([(patches[:50], positions[:50]), (patches[50:], positions[50:])],
                            scan.object_shape, torch.as_tensor(scan.probe))
    assert torch.allclose(whole, halves, atol=1e-5)


def test_stitch_weight_is_a_power_of_the_relative_probe_amplitude():
    """Two patches over one pixel: the stitched value is their average weighted by
    (|P| / max |P|) ** e at the pixel each patch sees it with; e = 2 is the probe intensity."""
    n = 4
    probe = torch.zeros(n, n, dtype=torch.complex64)
    probe[1, 1], probe[1, 2] = 2.0, 1.0j  # |P| = 2 (the maximum) and 1
    assert torch.equal(probe_weight(probe), torch.abs(probe) ** 2 / 4)
    assert torch.allclose(probe_weight(probe, 3.0)[1, 2], torch.tensor(0.125))
    assert torch.equal(probe_weight(probe, 0.0), torch.ones(n, n))
    # patch A sees canvas pixel (1, 2) through probe pixel (1, 2), patch B (one column to the
    # right) through probe pixel (1, 1)
    patches = torch.stack([torch.full((n, n), 1.0 + 0j), torch.full((n, n), 5.0 + 0j)]).to(torch.complex64)
    positions = torch.tensor([[1.5, 1.5], [2.5, 1.5]])  # centres (x, y): corners at (0, 0), (0, 1)
    for e, w_a in ((2.0, 0.25), (3.0, 0.125), (0.0, 1.0)):
        obj = stitch_patches([(patches, positions)], (n, n + 1), probe, weight_exponent=e)
        expected = (w_a * 1.0 + 1.0 * 5.0) / (w_a + 1.0)
        assert abs(complex(obj[1, 2]) - expected) < 1e-5, (e, complex(obj[1, 2]))


def test_integer_windows_are_exact_slices_and_stitch_back_exactly():
    """Supervised labels: a bright pixel at object (x, y) = (21, 11) sits in the window of a
    position (20.3, 10.8) at (row, col) = (11 - floor(10.8 - 3.5), 21 - floor(20.3 - 3.5)), and
    integer windows stitched unshifted (``subpixel=False``) give the object back exactly at
    sub-pixel positions, where Fourier-shifted patches of a sharp object do not."""
    n = 8
    obj = np.zeros((24, 36), np.complex64)
    obj[11, 21] = 1.0
    window = extract_windows(obj, np.array([[20.3, 10.8]]), n)
    assert window.shape == (1, n, n) and window.dtype == np.complex64
    assert np.argwhere(np.abs(window[0]) > 0).tolist() == [[11 - 7, 21 - 16]]

    rng = np.random.default_rng(0)
    sharp = (0.5 + 0.5 * rng.random((40, 40)) * np.exp(1j * rng.random((40, 40)))).astype(np.complex64)
    positions = np.array([[x, y] for x in np.arange(12.0, 28.0, 2.3) for y in np.arange(12.0, 28.0, 2.7)])
    ones = torch.ones(n, n, dtype=torch.complex64)
    pos = torch.as_tensor(positions)
    exact = stitch_patches([(torch.as_tensor(extract_windows(sharp, positions, n)), pos)], sharp.shape, ones,
                           subpixel=False).numpy()
    shifted = stitch_patches([(torch.as_tensor(extract_patches(sharp, positions, n)), pos)], sharp.shape, ones).numpy()
    covered = exact != 0
    assert np.allclose(exact[covered], sharp[covered], atol=1e-6)
    assert np.abs(shifted[covered] - sharp[covered]).max() > 1e-2
