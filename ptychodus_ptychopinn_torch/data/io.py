"""Build ScanData from what Ptychodus hands over or writes to disk.

Three sources, one result: a Ptychodus ``ReconstructInput``, the training-data NPZ that
Ptychodus's "Export Training Data" writes (``save_ptychopinn_training_data``: raw
intensities in ``diff3d``, a 3-D ``probeGuess``), and the batch-mode pair
``diffraction.h5`` + ``product.h5``. No torch import in this module.

Two conventions for ``diff3d`` exist in the wild: Ptychodus writes raw counts, PtychoPINN's own
NPZ datasets hold amplitudes (the square root of the counts). Read the wrong way, amplitudes
would become counts^(1/4) and the reconstruction garbage, so the NPZ reader decides from the
data where they decide it (`detect_diffraction`), logs what it assumed, accepts an override,
and refuses when the data cannot decide.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .patterns import DiffractionPatterns, HDF5Patterns, stage
from .scan import ScanData

__all__ = [
    "DIFFRACTION_CONVENTIONS",
    "TRAINING_NPZ_NAME",
    "detect_diffraction",
    "load_scan",
    "load_training_npz",
    "save_training_npz",
    "scan_from_reconstruct_input",
]

logger = logging.getLogger(__name__)

TRAINING_NPZ_NAME = "train_data.npz"
DIFFRACTION_H5_NAME = "diffraction.h5"
PRODUCT_H5_NAME = "product.h5"

#: What ``diff3d`` of a training-data NPZ holds: decided from the data, or given.
DIFFRACTION_CONVENTIONS = ("auto", "counts", "amplitudes")

#: Patterns looked at to decide the convention (spread over the scan), and the largest squared
#: amplitude whose integer-ness the data's precision can still tell (float32: ~1e4).
_DETECT_PATTERNS = 256
_DETECT_VALUES = 2**22
_DETECT_RESOLUTION = 0.01


def _check_convention(diffraction: str) -> str:
    if diffraction not in DIFFRACTION_CONVENTIONS:
        raise ValueError(f"diffraction={diffraction!r} is invalid; expected one of "
                         + ", ".join(repr(c) for c in DIFFRACTION_CONVENTIONS))
    return diffraction


def detect_diffraction(values: Any, bad_pixels: np.ndarray | None = None) -> tuple[str | None, str]:
    """``("counts" | "amplitudes" | None, reason)``: what a pattern stack holds, judged from
    its values; None when the values cannot decide.

    Integer dtypes and integer values (within the dtype's precision) are counts; non-integer
    values whose squares are integers are amplitudes (square roots of counts). Everything else
    (scaled, background-subtracted or simulated noise-free intensities, normalised amplitudes)
    cannot be told apart. Bad pixels (True = bad) and non-finite values are ignored, and up to
    256 patterns spread over the scan (at most ~4 million values) are looked at.
    """
    data = np.asarray(values)
    if data.dtype.kind in "biu":
        return "counts", f"integer dtype {data.dtype}"
    if data.dtype.kind != "f":
        return None, f"dtype {data.dtype} is not a real number type"
    if data.ndim < 1 or data.shape[0] == 0:
        return "counts", "no patterns (both readings agree)"
    per_pattern = max(1, int(np.prod(data.shape[1:])))
    count = max(1, min(data.shape[0], _DETECT_PATTERNS, _DETECT_VALUES // per_pattern))
    index = np.unique(np.linspace(0, data.shape[0] - 1, count).astype(np.intp))
    sample = data[index].astype(np.float64)
    keep = np.isfinite(sample)
    if bad_pixels is not None and np.shape(bad_pixels) == sample.shape[1:]:
        keep &= ~np.asarray(bad_pixels, dtype=bool)
    v = sample[keep]
    eps = float(np.finfo(data.dtype).eps)
    fraction = np.abs(v - np.round(v))
    integer = fraction <= 4.0 * eps * np.maximum(1.0, np.abs(v))
    if integer.all():
        return "counts", "every value is an integer"
    rest = v[~integer]
    squares = rest * rest
    tolerance = 8.0 * eps * squares + 1e-9
    informative = tolerance < _DETECT_RESOLUTION
    if not informative.any():
        return None, ("the non-integer values are too large for their precision to tell "
                      "whether their squares are integers")
    square_integer = np.abs(squares - np.round(squares)) <= tolerance
    bad = informative & ~square_integer
    if not bad.any():
        return "amplitudes", "the values are not integers but their squares are"
    example = float(rest[bad][0])
    return None, (f"values such as {example:.6g} are neither integers (counts) nor square roots "
                  f"of integers (amplitudes)")


def load_scan(path: str | os.PathLike[str], *, diffraction: str = "auto") -> ScanData:
    """Load a scan from an NPZ file or a directory.

    A directory is searched for ``train_data.npz`` first, then for the pair
    ``diffraction.h5`` + ``product.h5`` (Ptychodus's batch layout, paired by scan index
    with ``prepare_reconstruct_input``). ``diffraction`` says what an NPZ's ``diff3d`` holds
    (`load_training_npz`); Ptychodus's ``diffraction.h5`` always holds counts.
    """
    path = Path(path)
    _check_convention(diffraction)
    if not path.exists():
        raise FileNotFoundError(f"scan data not found: {path} does not exist")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return load_training_npz(path, diffraction=diffraction)
        raise ValueError(
            f"cannot load scan data from {path}: expected a Ptychodus training-data .npz file "
            f"or a directory holding {TRAINING_NPZ_NAME} or {DIFFRACTION_H5_NAME} + {PRODUCT_H5_NAME}"
        )
    npz = path / TRAINING_NPZ_NAME
    if npz.is_file():
        return load_training_npz(npz, diffraction=diffraction)
    patterns, product = path / DIFFRACTION_H5_NAME, path / PRODUCT_H5_NAME
    if patterns.is_file() and product.is_file():
        if diffraction == "amplitudes":
            logger.warning("%s holds counts (Ptychodus's format); diffraction='amplitudes' "
                           "applies to training-data NPZ files only and is ignored here",
                           patterns)
        return _load_hdf5_pair(patterns, product)
    missing = [p.name for p in (patterns, product) if not p.is_file()]
    raise FileNotFoundError(
        f"no scan data in directory {path}: looked for {TRAINING_NPZ_NAME}, or for "
        f"{DIFFRACTION_H5_NAME} + {PRODUCT_H5_NAME} (missing: {', '.join(missing)})"
    )


def _hdf5_problem(path: Path, what: str, expected: str) -> ValueError:
    return ValueError(f"{path}: {what}; expected {expected}")


def _open_hdf5(path: Path, expected: str) -> Any:
    """``h5py.File`` of ``path``, or one ValueError naming the file (truncated, not HDF5)."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise _hdf5_problem(path, f"not a readable HDF5 file ({exc})", expected) from None


def _dataset(handle: Any, path: Path, name: str, expected: str) -> Any:
    """The dataset ``name``; ValueError naming file and dataset when missing or a group."""
    import h5py

    item = handle.get(name)
    if not isinstance(item, h5py.Dataset):
        what = "is missing" if item is None else "is not a dataset"
        raise _hdf5_problem(path, f"dataset '{name}' {what}", expected)
    return item


def _check_hdf5_pair(diffraction_file: Path, product_file: Path) -> None:
    """Check ranks, dtypes and counts of the batch pair before Ptychodus reads it.

    Ptychodus's readers report a truncated file or a dataset of the wrong kind with a bare
    ``KeyError`` or ``OSError`` (or read a wrong rank without a word), and pair patterns with
    positions by index, silently dropping or interpolating when their counts differ (e.g. a
    diffraction.h5 of one scan next to the product.h5 of another). One clear error naming the
    file and the dataset instead.
    """
    expected_diffraction = ("Ptychodus's diffraction.h5 with datasets 'patterns' (M, N, N) counts, "
                            "'indexes' (M,) and 'bad_pixels' (N, N)")
    with _open_hdf5(diffraction_file, expected_diffraction) as handle:
        patterns = _dataset(handle, diffraction_file, "patterns", "(M, N, N) diffraction counts")
        if patterns.ndim != 3:
            raise _hdf5_problem(diffraction_file, f"dataset 'patterns' has shape {patterns.shape}",
                                "a stack of diffraction patterns (M, N, N)")
        if patterns.dtype.kind not in "biuf":
            raise _hdf5_problem(diffraction_file, f"dataset 'patterns' has dtype {patterns.dtype}",
                                "integer or floating-point counts")
        indexes = _dataset(handle, diffraction_file, "indexes", "(M,) integer scan indexes")
        if indexes.ndim != 1 or indexes.dtype.kind not in "iu":
            raise _hdf5_problem(
                diffraction_file, f"dataset 'indexes' has shape {indexes.shape} and dtype "
                f"{indexes.dtype}", "(M,) integer scan indexes, one per pattern")
        if indexes.shape[0] != patterns.shape[0]:
            raise _hdf5_problem(
                diffraction_file, f"dataset 'indexes' holds {indexes.shape[0]} scan indexes but "
                f"'patterns' holds {patterns.shape[0]} patterns", "one index per pattern")
        bad = _dataset(handle, diffraction_file, "bad_pixels",
                       f"(N, N) bad-pixel mask of the pattern shape {patterns.shape[1:]}")
        if tuple(bad.shape) != patterns.shape[1:]:
            raise _hdf5_problem(diffraction_file, f"dataset 'bad_pixels' has shape {bad.shape}",
                                f"the pattern shape {patterns.shape[1:]}")
        count = int(patterns.shape[0])

    expected_product = ("Ptychodus's product.h5 with datasets 'probe_position_indexes', "
                        "'probe_position_x_m', 'probe_position_y_m' (M,), 'probe' and 'object'")
    with _open_hdf5(product_file, expected_product) as handle:
        lengths = {}
        for name in ("probe_position_indexes", "probe_position_x_m", "probe_position_y_m"):
            item = _dataset(handle, product_file, name, "(M,) probe positions, one per pattern")
            if item.ndim != 1:
                raise _hdf5_problem(product_file, f"dataset '{name}' has shape {item.shape}",
                                    "(M,) probe positions, one per pattern")
            if item.dtype.kind not in "iuf":
                raise _hdf5_problem(product_file, f"dataset '{name}' has dtype {item.dtype}",
                                    "numbers")
            lengths[name] = int(item.shape[0])
        if len(set(lengths.values())) != 1:
            raise _hdf5_problem(product_file, "the position datasets differ in length "
                                f"({', '.join(f'{k}: {v}' for k, v in lengths.items())})",
                                "one index, x and y per position")
        for name in ("probe", "object"):
            _dataset(handle, product_file, name, expected_product)
        positions = lengths["probe_position_indexes"]
    if positions != count:
        raise ValueError(
            f"{diffraction_file} dataset 'patterns' holds {count} patterns but {product_file} "
            f"dataset 'probe_position_indexes' holds {positions} positions; expected one position "
            "per pattern (are both files from the same scan?)"
        )


def _read_with_ptychodus(path: Path, load: Any) -> Any:
    """``load(path)``; a failure (e.g. truncated data blocks) becomes a ValueError naming the file."""
    try:
        return load(path)
    except (KeyError, OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: cannot be read by Ptychodus ({type(exc).__name__}: {exc}); "
                         "the file may be truncated or not written by Ptychodus") from exc


def _load_hdf5_pair(diffraction_file: Path, product_file: Path) -> ScanData:
    """The batch pair, with the patterns read a batch at a time rather than loaded up front.

    Patterns are paired with positions by Ptychodus's own ``prepare_reconstruct_input`` (run
    on the pattern offsets, not the patterns). Where the patterns are then read from depends on
    their size and the file's chunks (measured: docs/performance.md, "Large scans: memory"):

    * no larger than the HDF5 chunk cache (a few hundred MB): their stored values, in their own
      dtype, are held in memory (what the chunk cache would hold anyway; random access through
      h5py costs as much as a refinement step per pattern);
    * larger, with chunks that tile many patterns (h5py's automatic chunks, as Ptychodus writes
      them): copied once, in storage order, into a raw scratch file, because reading one pattern
      would decompress a whole row of chunks;
    * larger, with whole-frame chunks or contiguous: read from ``diffraction.h5`` itself, which
      stays open while the scan is used.
    """
    from ptychodus.api.io import load_product

    _check_hdf5_pair(diffraction_file, product_file)
    indexes, bad, source = _open_diffraction(diffraction_file)
    product = _read_with_ptychodus(product_file, load_product)
    rows, paired = _pair_by_index(indexes, product)
    stack = DiffractionPatterns(source, holds="counts", bad_pixels=bad, rows=rows)
    try:
        if stack.stored_nbytes <= source.cache_bytes:
            stack = DiffractionPatterns(stack.raw(slice(None)), holds="counts", bad_pixels=bad)
            source.close()
        elif source.tiles_patterns:
            logger.info("%s: 'patterns' is chunked in tiles of %d patterns (%s); copying the %.2f GiB "
                        "once into a raw temporary file for reading by pattern", diffraction_file,
                        source.chunks[0], "x".join(map(str, source.chunks)), stack.stored_nbytes / 2**30)
            stack = stage(stack)
            source.close()
        return _scan_from_product(paired, stack, bad)
    except OSError as exc:
        raise ValueError(f"{diffraction_file}: the diffraction patterns cannot be read ({exc}); the "
                         "file may be truncated or not written by Ptychodus") from exc


def _open_diffraction(path: Path) -> tuple[np.ndarray, np.ndarray, HDF5Patterns]:
    """``(indexes, bad_pixels, patterns)`` of a checked diffraction.h5; the patterns stay there."""
    try:
        with _open_hdf5(path, "Ptychodus's diffraction.h5") as handle:
            indexes = np.asarray(handle["indexes"][()])
            bad = np.asarray(handle["bad_pixels"][()], dtype=bool)
        return indexes, bad, HDF5Patterns(path, "patterns")
    except (KeyError, OSError) as exc:
        raise ValueError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); the file may be "
                         "truncated or not written by Ptychodus") from exc


