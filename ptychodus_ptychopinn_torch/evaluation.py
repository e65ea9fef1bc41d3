"""Quality metrics of a reconstructed object against the true object, via ``ptychodus.api.metrics``.

Why this exists: a falling training loss is no evidence of a good reconstruction (a network can
collapse to a flat object while its Poisson loss keeps falling), so the demo, the benchmarks and
the quality tests judge a reconstruction by metrics against the truth, computed the way Ptychodus
computes them:

1. the reconstruction replaces the object array of the truth `Product` (same pixel geometry and
   centre), so both live in the same frame;
2. the scoring region is the scanned area only: an illumination map of the probe at the scan
   positions, thresholded, eroded by 1/8 of the probe width and reduced to its largest inscribed
   rectangle (`compute_illumination_scoring_region`, as Ptychodus's own FRC panel does); the empty
   border around the scan is never scored;
3. `compute_object_comparison` removes the ambiguities ptychography cannot resolve (global complex
   scale, phase offset, linear phase ramp, sub-pixel shift), estimating scale/phase/ramp over the
   scoring region only; for the registration both objects are blended smoothly into constants
   outside the region (plus a margin), because zeros or junk in an unscanned border otherwise
   derail Ptychodus's registration (measured: amplitude SSIM 0.01 instead of 1.0 for the truth
   with a zeroed border);
4. SSIM, PSNR and the Fourier ring correlation are computed on the scoring region.

``flat_amplitude_ssim`` / ``flat_phase_ssim`` are the scores a constant object gets through the same
pipeline: the collapse reference. An amplitude SSIM near the flat one means the amplitude was not
reconstructed at all, however low the loss.

This module does not import torch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["evaluate_object", "format_metrics", "json_safe_metrics"]

logger = logging.getLogger(__name__)

#: Erode the illuminated mask by the probe width divided by this (Ptychodus's FRC panel default):
#: the outermost scan positions leave a rim only part of the probe ever covered.
PROBE_EROSION_FRACTION = 8

#: Smallest scoring rectangle edge, in pixels; below it the whole array is scored instead.
MIN_REGION_PX = 8

_DESCRIPTIONS: dict[str, str] = {
    "amplitude_ssim": "SSIM of |O| (1 = perfect)",
    "phase_ssim": "SSIM of arg(O)",
    "amplitude_psnr": "PSNR of |O| in dB",
    "phase_psnr": "PSNR of arg(O) in dB",
    "frc_half_bit_px": "FRC resolution, half-bit threshold (period in px; 2 = Nyquist)",
    "frc_1_7_px": "FRC resolution, 1/7 threshold (period in px; 2 = Nyquist)",
    "frc_auc": "area under the FRC curve (0..1)",
    "flat_amplitude_ssim": "amplitude SSIM of a flat object (collapse reference)",
    "flat_phase_ssim": "phase SSIM of a flat object (collapse reference)",
    "amplitude_std": "std of the reconstructed |O| in the scored region (after scale removal)",
    "truth_amplitude_std": "std of the true |O| in the scored region",
    "object_scale_factor": "global amplitude scale removed",
    "phase_offset_rad": "global phase offset removed",
    "registration_converged": "1 if the sub-pixel registration converged, else 0",
    "frc_half_bit_reached": "1 if the FRC reaches the half-bit threshold, else 0 (nothing resolved)",
    "frc_1_7_reached": "1 if the FRC reaches the 1/7 threshold, else 0 (nothing resolved)",
    "scored_height_px": "scored region height",
    "scored_width_px": "scored region width",
}


def _replace_object(product: Any, array: np.ndarray) -> Any:
    """A copy of ``product`` whose object is ``array`` with the same pixel geometry and centre."""
    from ptychodus.api.object import Object

    truth = product.object_
    obj = Object(
        array=array,
        pixel_geometry=truth.get_pixel_geometry().copy(),
        center=truth.get_center().copy(),
    )
    return dataclasses.replace(product, object_=obj)


def _with_positions(product: Any, positions_px: np.ndarray) -> Any:
    """``product`` with scan positions given in object pixels (x, y), and one probe for all."""
    from ptychodus.api.object import ObjectPosition
    from ptychodus.api.probe import ProbeSequence
    from ptychodus.api.probe_positions import ProbePositionSequence

    geometry = product.object_.get_geometry()
    points = [
        geometry.map_coordinates_object_to_probe(ObjectPosition(i, float(x), float(y)))
        for i, (x, y) in enumerate(positions_px)
    ]
    probe = product.probes[0]
    probes = ProbeSequence(
        array=probe.get_array().copy(), opr_weights=None, pixel_geometry=probe.get_pixel_geometry()
    )
    return dataclasses.replace(
        product, probe_positions=ProbePositionSequence(points), probes=probes
    )


def _scoring_region(product: Any, shape: tuple[int, int]) -> Any | None:
    """The illumination-derived scoring rectangle, or None (score the whole array) if degenerate."""
    from ptychodus.api.illumination import compute_illumination_map
    from ptychodus.api.metrics import compute_illumination_scoring_region

    try:
        illumination = compute_illumination_map(product)
    except (ValueError, IndexError) as exc:
        raise ValueError(
            f"cannot map the illuminated area (probe footprints must lie inside the "
            f"{shape[0]}x{shape[1]} object canvas): {exc}"
        ) from exc
    probe_extent_px = min(product.probes.width_px, product.probes.height_px)
    try:
        return compute_illumination_scoring_region(
            illumination,
            shape,
            erosion_px=probe_extent_px // PROBE_EROSION_FRACTION,
            min_region_px=MIN_REGION_PX,
        )
    except ValueError as exc:
        logger.warning("scoring the whole object array: %s", exc)
        return None


#: The flag of each FRC resolution: 0.0 when its threshold is never reached (value NaN).
FRC_REACHED = {"frc_half_bit_px": "frc_half_bit_reached", "frc_1_7_px": "frc_1_7_reached"}

NOT_REACHED = "not reached"


def _frc_resolution_px(frc: Any, curve: np.ndarray, pixel_m: float, field_px: float) -> float:
    """FRC threshold crossing as a period in pixels; NaN when the threshold is not reached.

    2.0 (Nyquist) when the correlation never drops below the threshold. NaN ("not reached":
    nothing is resolved) when the correlation is below the threshold already at the lowest
    frequency, when the test has no structure at all (a flat object), or when the crossing lies
    beyond the scored field. A number there would read as a (poor) resolution, which it is not.
    """
    correlation = np.asarray(frc.correlation, dtype=float)
    diff = correlation - curve
    if not np.isfinite(diff).any():
        return math.nan
    if not (np.isfinite(diff) & (diff < 0.0)).any():
        return 2.0
    resolution_m = frc._resolution_at_threshold_curve(curve)  # noqa: SLF001 (same maths as API)
    if not math.isfinite(resolution_m):
        return math.nan
    resolution_px = resolution_m / pixel_m
    return float(resolution_px) if resolution_px <= field_px else math.nan


def _soft_box(length: int, begin: int, end: int, margin_px: int, taper_px: int) -> np.ndarray:
    """1 on [begin - margin, end + margin), a raised-cosine fall to 0 over ``taper_px``."""
    index = np.arange(length)
    distance = np.maximum(begin - margin_px - index, index - (end - 1 + margin_px)).clip(min=0)
    if taper_px <= 0:
        return (distance == 0).astype(float)
    return np.where(distance >= taper_px, 0.0, 0.5 * (1.0 + np.cos(np.pi * distance / taper_px)))


def _confine_to_region(
    array: np.ndarray, region: Any, margin_px: int, taper_px: int, *, fill_holes: bool
) -> np.ndarray:
    """``array`` inside the scoring region (plus a margin), blended smoothly outside into a
    constant of its own mean amplitude and phase.

    Why: Ptychodus's registration bootstraps on the complex logarithmic gradient, which zeros
    (an unscanned canvas), junk in the unconverged border, or the hard wrap-around edge of the
    truth canvas dominate, so the alignment of the scanned area fails; hard crops bias it toward
    zero shift instead. Blending both objects smoothly into constants hides all of these and
    leaves the scored rectangle untouched. With ``fill_holes``, pixels with almost no amplitude
    (never reconstructed) are filled as well.
    """
    height, width = array.shape
    window = np.outer(
        _soft_box(height, region.row_begin, region.row_end, margin_px, taper_px),
        _soft_box(width, region.column_begin, region.column_end, margin_px, taper_px),
    )
    inside = region.crop(array)
    mean = complex(np.mean(inside))
    phasor = mean / abs(mean) if abs(mean) > 0.0 else 1.0
    fill = float(np.mean(np.abs(inside))) * phasor
    if fill_holes:
        window = window * (np.abs(array) > 1e-3 * abs(fill))
    return window * array + (1.0 - window) * fill


class _RegistrationLog(logging.Handler):
    """Collects Ptychodus's "alignment did not converge" warnings instead of printing them.

    A reconstruction with little structure (a collapsed network) cannot be registered; that is
    reported as ``registration_converged = 0`` in the metrics rather than as a stray warning.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []
        self._logger = logging.getLogger("ptychodus.api.metrics")
        self._propagate = True

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _RegistrationLog:
        self._propagate = self._logger.propagate
        self._logger.addHandler(self)
        self._logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate
        for message in self.messages:
            logger.info("registration against the truth: %s", message)


