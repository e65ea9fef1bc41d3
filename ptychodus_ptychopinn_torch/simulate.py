"""Simulated far-field ptychography scans built only with ``ptychodus.api.simulate``.

Used by the demo, the tests and the benchmarks. Using Ptychodus's own forward model
(rather than ours) means every convention test compares against the host's physics.

Defaults follow ``shared/docs/findings.md``: a structured, defocused Fresnel-zone-plate
probe of about 26 px diameter inside N = 64, an object with amplitude in [0.5, 1] and
phase within +-pi/2 taken from two independent fractal-noise fields, a Fermat-spiral scan
whose step gives the requested linear overlap of probe footprints, and Poisson noise at a
calibrated mean number of counts per pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ptychodus.api.assemble import AssembledDiffractionData
from ptychodus.api.constants import energy_eV_to_wavelength_m
from ptychodus.api.geometry import ImageExtent, PixelGeometry
from ptychodus.api.io import StandardFileLayout, save_diffraction_data, save_product
from ptychodus.api.object import Object, ObjectGeometry, compute_object_geometry
from ptychodus.api.probe import Probe, ProbeGeometry, ProbeSequence
from ptychodus.api.probe_positions import ProbePositionSequence
from ptychodus.api.product import Product, ProductMetadata
from ptychodus.api.reconstruct import ReconstructInput, prepare_reconstruct_input
from ptychodus.api.simulate.diffraction import generate_diffraction_data
from ptychodus.api.simulate.object import generate_fractal_noise_object, generate_uniform_object
from ptychodus.api.simulate.probe import (
    FresnelZonePlate,
    generate_disk_probe,
    generate_fresnel_zone_plate_probe,
    rescale_probe_intensity,
)
from ptychodus.api.simulate.probe_positions import generate_spiral_probe_positions

__all__ = ["SimulatedScan", "simulate_scan", "write_scan_files", "photograph", "PHOTOGRAPHS",
           "PROBE_DIAMETER_FRACTION"]

PHOTON_ENERGY_EV = 10_000.0
DETECTOR_DISTANCE_M = 2.0
DETECTOR_PIXEL_M = 75e-6
PADDING_PX = 2
PROBE_DIAMETER_FRACTION = 26.0 / 64.0
"""Nominal probe diameter as a fraction of N (26 px at N = 64); sets the scan step."""

# A 180 um zone plate with a 70 nm outer zone and a 60 um central stop (f = 101.6 mm at
# 10 keV). Its bright-field disc spans about 3/4 of the detector, so the far field is not
# clipped; 0.7 mm of defocus gives a ring-structured beam whose 90 %-power diameter is
# about 0.41 N px (26 px of 51.7 nm at N = 64). The object-plane pixel shrinks as 1/N,
# so a fixed defocus keeps that fraction for any N.
_ZONE_PLATE = FresnelZonePlate(
    zone_plate_diameter_m=180e-6,
    outermost_zone_width_m=70e-9,
    central_beamstop_diameter_m=60e-6,
)
_DEFOCUS_M = 0.7e-3


@dataclass(frozen=True)
class SimulatedScan:
    """A simulated scan: the true product, its diffraction data and the reconstructor input."""

    product: Product
    diffraction: AssembledDiffractionData
    reconstruct_input: ReconstructInput


def _metadata(photons_per_pattern: float) -> ProductMetadata:
    return ProductMetadata(
        name="simulated",
        comments="ptychodus_ptychopinn_torch.simulate",
        detector_distance_m=DETECTOR_DISTANCE_M,
        photon_energy_eV=PHOTON_ENERGY_EV,
        probe_photon_count=float(photons_per_pattern),
        exposure_time_s=1.0,
        mass_attenuation_m2_per_kg=0.0,
        tomography_angle_deg=0.0,
    )


def _make_probe(kind: str, geometry: ProbeGeometry, wavelength_m: float) -> Probe:
    n = geometry.width_px
    if kind == "disk":
        radius_m = 0.5 * PROBE_DIAMETER_FRACTION * n * geometry.pixel_width_m
        return generate_disk_probe(geometry, radius_m=radius_m)
    if kind == "structured":
        return generate_fresnel_zone_plate_probe(
            geometry, _ZONE_PLATE, photon_wavelength_m=wavelength_m, defocus_distance_m=_DEFOCUS_M
        )
    raise ValueError(f"probe must be 'structured' or 'disk', got {kind!r}")


def _unit_field(rng: np.random.Generator, geometry: ObjectGeometry) -> np.ndarray:
    """A textured real field mapped to [0, 1] (1st-99th percentile stretch)."""
    grid_scale_px = max(8.0, min(geometry.width_px, geometry.height_px) / 6.0)
    noise = generate_fractal_noise_object(rng, geometry, grid_scale_px=grid_scale_px, num_octaves=4)
    field = noise.get_layer(0).real
    lo, hi = np.percentile(field, [1.0, 99.0])
    return np.clip((field - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


PHOTOGRAPHS = ("brick", "gravel", "text", "grass", "chelsea", "coffee", "cell", "retina",
               "camera", "coins", "moon", "astronaut", "rocket", "page", "clock", "cat")
"""scikit-image sample photographs (shipped with scikit-image, no download) usable as objects."""


def photograph(name: str, shape: tuple[int, int]) -> np.ndarray:
    """Grey-level scikit-image sample photograph ``name`` resized to ``shape``, stretched to [0, 1].

    The stretch maps the 1st-99th percentiles to 0 and 1, so every photograph spans the range.
    """
    if name not in PHOTOGRAPHS:
        raise ValueError(f"unknown photograph {name!r}; expected one of {', '.join(PHOTOGRAPHS)}")
    try:
        import skimage.data
        from skimage.color import rgb2gray
        from skimage.transform import resize
    except ImportError as exc:  # pragma: no cover - scikit-image comes with ptychodus
        raise RuntimeError("photograph objects need scikit-image (pip install scikit-image)") from exc
    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
    if image.ndim == 3:
        image = rgb2gray(image[..., :3])
    image = resize(image, shape, anti_aliasing=True, preserve_range=True)
    lo, hi = np.percentile(image, [1.0, 99.0])
    return np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def _make_object(kind: str, rng: np.random.Generator, geometry: ObjectGeometry) -> Object:
    """``flat``, ``textured`` (fractal noise) or ``photo:AMPLITUDE/PHASE[@PHASE_MAX]``.

    A photograph object maps the first photograph to amplitude [0.5, 1] and the second to
    phase ``[-PHASE_MAX, +PHASE_MAX]`` (default pi/2), e.g. ``photo:brick/gravel@0.3``.
    """
    if kind == "flat":
        return generate_uniform_object(geometry)
    if kind.startswith("photo:"):
        spec, _, limit = kind[len("photo:"):].partition("@")
        amp_name, _, phase_name = spec.partition("/")
        phase_max = float(limit) if limit else np.pi / 2
        shape = (geometry.height_px, geometry.width_px)
        amplitude = 0.5 + 0.5 * photograph(amp_name, shape)
        phase = (2.0 * photograph(phase_name or amp_name, shape) - 1.0) * phase_max
        return Object(
            array=(amplitude * np.exp(1j * phase))[np.newaxis].astype(complex),
            pixel_geometry=geometry.get_pixel_geometry(),
            center=geometry.get_center(),
        )
    if kind == "textured":
        amplitude = 0.5 + 0.5 * _unit_field(rng, geometry)
        phase = (_unit_field(rng, geometry) - 0.5) * np.pi
        return Object(
            array=(amplitude * np.exp(1j * phase))[np.newaxis].astype(complex),
            pixel_geometry=geometry.get_pixel_geometry(),
            center=geometry.get_center(),
        )
    raise ValueError(f"obj must be 'textured', 'flat' or 'photo:AMPLITUDE/PHASE[@MAX]', got {kind!r}")


def _spiral_positions(num_positions: int, step_px: float, pixel_m: float) -> ProbePositionSequence:
    """Fermat spiral scaled so the median nearest-neighbour distance is ``step_px``."""
    unit = ProbePositionSequence(list(generate_spiral_probe_positions(num_positions, 1.0)))
    if num_positions > 1:
        xy = np.column_stack([unit.get_coordinates_x_m(), unit.get_coordinates_y_m()])
        nn = cKDTree(xy).query(xy, k=2)[0][:, 1]
        scale_m = step_px * pixel_m / float(np.median(nn))
    else:
        scale_m = 0.0
    return ProbePositionSequence(list(generate_spiral_probe_positions(num_positions, scale_m)))


def simulate_scan(
    *,
    num_positions: int = 256,
    N: int = 64,  # noqa: N803
    photons_per_pattern: float = 1e5,
    seed: int = 0,
    probe: str = "structured",
    obj: str = "textured",
    overlap: float = 0.75,
    noise: bool = True,
) -> SimulatedScan:
    """Simulate a deterministic far-field scan (10 keV, 2 m, 75 um detector pixels).

    ``overlap`` is the linear overlap ``1 - step / d`` of neighbouring probe footprints,
    with the nominal probe diameter ``d = PROBE_DIAMETER_FRACTION * N`` and the step the
    median nearest-neighbour distance of the Fermat spiral. The object canvas is
    ``compute_object_geometry(..., padding_px=2)``, so every N x N patch lies inside it.
    The probe is rescaled so the mean total counts per noise-free pattern equal
    ``photons_per_pattern`` (calibrated on Ptychodus's own propagator, whose intensity
    scale depends on the geometry); Poisson noise uses ``numpy.random.default_rng(seed)``.
    """
    if num_positions < 1:
        raise ValueError(f"num_positions must be >= 1, got {num_positions}")
    if N < 8 or N % 2:
        raise ValueError(f"N must be an even integer >= 8, got {N}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if not photons_per_pattern > 0:
        raise ValueError(f"photons_per_pattern must be > 0, got {photons_per_pattern}")

    rng = np.random.default_rng(seed)
    metadata = _metadata(photons_per_pattern)
    wavelength_m = energy_eV_to_wavelength_m(PHOTON_ENERGY_EV)
    probe_geometry = ProbeGeometry.from_far_field(
        PixelGeometry(DETECTOR_PIXEL_M, DETECTOR_PIXEL_M),
        ImageExtent(N, N),
        wavelength_m=wavelength_m,
        distance_m=DETECTOR_DISTANCE_M,
    )
    probe_ = _make_probe(probe, probe_geometry, wavelength_m)

    step_px = (1.0 - overlap) * PROBE_DIAMETER_FRACTION * N
    positions = _spiral_positions(num_positions, step_px, probe_geometry.pixel_width_m)
    object_geometry = compute_object_geometry(positions, probe_geometry, padding_px=PADDING_PX)
    object_ = _make_object(obj, rng, object_geometry)

    # Calibrate: noise-free patterns scale linearly with |probe|^2.
    trial = Product(metadata, positions, ProbeSequence.from_probe(probe_), object_, [])
    mean_counts = float(np.mean(np.sum(generate_diffraction_data(trial).get_patterns(), axis=(-2, -1))))
    probe_power = float(np.sum(np.abs(probe_.get_array()) ** 2))
    probe_ = rescale_probe_intensity(probe_, probe_power * photons_per_pattern / mean_counts)

    product = Product(metadata, positions, ProbeSequence.from_probe(probe_), object_, [])
    diffraction = generate_diffraction_data(product, rng if noise else None)
    reconstruct_input = prepare_reconstruct_input(diffraction, product)
    return SimulatedScan(product, diffraction, reconstruct_input)


def write_scan_files(scan: SimulatedScan, directory: Path) -> None:
    """Write ``diffraction.h5`` and ``product.h5`` (Ptychodus's batch-mode layout)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_diffraction_data(StandardFileLayout.DIFFRACTION.path(directory), scan.diffraction)
    save_product(StandardFileLayout.PRODUCT.path(directory), scan.product)