def _pair_by_index(indexes: np.ndarray, product: Any) -> tuple[np.ndarray, Any]:
    """``(rows, product)``: the diffraction rows Ptychodus pairs with positions, and the product
    with those positions, from ``prepare_reconstruct_input`` given each row's offset as its
    "pattern" (so the pairing rules, averaging and interpolation are Ptychodus's own)."""
    from ptychodus.api.assemble import AssembledDiffractionData
    from ptychodus.api.geometry import PixelGeometry
    from ptychodus.api.reconstruct import prepare_reconstruct_input

    offsets = np.arange(indexes.shape[0], dtype=np.int64).reshape(-1, 1, 1)
    placeholder = AssembledDiffractionData(indexes, offsets, PixelGeometry(width_m=1.0, height_m=1.0),
                                           np.zeros((1, 1), dtype=bool))
    try:
        ri = prepare_reconstruct_input(placeholder, product)
    except ValueError as exc:
        raise ValueError(f"the patterns cannot be paired with the product's positions: {exc}") from exc
    return np.asarray(ri.diffraction_patterns).reshape(-1), ri.product


def scan_from_reconstruct_input(ri: Any) -> ScanData:
    """Convert a Ptychodus ``ReconstructInput`` (patterns paired with positions by index).

    Positions come from the object geometry's centred-pixel mapping, the probe is the
    first incoherent mode without OPR, the object is layer 0. The patterns stay Ptychodus's
    array (no copy); bad pixels (True = bad) read as 0 and are kept as the loss mask.
    """
    bad = None if ri.bad_pixels is None else np.asarray(ri.bad_pixels, dtype=bool)
    patterns = np.asarray(ri.diffraction_patterns)
    if patterns.ndim != 3:
        raise ValueError(
            f"diffraction patterns must be a 3-D array (M, N, N) of counts; got shape {patterns.shape}")
    if patterns.dtype.kind not in "biuf":
        raise ValueError(f"diffraction patterns must be real numbers; got dtype {patterns.dtype}")
    if bad is not None and bad.shape != patterns.shape[1:]:
        raise ValueError(f"bad_pixels must have the pattern shape {patterns.shape[1:]}; got {bad.shape}")
    return _scan_from_product(ri.product, DiffractionPatterns(patterns, holds="counts", bad_pixels=bad), bad)


