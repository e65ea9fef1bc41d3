"""evaluation.evaluate_object: ambiguity-free metrics over the scanned area, and the collapse
reference (a flat object must score clearly lower than a good reconstruction)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from ptychodus.api.fourier import fourier_shift_2d
from ptychodus.api.geometry import PixelGeometry
from ptychodus.api.object import Object, ObjectCenter
from ptychodus.api.probe import ProbeSequence
from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
from ptychodus.api.product import Product, ProductMetadata

from ptychodus_ptychopinn_torch.evaluation import evaluate_object, format_metrics, json_safe_metrics

PIXEL_M = 1e-8
H = 128
N = 32
STEP = 8


def _texture(rng: np.random.Generator, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal((H, H)), sigma)
    return (field - field.min()) / np.ptp(field)


@pytest.fixture(scope="module")
def product() -> Product:
    """Textured object (amplitude 0.5-1, phase +-0.6 rad) scanned on a jittered grid that leaves
    an unscanned border."""
    rng = np.random.default_rng(0)
    amplitude = 0.5 + 0.5 * _texture(rng, 1.5)
    phase = 1.2 * (_texture(rng, 2.5) - 0.5)
    obj = Object(amplitude * np.exp(1j * phase), PixelGeometry(PIXEL_M, PIXEL_M),
                 ObjectCenter(1e-6, -2e-6))
    y, x = np.mgrid[:N, :N] - (N - 1) / 2
    probe = np.exp(-(x**2 + y**2) / (2 * (N / 6) ** 2)).astype(np.complex128)
    count = (H - N - 24) // STEP + 1
    half = (count - 1) * STEP / 2
    points = []
    for j in range(count):
        for i in range(count):
            dx, dy = rng.uniform(-1, 1, size=2)
            points.append(ProbePosition(len(points), 1e-6 + (i * STEP - half + dx) * PIXEL_M,
                                        -2e-6 + (j * STEP - half + dy) * PIXEL_M))
    metadata = ProductMetadata(
        name="truth", comments="", detector_distance_m=1.0, photon_energy_eV=8000.0,
        probe_photon_count=1e5, exposure_time_s=1.0, mass_attenuation_m2_per_kg=0.0,
        tomography_angle_deg=0.0,
    )
    return Product(metadata, ProbePositionSequence(points),
                   ProbeSequence(probe, None, PixelGeometry(PIXEL_M, PIXEL_M)), obj, [])


@pytest.fixture(scope="module")
def truth(product: Product) -> np.ndarray:
    return product.object_.get_array()[0].copy()


def _noisy(truth: np.ndarray, level: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return truth + level * (rng.standard_normal(truth.shape) + 1j * rng.standard_normal(truth.shape))


def test_truth_against_itself_is_perfect(product, truth):
    m = evaluate_object(truth, product)
    assert m["amplitude_ssim"] == pytest.approx(1.0, abs=1e-3)
    assert m["phase_ssim"] == pytest.approx(1.0, abs=1e-3)
    assert m["frc_half_bit_px"] == pytest.approx(2.0, abs=0.1)
    assert m["frc_1_7_px"] == pytest.approx(2.0, abs=0.1)
    assert m["frc_auc"] == pytest.approx(1.0, abs=1e-3)
    assert m["amplitude_psnr"] > 40
    assert m["registration_converged"] == 1.0
    assert all(isinstance(v, float) for v in m.values())


def test_ambiguities_are_removed(product, truth):
    """Global scale, phase offset, linear phase ramp and a sub-pixel shift cost nothing."""
    x = np.arange(H)[None, :]
    y = np.arange(H)[:, None]
    moved = 2.5 * truth * np.exp(1j * (2.0 + 0.03 * x - 0.02 * y))
    moved = fourier_shift_2d(moved, dx=0.4, dy=-0.3)
    m = evaluate_object(moved, product)
    assert m["amplitude_ssim"] > 0.97
    assert m["phase_ssim"] > 0.97
    assert m["object_scale_factor"] == pytest.approx(2.5, rel=0.02)
    assert m["registration_converged"] == 1.0


def test_flat_object_scores_clearly_lower_than_a_good_one(product, truth):
    flat = np.full(truth.shape, 0.75 + 0j)
    m_flat = evaluate_object(flat, product)
    m_noisy = evaluate_object(_noisy(truth, 0.02), product)
    m_good = evaluate_object(truth, product)
    # the collapse reference is what a flat object actually scores
    assert m_flat["amplitude_ssim"] == pytest.approx(m_flat["flat_amplitude_ssim"], abs=0.02)
    assert m_flat["amplitude_ssim"] < 0.5
    assert m_flat["amplitude_std"] < 1e-6
    # ordering: flat < noisy truth < truth, with clear margins
    assert m_flat["amplitude_ssim"] + 0.2 < m_noisy["amplitude_ssim"] < m_good["amplitude_ssim"] - 0.05
    assert m_flat["phase_ssim"] + 0.2 < m_noisy["phase_ssim"] < m_good["phase_ssim"] - 0.05
    assert m_noisy["amplitude_psnr"] < m_good["amplitude_psnr"]
    # the collapse reference does not depend on the reconstruction
    assert m_noisy["flat_amplitude_ssim"] == pytest.approx(m_flat["flat_amplitude_ssim"])
    # FRC of a noisy reconstruction resolves less than Nyquist; a flat one resolves nothing:
    # "not reached" (NaN, flag 0), never the field width presented as a resolution
    assert 2.0 < m_noisy["frc_half_bit_px"] < 20.0
    assert m_noisy["frc_half_bit_reached"] == 1.0 and m_good["frc_1_7_reached"] == 1.0
    assert math.isnan(m_flat["frc_half_bit_px"]) and math.isnan(m_flat["frc_1_7_px"])
    assert m_flat["frc_half_bit_reached"] == 0.0 and m_flat["frc_1_7_reached"] == 0.0
    text = format_metrics(m_flat, describe=True)
    assert "frc_half_bit_px" in text and "not reached" in text and "n/a" not in text.split(
        "frc_half_bit_px")[1].splitlines()[0]
    assert "frc_half_bit_reached" not in text  # the flag is shown as the value's wording
    safe = json_safe_metrics(m_flat)
    assert safe["frc_1_7_px"] is None and safe["frc_1_7_reached"] == 0.0
    json.loads(json.dumps(safe, allow_nan=False))


def test_more_noise_scores_lower(product, truth):
    scores = [evaluate_object(_noisy(truth, level), product)["amplitude_ssim"]
              for level in (0.005, 0.02, 0.08)]
    assert scores[0] > scores[1] > scores[2]


def test_unscanned_border_is_not_scored(product, truth):
    m = evaluate_object(truth, product)
    assert m["scored_height_px"] < H - 24 and m["scored_width_px"] < H - 24
    garbage_border = truth.copy()
    edge = 10
    rng = np.random.default_rng(3)
    for sl in (np.s_[:edge, :], np.s_[-edge:, :], np.s_[:, :edge], np.s_[:, -edge:]):
        garbage_border[sl] = rng.uniform(0, 3, garbage_border[sl].shape) * np.exp(
            1j * rng.uniform(-np.pi, np.pi, garbage_border[sl].shape))
    m_border = evaluate_object(garbage_border, product)
    assert m_border["amplitude_ssim"] > 0.99
    assert m_border["phase_ssim"] > 0.99


def test_zero_canvas_outside_the_scan_does_not_derail_registration(product, truth):
    """A stitched reconstruction is zero where no patch landed; with a sub-pixel shift and a
    phase ramp it must still align (Ptychodus's registration alone fails on such zeros)."""
    geometry = product.object_.get_geometry()
    xs = geometry.map_probe_positions_to_object_x_px(product.probe_positions)
    ys = geometry.map_probe_positions_to_object_y_px(product.probe_positions)
    covered = np.zeros(truth.shape, bool)
    for cx, cy in zip(xs, ys):
        x0, y0 = int(cx - (N - 1) / 2), int(cy - (N - 1) / 2)
        covered[y0:y0 + N, x0:x0 + N] = True
    x = np.arange(H)[None, :]
    moved = fourier_shift_2d(1.7 * truth * np.exp(1j * (0.5 + 0.02 * x)), dx=0.6, dy=-0.4)
    m = evaluate_object(np.where(covered, moved, 0), product)
    assert m["amplitude_ssim"] > 0.97 and m["phase_ssim"] > 0.97
    assert m["registration_converged"] == 1.0


def test_positions_px_define_the_scored_area(product, truth):
    geometry = product.object_.get_geometry()
    x_px = geometry.map_probe_positions_to_object_x_px(product.probe_positions)
    y_px = geometry.map_probe_positions_to_object_y_px(product.probe_positions)
    positions = np.stack([x_px, y_px], axis=1)
    full = evaluate_object(truth, product, positions_px=positions)
    base = evaluate_object(truth, product)
    assert full["scored_height_px"] == base["scored_height_px"]
    assert full["scored_width_px"] == base["scored_width_px"]
    left_half = positions[positions[:, 0] < np.median(positions[:, 0])]
    part = evaluate_object(truth, product, positions_px=left_half)
    assert part["scored_width_px"] < full["scored_width_px"]
    assert part["amplitude_ssim"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((H, H), complex), "all zeros"),
        (np.ones((H, H - 1), complex), "shape"),
        (np.ones((1, H, H), complex), "2-D"),
        (np.full((H, H), np.nan, complex), "NaN"),
    ],
)
def test_bad_reconstruction_raises(product, bad, match):
    with pytest.raises(ValueError, match=match):
        evaluate_object(bad, product)


