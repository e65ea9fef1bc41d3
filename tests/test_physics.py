"""Exact tests pinning each physics convention (single bright pixels, known values)."""

import math

import numpy as np
import pytest
import torch

from ptychodus_ptychopinn_torch import physics
from ptychodus_ptychopinn_torch.config import ModelConfig
from ptychodus_ptychopinn_torch.model.pinn import PhysicsConstants, PtychoPINN


def bright(shape, row, col, dtype=torch.float32):
    img = torch.zeros(shape, dtype=dtype)
    img[..., row, col] = 1
    return img


def where(img):
    return tuple(int(i) for i in torch.nonzero(img.abs() > 0.5)[0][-2:])


# --- translate: content moves by +offset, offsets are [dx (columns), dy (rows)] ---------------

def test_translate_integer_moves_content_by_plus_offset():
    img = bright((1, 9, 9), 4, 4)
    out = physics.translate(img, torch.tensor([[2.0, -3.0]]))
    assert where(out[0]) == (1, 6)  # row 4-3, column 4+2
    assert torch.equal(out.sum(), torch.tensor(1.0))


def test_translate_half_pixel_is_bilinear_split():
    img = bright((1, 8, 8), 3, 3)
    out = physics.translate(img, torch.tensor([[0.5, 0.0]]))
    assert torch.allclose(out[0, 3, 3:5], torch.tensor([0.5, 0.5]))
    assert torch.allclose(out.sum(), torch.tensor(1.0))


def test_translate_complex_and_zero_fill():
    img = bright((1, 6, 6), 0, 0, torch.complex64) * (1 + 2j)
    out = physics.translate(img, torch.tensor([[-1.0, 0.0]]))
    assert out.abs().sum() == 0  # moved out of the image, zero fill
    out = physics.translate(img, torch.tensor([[1.0, 1.0]]))
    assert out[0, 1, 1] == (1 + 2j)


def test_translate_rejects_mismatched_offsets():
    with pytest.raises(ValueError, match="offsets must have shape"):
        physics.translate(torch.zeros(2, 4, 4), torch.zeros(3, 2))


# --- Fourier shift ---------------------------------------------------------------------------

def test_fourier_shift_integer_is_exact_and_subpixel_is_invertible():
    img = bright((1, 16, 16), 5, 7, torch.complex64)
    out = physics.fourier_shift(img, torch.tensor([[3.0, 2.0]]))
    assert where(out[0]) == (7, 10)
    assert torch.allclose(out[0, 7, 10], torch.tensor(1 + 0j), atol=1e-6)
    smooth = torch.exp(-((torch.arange(16.0) - 8) ** 2) / 8).view(1, 16) * torch.ones(16, 1)
    there = physics.fourier_shift(smooth[None].to(torch.complex64), torch.tensor([[0.3, -0.7]]))
    back = physics.fourier_shift(there, torch.tensor([[-0.3, 0.7]]))
    assert torch.allclose(back.real, smooth[None], atol=1e-5)


# --- merge / extract (gridsize > 1) ------------------------------------------------------------

def test_merge_places_patch_c_at_centre_plus_offset_and_extract_inverts():
    n, m = 8, 16
    rel_positions = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    coords_relative = -(rel_positions - rel_positions.mean(0))[None]  # PtychoPINN sign: -(r - mean)
    patches = torch.zeros(1, 4, n, n, dtype=torch.complex64)
    patches[0, 0, 4, 4] = 1.0  # a bright pixel at the centre of channel 0 only
    support = torch.ones(n, n)
    region = physics.merge_patches(patches, coords_relative, m, support)
    # centre pixel 4 of an 8-patch padded into 16 sits at 8; channel 0 moves by r_0 - mean = (+3, 0)
    peak = int(torch.argmax(region[0].abs()))
    assert divmod(peak, m) == (8, 11)
    extracted = physics.extract_patches(region, coords_relative, n)
    assert int(torch.argmax(extracted[0, 0].abs())) == 4 * n + 4  # back at channel 0's centre
    # channel 2 sits at (0, +2) from the mean: the pixel appears 3 columns right, 2 rows up
    assert int(torch.argmax(extracted[0, 2].abs())) == 2 * n + 7


def test_merge_extract_roundtrip_reproduces_consistent_patches():
    n, m = 8, 16
    torch.manual_seed(0)
    region_true = torch.randn(1, m, m, dtype=torch.complex64)
    rel = torch.tensor([[[2.0, 1.0], [-2.0, -1.0], [1.0, -2.0], [-1.0, 2.0]]])
    coords_relative = -(rel - rel.mean(1, keepdim=True))
    patches = physics.extract_patches(region_true, coords_relative, n)
    region = physics.merge_patches(patches, coords_relative, m, torch.ones(n, n))
    again = physics.extract_patches(region, coords_relative, n)
    assert torch.allclose(again, patches, atol=1e-5)


def test_merge_leaves_uncovered_pixels_at_zero():
    n, m = 8, 12
    patches = torch.ones(1, 2, n, n, dtype=torch.complex64)
    support = physics.central_window(n)
    region = physics.merge_patches(patches, torch.zeros(1, 2, 2), m, support)
    assert region[0, 0, 0] == 0  # outside every support: zero, not amplified
    assert torch.allclose(region[0, 6, 6], torch.tensor(1 + 0j))  # averaged, not summed


# --- diffraction: fftshift(fft2) with orthonormal scaling --------------------------------------