def _scan_from_product(product: Any, patterns: DiffractionPatterns, bad: np.ndarray | None) -> ScanData:
    """ScanData of patterns already paired with ``product``'s positions."""
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
    return ScanData(
        propagator_scale=fresnel_scale(product, patterns.N),
        amplitudes=patterns,
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


def load_training_npz(path: str | os.PathLike[str], *, diffraction: str = "auto") -> ScanData:
    """Load a Ptychodus training-data NPZ (``save_ptychopinn_training_data`` layout).

    ``diff3d`` holds raw counts of any dtype (kept as stored; square roots taken a batch at a
    time, in float64 where float32 would round), as Ptychodus writes them, or amplitudes (their square roots), as PtychoPINN's datasets hold them.
    ``diffraction="auto"`` decides from the values (`detect_diffraction`) and raises
    ``ValueError`` when they cannot decide; ``"counts"`` / ``"amplitudes"`` override. The
    reading used is logged.
    ``probeGuess`` may be 2-D or a 3-D mode stack (first mode used). ``xcoords``/``ycoords``
    are object pixels. With ``objectGuess`` absent, the canvas is the positions' bounding
    box plus N on each axis (as ``compute_object_geometry`` sizes it) and the positions are
    shifted so the scan centre sits at the canvas centre pixel ((W-1)/2, (H-1)/2); every
    N x N patch then lies inside the canvas.
    """
    path = Path(path)
    _check_convention(diffraction)
    if not path.is_file():
        raise FileNotFoundError(f"training-data NPZ not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable NumPy .npz archive ({exc})") from exc
    with data:
        counts = _require(data, "diff3d", path,
                          "(M, N, N) raw diffraction counts or their square roots")
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
    convention = _diffraction_convention(path, counts, bad, diffraction)
    try:
        return ScanData(
            amplitudes=DiffractionPatterns(counts, holds=convention, bad_pixels=bad),
            probe=probe,
            positions_px=positions,
            object_shape=shape,
            object_guess=guess,
            bad_pixels=None if bad is None else bad.astype(bool),
        )
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _diffraction_convention(path: Path, values: np.ndarray, bad: np.ndarray | None,
                            diffraction: str) -> str:
    """The reading of ``diff3d`` to use (given, or detected), logged; ValueError if undecidable."""
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{path}: 'diff3d' must hold real numbers (counts or amplitudes); got "
                         f"dtype {values.dtype}")
    if diffraction != "auto":
        logger.info("%s: reading 'diff3d' as %s (given)", path, _DESCRIBE[diffraction])
        return diffraction
    convention, reason = detect_diffraction(values, bad)
    if convention is None:
        raise ValueError(
            f"{path}: cannot tell whether 'diff3d' holds raw counts (Ptychodus's Export Training "
            f"Data) or amplitudes, their square roots (PtychoPINN's datasets): {reason}. Say "
            "which: --diffraction counts|amplitudes on the command line, or the setting "
            "[PtychoPINNPyTorchTraining] diffraction in Ptychodus"
        )
    logger.info("%s: reading 'diff3d' as %s (detected: %s; override with --diffraction or "
                "[PtychoPINNPyTorchTraining] diffraction)", path, _DESCRIBE[convention], reason)
    return convention


_DESCRIBE = {"counts": "raw counts", "amplitudes": "amplitudes (square roots of counts)"}


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
