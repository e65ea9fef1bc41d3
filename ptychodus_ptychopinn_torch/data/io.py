"""Build ScanData from what Ptychodus hands over or writes to disk.

Three sources, one result: a Ptychodus ``ReconstructInput``, the training-data NPZ that
Ptychodus's "Export Training Data" writes (``save_ptychopinn_training_data``: raw
intensities in ``diff3d``, a 3-D ``probeGuess``), and the batch-mode pair
``diffraction.h5`` + ``product.h5``. No torch import in this module.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .scan import ScanData, amplitudes_from_counts

__all__ = [
    "TRAINING_NPZ_NAME",
    "load_scan",
    "load_training_npz",
    "save_training_npz",
    "scan_from_reconstruct_input",
]

logger = logging.getLogger(__name__)

TRAINING_NPZ_NAME = "train_data.npz"
DIFFRACTION_H5_NAME = "diffraction.h5"
PRODUCT_H5_NAME = "product.h5"


def load_scan(path: str | os.PathLike[str]) -> ScanData:
    """Load a scan from an NPZ file or a directory.

    A directory is searched for ``train_data.npz`` first, then for the pair
    ``diffraction.h5`` + ``product.h5`` (Ptychodus's batch layout, paired by scan index
    with ``prepare_reconstruct_input``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scan data not found: {path} does not exist")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return load_training_npz(path)
        raise ValueError(
            f"cannot load scan data from {path}: expected a Ptychodus training-data .npz file "
            f"or a directory holding {TRAINING_NPZ_NAME} or {DIFFRACTION_H5_NAME} + {PRODUCT_H5_NAME}"
        )
    npz = path / TRAINING_NPZ_NAME
    if npz.is_file():
        return load_training_npz(npz)
    diffraction, product = path / DIFFRACTION_H5_NAME, path / PRODUCT_H5_NAME
    if diffraction.is_file() and product.is_file():
        return _load_hdf5_pair(diffraction, product)
    missing = [p.name for p in (diffraction, product) if not p.is_file()]
    raise FileNotFoundError(
        f"no scan data in directory {path}: looked for {TRAINING_NPZ_NAME}, or for "
        f"{DIFFRACTION_H5_NAME} + {PRODUCT_H5_NAME} (missing: {', '.join(missing)})"
    )


def _load_hdf5_pair(diffraction_file: Path, product_file: Path) -> ScanData:
    from ptychodus.api.io import load_diffraction_data, load_product
    from ptychodus.api.reconstruct import prepare_reconstruct_input

    try:
        assembled = load_diffraction_data(diffraction_file)
        product = load_product(product_file)
    except (KeyError, OSError) as exc:
        raise ValueError(
            f"cannot read Ptychodus files {diffraction_file} / {product_file}: {exc}"
        ) from exc
    return scan_from_reconstruct_input(prepare_reconstruct_input(assembled, product))


def scan_from_reconstruct_input(ri: Any) -> ScanData:
    """Convert a Ptychodus ``ReconstructInput`` (patterns paired with positions by index).

    Positions come from the object geometry's centred-pixel mapping, the probe is the
    first incoherent mode without OPR, the object is layer 0. Bad pixels (True = bad) are
    zeroed in the amplitudes and kept as the loss mask.
    """
    product = ri.product
    patterns = np.asarray(ri.diffraction_patterns)
    bad = None if ri.bad_pixels is None else np.asarray(ri.bad_pixels, dtype=bool)
    try:
        geometry = product.object_.get_geometry()
    except ValueError as exc:
        raise ValueError(
            f"the product's object has no usable geometry ({exc}); expected an object with "
            "pixel size and centre so positions can be mapped to object pixels"
        ) from exc
    positions = product.probe_positions
    xy = np.column_stack(
        [
            geometry.map_probe_positions_to_object_x_px(positions),
            geometry.map_probe_positions_to_object_y_px(positions),
        ]
    ).reshape(-1, 2)
    try:
        probe_modes = product.probes.get_probe_no_opr().get_array()
    except ValueError as exc:
        raise ValueError(f"the product's probe is missing or incomplete ({exc})") from exc
    if probe_modes.ndim != 3 or probe_modes.shape[0] < 1 or probe_modes.shape[-1] == 0:
        raise ValueError(
            f"the product has no probe (probe array shape {probe_modes.shape}); expected a "
            "complex (N, N) probe of the pattern size"
        )
    obj = product.object_.get_layer(0)
    amplitudes = amplitudes_from_counts(patterns, bad)
    return ScanData(
        propagator_scale=fresnel_scale(product, amplitudes.shape[-1]),
        amplitudes=amplitudes,
        probe=probe_modes[0],
        positions_px=xy,
        object_shape=(int(obj.shape[0]), int(obj.shape[1])),
        object_guess=obj,
        bad_pixels=bad,
    )


def fresnel_scale(product: Any, n: int) -> float | None:
    """Amplitude factor of Ptychodus's far-field (Fresnel transform) propagator relative to the
    orthonormal FFT: ``N dx^2 / (lambda z)`` with ``dx`` the object pixel, ``lambda`` the
    wavelength and ``z`` the detector distance (measured: `tests/test_refinement.py`).

    With it the refined object is the physical transmission of the product's probe, as
    Ptychodus's own simulator and reconstructors define it. None when the product lacks the
    geometry (then the object keeps a fitted gauge).
    """
    try:
        dx = float(product.object_.get_pixel_geometry().width_m)
        wavelength = float(product.metadata.photon_wavelength_m)
        distance = float(product.metadata.detector_distance_m)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return None
    scale = n * dx * dx / (wavelength * distance) if wavelength > 0 and distance > 0 else float("nan")
    return scale if np.isfinite(scale) and scale > 0 else None


def _require(data: Any, key: str, path: Path, expected: str) -> np.ndarray:
    if key not in data.files:
        raise ValueError(
            f"{path}: missing key '{key}' (expected {expected}); keys present: {sorted(data.files)}"
        )
    return np.asarray(data[key])


def load_training_npz(path: str | os.PathLike[str]) -> ScanData:
    """Load a Ptychodus training-data NPZ (``save_ptychopinn_training_data`` layout).

    ``diff3d`` holds raw intensities of any dtype (converted in float64, then sqrt).
    ``probeGuess`` may be 2-D or a 3-D mode stack (first mode used). ``xcoords``/``ycoords``
    are object pixels. With ``objectGuess`` absent, the canvas is the positions' bounding
    box plus N on each axis (as ``compute_object_geometry`` sizes it) and the positions are
    shifted so the scan centre sits at the canvas centre pixel ((W-1)/2, (H-1)/2); every
    N x N patch then lies inside the canvas.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training-data NPZ not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable NumPy .npz archive ({exc})") from exc
    with data:
        counts = _require(data, "diff3d", path, "(M, N, N) raw diffraction intensities")
        probe = _require(data, "probeGuess", path, "complex (N, N) or (modes, N, N) probe")
        x = _require(data, "xcoords", path, "(M,) x positions in object pixels")
        y = _require(data, "ycoords", path, "(M,) y positions in object pixels")
        guess = np.asarray(data["objectGuess"]) if "objectGuess" in data.files else None
        bad = np.asarray(data["bad_pixels"]) if "bad_pixels" in data.files else None

    if counts.ndim != 3:
        raise ValueError(f"{path}: 'diff3d' must have shape (M, N, N); got {counts.shape}")
    if probe.ndim == 3:
        if probe.shape[0] < 1:
            raise ValueError(f"{path}: 'probeGuess' has no modes; got shape {probe.shape}")
        probe = probe[0]
    elif probe.ndim != 2:
        raise ValueError(
            f"{path}: 'probeGuess' must have shape (N, N) or (modes, N, N); got {probe.shape}"
        )
    if x.ndim != 1 or y.ndim != 1 or x.shape != y.shape:
        raise ValueError(
            f"{path}: 'xcoords' and 'ycoords' must be 1-D arrays of equal length (M,); "
            f"got {x.shape} and {y.shape}"
        )
    if x.shape[0] != counts.shape[0]:
        raise ValueError(
            f"{path}: 'diff3d' holds {counts.shape[0]} patterns but 'xcoords'/'ycoords' hold "
            f"{x.shape[0]} positions; expected one position per pattern"
        )
    if bad is not None and bad.shape != counts.shape[1:]:
        raise ValueError(
            f"{path}: 'bad_pixels' must have the pattern shape {counts.shape[1:]}; got {bad.shape}"
        )
    if guess is not None and guess.ndim != 2:
        raise ValueError(f"{path}: 'objectGuess' must have shape (H, W); got {guess.shape}")

    positions = np.column_stack([x, y]).astype(np.float64)
    if guess is not None:
        shape = (int(guess.shape[0]), int(guess.shape[1]))
    else:
        positions, shape = _canvas_from_positions(positions, counts.shape[-1])
    try:
        return ScanData(
            amplitudes=amplitudes_from_counts(counts, bad),
            probe=probe,
            positions_px=positions,
            object_shape=shape,
            object_guess=guess,
            bad_pixels=None if bad is None else bad.astype(bool),
        )
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _canvas_from_positions(positions: np.ndarray, n: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Canvas = bounding box + N per axis; positions re-centred on its centre pixel."""
    if positions.shape[0] == 0 or not np.all(np.isfinite(positions)):
        return positions, (max(n, 1), max(n, 1))  # ScanData reports the real problem
    lo, hi = positions.min(axis=0), positions.max(axis=0)
    width = math.ceil(hi[0] - lo[0]) + n
    height = math.ceil(hi[1] - lo[1]) + n
    centre = 0.5 * (lo + hi)
    shifted = positions - centre + np.array([(width - 1) / 2, (height - 1) / 2])
    return shifted, (height, width)


def save_training_npz(path: str | os.PathLike[str], ri: Any, *, inpaint_bad_pixels: bool = True) -> Path:
    """Write Ptychodus's training-data NPZ for ``ri`` atomically; return the path written.

    Uses Ptychodus's own ``save_ptychopinn_training_data`` so the file is exactly what the
    built-in export writes. ``.npz`` is appended when missing (as numpy would).
    """
    from ptychodus.api.io import save_ptychopinn_training_data

    path = Path(path)
    if path.suffix.lower() != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        save_ptychopinn_training_data(tmp, ri, inpaint_bad_pixels=inpaint_bad_pixels)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