def _score(
    truth: Any, test_array: np.ndarray, region: Any | None, margin_px: int, taper_px: int
) -> dict[str, float]:
    """Remove the ambiguities of ``test_array`` against the truth and score the region.

    Scale, phase offset and ramp are estimated over the scoring rectangle only, the registration
    sees only the scanned area (see `_confine_to_region`), and only the rectangle is scored.
    """
    from ptychodus.api.metrics import (
        ApodizationWindow,
        compute_fourier_ring_correlation,
        compute_object_comparison,
        compute_peak_signal_to_noise_ratio,
        compute_structural_similarity,
    )

    reference_product = truth
    weights = None
    if region is not None:
        truth_array = truth.object_.get_layers_flattened()
        reference_product = _replace_object(
            truth, _confine_to_region(truth_array, region, margin_px, taper_px, fill_holes=False)
        )
        test_array = _confine_to_region(test_array, region, margin_px, taper_px, fill_holes=True)
        weights = np.zeros(test_array.shape)
        weights[region.row_begin : region.row_end, region.column_begin : region.column_end] = 1.0

    with warnings.catch_warnings(), _RegistrationLog() as registration:
        # skimage warns when registering a structureless (flat) image; the result is still usable
        warnings.simplefilter("ignore", UserWarning)
        comparison = compute_object_comparison(
            reference_product, _replace_object(truth, test_array), weights=weights
        )
    reference = comparison.reference_complex
    test = comparison.test_complex
    window: Any = ApodizationWindow.TUKEY
    if region is not None:
        reference = region.crop(reference)
        test = region.crop(test)
        window = region.weights

    ref_amp = np.abs(reference)
    test_amp = np.abs(test)
    ref_phase = np.angle(reference)
    # Test phase measured relative to the truth: the per-pixel error is wrapped to (-pi, pi], so
    # a truth phase that wraps does not put 2*pi jumps into the comparison.
    test_phase = ref_phase + np.angle(test * np.conj(reference))

    pixel = comparison.pixel_geometry
    frc = compute_fourier_ring_correlation(
        reference, test, pixel_width_m=pixel.width_m, pixel_height_m=pixel.height_m, window=window
    )
    pixel_m = 0.5 * (pixel.width_m + pixel.height_m)
    field_px = float(max(reference.shape))
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        half_bit = _frc_resolution_px(frc, frc.get_bit_threshold_curve(0.5), pixel_m, field_px)
        one_seventh = _frc_resolution_px(
            frc, np.full(frc.correlation.shape, 1.0 / 7.0), pixel_m, field_px
        )
        auc = frc.get_area_under_curve()

    with np.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # PSNR of identical images is +inf
        amplitude_psnr = compute_peak_signal_to_noise_ratio(ref_amp, test_amp)
        phase_psnr = compute_peak_signal_to_noise_ratio(ref_phase, test_phase)
    return {
        "amplitude_ssim": compute_structural_similarity(ref_amp, test_amp),
        "phase_ssim": compute_structural_similarity(ref_phase, test_phase),
        "amplitude_psnr": amplitude_psnr,
        "phase_psnr": phase_psnr,
        "frc_half_bit_px": half_bit,
        "frc_1_7_px": one_seventh,
        "frc_half_bit_reached": float(math.isfinite(half_bit)),
        "frc_1_7_reached": float(math.isfinite(one_seventh)),
        "frc_auc": float(auc),
        "amplitude_std": float(np.std(test_amp)),
        "truth_amplitude_std": float(np.std(ref_amp)),
        "object_scale_factor": float(comparison.ambiguities.object_scale_factor),
        "phase_offset_rad": float(comparison.ambiguities.phase_offset_rad),
        "registration_converged": 0.0 if registration.messages else 1.0,
    }