def test_bad_positions_raise(product, truth):
    with pytest.raises(ValueError, match="positions_px"):
        evaluate_object(truth, product, positions_px=np.zeros((5, 3)))
    with pytest.raises(ValueError, match="canvas"):
        evaluate_object(truth, product, positions_px=np.array([[1.0, 1.0]]))


def test_frc_not_reached_is_nan_and_a_crossing_beyond_the_field_too():
    from ptychodus_ptychopinn_torch.evaluation import _frc_resolution_px

    class _Frc:
        def __init__(self, correlation, resolution_m):
            self.correlation = np.asarray(correlation, dtype=float)
            self._resolution = resolution_m

        def _resolution_at_threshold_curve(self, curve):
            return self._resolution

    curve = np.full(4, 0.5)
    assert _frc_resolution_px(_Frc([0.9, 0.9, 0.9, 0.9], 0.0), curve, 1.0, 40.0) == 2.0
    assert _frc_resolution_px(_Frc([0.9, 0.7, 0.4, 0.1], 8.0), curve, 1.0, 40.0) == 8.0
    assert math.isnan(_frc_resolution_px(_Frc([0.1, 0.1, 0.1, 0.1], math.inf), curve, 1.0, 40.0))
    assert math.isnan(_frc_resolution_px(_Frc([0.6, 0.1, 0.1, 0.1], 80.0), curve, 1.0, 40.0))
    assert math.isnan(_frc_resolution_px(_Frc([np.nan] * 4, 1.0), curve, 1.0, 40.0))


def test_format_shows_not_reached_only_where_the_flag_says_so():
    metrics = {"frc_half_bit_px": math.nan, "frc_half_bit_reached": 0.0,
               "frc_1_7_px": 6.5, "frc_1_7_reached": 1.0, "frc_auc": math.nan}
    lines = dict(line.split(None, 1) for line in format_metrics(metrics).splitlines())
    assert lines == {"frc_half_bit_px": "not reached", "frc_1_7_px": "6.5000", "frc_auc": "n/a"}
    assert "FRC is below the threshold" in format_metrics(metrics, describe=True)


def test_format_and_json_safe():
    metrics = {"amplitude_ssim": 0.5, "frc_half_bit_px": math.nan, "amplitude_psnr": math.inf}
    text = format_metrics(metrics, describe=True)
    assert "amplitude_ssim" in text and "0.5000" in text and "n/a" in text
    assert "SSIM" in text  # descriptions
    safe = json_safe_metrics(metrics)
    assert safe["frc_half_bit_px"] is None and safe["amplitude_psnr"] is None
    json.loads(json.dumps(safe, allow_nan=False))
    assert format_metrics({}) == ""