def test_diffract_zero_frequency_is_at_n_over_2_with_ortho_scaling():
    n = 16
    psi = torch.ones(1, n, n, dtype=torch.complex64)
    amp = physics.diffract(psi)
    assert where(amp[0] / n) == (n // 2, n // 2)
    assert torch.allclose(amp[0, n // 2, n // 2], torch.tensor(float(n)))  # sum / N = N^2 / N
    assert torch.allclose(amp.sum(), torch.tensor(float(n)), atol=1e-4)


def test_diffract_delta_is_flat_and_conserves_energy():
    n = 16
    psi = bright((1, n, n), 0, 0, torch.complex64)
    amp = physics.diffract(psi)
    assert torch.allclose(amp, torch.full_like(amp, 1.0 / n))
    field = torch.randn(3, n, n, dtype=torch.complex64)
    assert torch.allclose((physics.diffract(field) ** 2).sum(), (field.abs() ** 2).sum(), rtol=1e-5)


def test_diffract_stays_fp32_under_bf16_autocast():
    psi = torch.randn(2, 8, 8, dtype=torch.complex64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = physics.diffract(psi)
    assert amp.dtype == torch.float32
    assert torch.allclose(amp, physics.diffract(psi))


# --- losses in photon counts ------------------------------------------------------------------

def test_poisson_nll_units_are_counts():
    pred = torch.tensor([2.0, 3.0])  # count amplitudes -> lambda = 4, 9
    obs = torch.tensor([1.0, 3.0])  # k = 1, 9
    expected = ((4 - 1 * math.log(4) + math.lgamma(2)) + (9 - 9 * math.log(9) + math.lgamma(10))) / 2
    assert math.isclose(float(physics.poisson_nll(pred, obs, eps=0.0)), expected, rel_tol=1e-6)
    # a scale s maps normalised amplitudes to counts: s*pred, s*obs
    assert math.isclose(float(physics.poisson_nll(pred / 2, obs / 2, 2.0, eps=0.0)), expected, rel_tol=1e-6)


def test_poisson_nll_is_a_true_nll_of_integer_counts():
    lam = torch.tensor([0.5, 3.0, 40.0])
    k = torch.tensor([0.0, 2.0, 37.0])
    expected = -torch.distributions.Poisson(lam).log_prob(k).mean()
    assert torch.allclose(physics.poisson_nll(lam.sqrt(), k.sqrt(), eps=0.0), expected, rtol=1e-5)
    assert float(physics.poisson_nll(k.sqrt() + 0.01, k.sqrt())) >= 0.0


def test_poisson_nll_is_minimal_where_prediction_matches_counts():
    obs = torch.tensor([0.0, 1.0, 5.0, 20.0])
    pred = obs.clone().requires_grad_(True)
    physics.poisson_nll(pred, obs, eps=0.0 + 1e-12).backward()
    assert torch.allclose(pred.grad[1:], torch.zeros(3), atol=1e-5)


def test_poisson_nll_and_mae_respect_bad_pixel_mask():
    pred = torch.tensor([[1.0, 100.0]])
    obs = torch.tensor([[1.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0]])
    assert math.isclose(float(physics.amplitude_mae(pred, obs, mask=mask)), 0.0)
    assert math.isclose(float(physics.poisson_nll(pred, obs, mask=mask, eps=0.0)), 1.0)  # 1 - 0 + log 1!
    assert math.isclose(float(physics.amplitude_mae(pred, obs, 3.0)), 150.0)


# --- probe normalisation, applied exactly once ------------------------------------------------

def test_normalize_probe_divides_by_probe_scale_times_mean_disk_amplitude():
    n = 16
    probe = 3.0 * physics.hard_disk(n).to(torch.complex64)
    normalized, factor = physics.normalize_probe(probe, 4.0)
    disk_fraction = float(physics.hard_disk(n).mean())
    assert math.isclose(factor, 4.0 * 3.0 * disk_fraction, rel_tol=1e-6)
    assert math.isclose(float(torch.mean(torch.abs(physics.hard_disk(n) * normalized))), 0.25, rel_tol=1e-6)


def test_hard_disk_is_centred_between_the_central_pixels():
    disk = physics.hard_disk(8)
    assert torch.equal(disk, disk.flip(0)) and torch.equal(disk, disk.flip(1))
    assert disk.sum() == 12  # radius 2 around (3.5, 3.5)


def test_model_applies_probe_normalisation_once():
    config = ModelConfig(N=64, n_filters_scale=1)
    probe = torch.ones(64, 64, dtype=torch.complex64) * 2.0
    _, factor = physics.normalize_probe(probe, config.probe_scale)
    constants = PhysicsConstants(N=64, kappa=1.0, nphotons=1e4, intensity_scale=1.0 / 32 * 100,
                                 probe_factor=factor, amp_max=2.0, canvas_size=64)
    model = PtychoPINN(config, constants, probe)
    assert torch.allclose(model.normalized_probe, probe / factor)
    obj = torch.ones(1, 1, 64, 64, dtype=torch.complex64)
    psi = model.illuminate(obj, torch.zeros(1, 1, 2))
    assert torch.allclose(psi[0, 0], probe / factor)  # no second division anywhere


def test_canvas_size_is_even_padding():
    assert physics.canvas_size(64, 0) == 64
    assert physics.canvas_size(64, 3.2) == 72
    assert (physics.canvas_size(64, 5.0) - 64) % 2 == 0