def evaluate_object(
    reconstruction: np.ndarray,
    truth_product: Any,
    *,
    positions_px: np.ndarray | None = None,
) -> dict[str, float]:
    """Score a reconstructed object against the truth held by a Ptychodus ``Product``.

    Args:
        reconstruction: (H, W) complex object on the same canvas as ``truth_product.object_``.
        truth_product: Ptychodus ``Product`` holding the true object (pixel geometry and centre),
            the probe and the scan positions that define the scored (illuminated) area.
        positions_px: optional (M, 2) scan positions (x, y) in object pixels (Ptychodus
            centred-pixel convention) that replace the product's positions for the scored area,
            e.g. when only a subset of the scan was reconstructed.

    Returns:
        Floats, all computed after ambiguity removal over the scored region: ``amplitude_ssim``,
        ``phase_ssim``, ``amplitude_psnr``, ``phase_psnr`` (dB), ``frc_half_bit_px`` and
        ``frc_1_7_px`` (the FRC resolution as a period in pixels at the van Heel-Schatz half-bit
        and the fixed 1/7 thresholds; 2.0 = correlated up to Nyquist; NaN = the threshold is
        not reached, nothing resolved, with ``frc_half_bit_reached`` / ``frc_1_7_reached`` 0.0,
        else 1.0), ``frc_auc`` (NaN for a structureless object), ``flat_amplitude_ssim`` /
        ``flat_phase_ssim`` (what a constant object scores), ``amplitude_std`` / ``truth_amplitude_std``, the removed
        ``object_scale_factor`` and ``phase_offset_rad``, ``registration_converged`` (0.0 when
        the alignment to the truth did not converge, typical of a structureless reconstruction),
        and ``scored_height_px`` / ``scored_width_px``.

    Raises:
        ValueError: bad shapes, non-finite values, an all-zero reconstruction, or positions whose
            probe footprint leaves the canvas.
    """
    recon = np.asarray(reconstruction)
    if recon.ndim != 2:
        raise ValueError(f"reconstruction must be a 2-D (H, W) array, got shape {recon.shape}")
    truth_array = truth_product.object_.get_layers_flattened()
    if recon.shape != truth_array.shape:
        raise ValueError(
            f"reconstruction shape {recon.shape} differs from the true object's "
            f"{truth_array.shape}; reconstruct on the truth product's object canvas"
        )
    if not np.all(np.isfinite(recon)):
        raise ValueError("reconstruction contains NaN or infinite values")
    if not np.any(recon):
        raise ValueError("reconstruction is all zeros; there is nothing to compare")
    recon = recon.astype(np.complex128, copy=False)

    product = truth_product
    if positions_px is not None:
        positions = np.asarray(positions_px, dtype=float)
        if positions.ndim != 2 or positions.shape[1] != 2 or len(positions) == 0:
            raise ValueError(f"positions_px must be a non-empty (M, 2) array, got {positions.shape}")
        if not np.all(np.isfinite(positions)):
            raise ValueError("positions_px contains NaN or infinite values")
        product = _with_positions(truth_product, positions)

    shape = (int(recon.shape[0]), int(recon.shape[1]))
    region = _scoring_region(product, shape)
    probe_px = min(truth_product.probes.width_px, truth_product.probes.height_px)
    margin_px, taper_px = max(2, probe_px // 8), max(4, probe_px // 4)
    metrics = _score(truth_product, recon, region, margin_px, taper_px)

    # The collapse reference: a constant object at the truth's mean amplitude in the region.
    truth_region = truth_array if region is None else region.crop(truth_array)
    flat = np.full(shape, np.mean(np.abs(truth_region)), dtype=np.complex128)
    flat_metrics = _score(truth_product, flat, region, margin_px, taper_px)
    metrics["flat_amplitude_ssim"] = flat_metrics["amplitude_ssim"]
    metrics["flat_phase_ssim"] = flat_metrics["phase_ssim"]

    metrics["scored_height_px"] = float(region.height_px if region is not None else shape[0])
    metrics["scored_width_px"] = float(region.width_px if region is not None else shape[1])
    return {key: float(value) for key, value in metrics.items()}


def json_safe_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics with non-finite floats replaced by None, for strict JSON files.

    An FRC resolution that was not reached becomes None next to its 0.0 ``*_reached`` flag.
    """
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = None
        else:
            out[key] = value
    return out


def format_metrics(metrics: Mapping[str, Any], *, describe: bool = False) -> str:
    """Aligned ``name  value`` lines for a terminal; NaN/None print as ``n/a``, and an FRC
    resolution whose ``*_reached`` flag is 0 as ``not reached`` (the flags themselves are not
    repeated)."""
    if not metrics:
        return ""
    flags = set(FRC_REACHED.values())
    shown = {key: value for key, value in metrics.items() if key not in flags}
    if not shown:
        return ""
    width = max(len(key) for key in shown)
    lines = []
    for key, value in shown.items():
        reached = metrics.get(FRC_REACHED.get(key, ""), 1.0)
        if key in FRC_REACHED and reached is not None and not reached:
            text = NOT_REACHED
        elif value is None or (isinstance(value, float) and math.isnan(value)):
            text = "n/a"
        elif isinstance(value, float):
            text = f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
        else:
            text = str(value)
        line = f"{key:<{width}}  {text:>10}"
        if describe and key in _DESCRIPTIONS:
            line += f"  {_DESCRIPTIONS[key]}"
            if text == NOT_REACHED:
                line += ("; not reached: the FRC is below the threshold from the lowest "
                         "frequency on, so no resolution is resolved")
        lines.append(line)
    return "\n".join(lines)
