"""ScanData: one validated, numpy-only description of a ptychography scan.

Every input route (Ptychodus ``ReconstructInput``, training-data NPZ, batch HDF5 files)
ends here, so the engine sees one layout and every malformed input fails early with a
message that names the problem and the expected form. The patterns stay in their stored form
(`patterns.DiffractionPatterns`: counts or amplitudes, in memory or in a file) and become
float32 amplitudes a batch at a time. No torch import in this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .patterns import DiffractionPatterns

__all__ = ["DiffractionPatterns", "ScanData", "amplitudes_from_counts", "mean_total_intensity"]


def mean_total_intensity(amplitudes: Any, *, chunk: int = 1024) -> float:
    """Mean over patterns of ``sum(amplitude**2)``, in float64, a chunk of patterns at a time
    (a float64 copy of a 10^5-pattern scan would need 4x its memory at once). A
    `DiffractionPatterns` answers from its one checked pass."""
    if isinstance(amplitudes, DiffractionPatterns):
        return amplitudes.mean_total_intensity()
    amp = np.asarray(amplitudes)
    if amp.ndim != 3 or amp.shape[0] == 0:
        raise ValueError(f"amplitudes must be a non-empty (M, N, N) array; got shape {amp.shape}")
    total = 0.0
    for start in range(0, amp.shape[0], chunk):
        block = amp[start : start + chunk].astype(np.float64)
        total += float(np.sum(block * block))
    return total / amp.shape[0]


def amplitudes_from_counts(counts: Any, bad_pixels: np.ndarray | None = None) -> np.ndarray:
    """Return float32 ``sqrt(counts)`` with bad pixels zeroed, for a whole in-memory stack.

    Large integer counts (uint32 detectors included) take the square root in float64, a batch
    at a time (`DiffractionPatterns`), so they neither overflow nor lose precision and no float64
    copy of the stack is made. Bad pixels (True = bad) may hold anything; every other pixel must
    be finite and >= 0. The engine reads a `DiffractionPatterns` batch by batch instead.
    """
    counts = np.asarray(counts)
    if counts.ndim != 3:
        raise ValueError(
            f"diffraction patterns must be a 3-D array (M, N, N) of counts; got shape {counts.shape}"
        )
    if counts.dtype.kind not in "biuf":
        raise ValueError(f"diffraction patterns must be real numbers; got dtype {counts.dtype}")
    return np.asarray(DiffractionPatterns(counts, holds="counts", bad_pixels=bad_pixels).check())


@dataclass(frozen=True, eq=False)
class ScanData:
    """A scan in engine layout (see docs/architecture.md).

    amplitudes:   a `DiffractionPatterns` stack (M, N, N) that reads as float32 sqrt(counts),
                  bad pixels 0 (``amplitudes[i]``, ``amplitudes.amplitudes(indices)``); given
                  as one, or as a float array of amplitudes, which is wrapped without a copy.
    probe:        (N, N) complex64, first incoherent mode without OPR.
    positions_px: (M, 2) float64, columns (x, y) in object pixels, Ptychodus centred-pixel
                  convention (the probe centre, patch pixel (N-1)/2, sits at object (x, y)).
    object_shape: (H, W) of the object canvas.
    object_guess: (H, W) complex64 truth / initial object, or None.
    bad_pixels:   (N, N) bool, True = bad (masked out of the loss), or None.
    propagator_scale: amplitude factor of the host's far-field propagator relative to the
                  orthonormal FFT (``counts = |c F_ortho(P O)|^2``), or None when unknown.

    Structural checks run on construction; configuration-dependent checks (N, gridsize,
    neighbour count) run in :meth:`validate`; the values of every pattern are checked (finite,
    >= 0) in one chunked pass that also measures the mean intensity. Inputs are converted to
    the dtypes above; the patterns read 0 at bad pixels (the caller's array is never modified).
    """

    amplitudes: DiffractionPatterns
    probe: np.ndarray
    positions_px: np.ndarray
    object_shape: tuple[int, int]
    object_guess: np.ndarray | None = None
    bad_pixels: np.ndarray | None = None
    propagator_scale: float | None = None

    def __post_init__(self) -> None:
        amplitudes = self._check_amplitudes(self.amplitudes)
        m, n = amplitudes.shape[0], amplitudes.shape[1]
        probe = self._check_probe(self.probe, n)
        positions = self._check_positions(self.positions_px, m)
        shape = self._check_object_shape(self.object_shape)
        self._check_inside(positions, shape)
        guess = self._check_object_guess(self.object_guess, shape)
        bad = self._check_bad_pixels(self.bad_pixels, n)
        if self.propagator_scale is not None:
            scale = float(self.propagator_scale)
            if not np.isfinite(scale) or scale <= 0:
                raise ValueError(f"propagator_scale must be a positive number or None; got {self.propagator_scale!r}")
            object.__setattr__(self, "propagator_scale", scale)
        if bad is not None and amplitudes.bad_pixels is not None:
            bad = bad | amplitudes.bad_pixels
        elif bad is None and amplitudes.bad_pixels is not None:
            bad = amplitudes.bad_pixels.copy()
        amplitudes = amplitudes.with_bad_pixels(bad).check()
        object.__setattr__(self, "amplitudes", amplitudes)
        object.__setattr__(self, "probe", probe)
        object.__setattr__(self, "positions_px", positions)
        object.__setattr__(self, "object_shape", shape)
        object.__setattr__(self, "object_guess", guess)
        object.__setattr__(self, "bad_pixels", bad)

    # ------------------------------------------------------------------ properties
    @property
    def N(self) -> int:  # noqa: N802 - PtychoPINN's name for the pattern size
        """Pattern (and probe) side length in pixels."""
        return int(self.amplitudes.shape[-1])

    @property
    def num_positions(self) -> int:
        return int(self.amplitudes.shape[0])

    @property
    def mean_counts(self) -> float:
        """Mean over patterns of the total counts (good pixels only), in float64."""
        return self.amplitudes.mean_total_intensity()

    # ------------------------------------------------------------------ validation
    def validate(self, *, N: int | None = None, gridsize: int = 1, neighbor_count: int = 4) -> None:  # noqa: N803
        """Check the scan against a model configuration; raise ValueError naming the problem."""
        if N is not None and self.N != N:
            raise ValueError(
                f"diffraction patterns are {self.N}x{self.N} but the model is configured for "
                f"N={N}; expected patterns of shape (M, {N}, {N}) (crop or bin the data, or set N={self.N})"
            )
        if gridsize < 1:
            raise ValueError(f"gridsize must be >= 1; got {gridsize}")
        channels = gridsize * gridsize
        if self.num_positions < channels:
            raise ValueError(
                f"the scan has {self.num_positions} positions but gridsize={gridsize} needs at "
                f"least gridsize**2={channels} positions per group"
            )
        if gridsize > 1:
            if neighbor_count < channels:
                raise ValueError(
                    f"neighbor_count={neighbor_count} is smaller than gridsize**2={channels}; "
                    "expected neighbor_count >= gridsize**2"
                )
            if self.num_positions <= neighbor_count:
                raise ValueError(
                    f"the scan has {self.num_positions} positions but grouping with "
                    f"neighbor_count={neighbor_count} needs more than {neighbor_count} "
                    f"(at least {neighbor_count + 1})"
                )

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_amplitudes(value: Any) -> DiffractionPatterns:
        if value is None:
            raise ValueError("amplitudes are missing; expected an (M, N, N) float array")
        if isinstance(value, DiffractionPatterns):
            shape, dtype = value.shape, value.stored_dtype
        else:
            value = np.asarray(value)
            shape, dtype = value.shape, value.dtype
        if len(shape) != 3:
            raise ValueError(
                f"diffraction amplitudes must be a 3-D array (M, N, N); got shape {shape}"
            )
        if shape[0] == 0:
            raise ValueError("the scan is empty: it has no diffraction patterns (expected M >= 1)")
        if shape[1] != shape[2]:
            raise ValueError(
                f"diffraction patterns must be square (M, N, N); got {shape[1]}x{shape[2]} "
                f"(shape {shape})"
            )
        if shape[1] == 0:
            raise ValueError(f"diffraction patterns are empty; got shape {shape}")
        if dtype.kind not in "biuf":
            raise ValueError(f"amplitudes must be real numbers; got dtype {dtype}")
        if isinstance(value, DiffractionPatterns):
            return value
        return DiffractionPatterns(np.ascontiguousarray(value), holds="amplitudes")

    @staticmethod
    def _check_probe(value: Any, n: int) -> np.ndarray:
        if value is None:
            raise ValueError(f"the probe is missing; expected a complex ({n}, {n}) array")
        probe = np.asarray(value)
        if probe.ndim != 2 or probe.shape != (n, n):
            raise ValueError(
                f"probe shape {probe.shape} does not match the diffraction patterns; "
                f"expected a 2-D ({n}, {n}) array (the pattern size)"
            )
        if probe.dtype.kind not in "biufc":
            raise ValueError(f"probe must be numeric (complex); got dtype {probe.dtype}")
        probe = np.ascontiguousarray(probe, dtype=np.complex64)
        if not np.all(np.isfinite(probe)):
            raise ValueError("probe contains NaN or infinite values")
        if not np.any(probe):
            raise ValueError("probe is all zeros; expected an illumination with non-zero power")
        return probe

    @staticmethod
    def _check_positions(value: Any, m: int) -> np.ndarray:
        if value is None:
            raise ValueError(f"positions are missing; expected an ({m}, 2) array of (x, y) pixels")
        pos = np.asarray(value, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise ValueError(f"positions_px must have shape (M, 2) with columns (x, y); got {pos.shape}")
        if pos.shape[0] != m:
            raise ValueError(
                f"the scan has {m} diffraction patterns but {pos.shape[0]} positions; "
                "expected one position per pattern"
            )
        if not np.all(np.isfinite(pos)):
            raise ValueError("positions contain NaN or infinite values")
        return np.ascontiguousarray(pos)

    @staticmethod
    def _check_object_shape(value: Any) -> tuple[int, int]:
        try:
            h, w = (int(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"object_shape must be (H, W); got {value!r}") from None
        if h < 1 or w < 1:
            raise ValueError(f"object_shape must be positive (H, W); got {(h, w)}")
        return (h, w)

    @staticmethod
    def _check_inside(pos: np.ndarray, shape: tuple[int, int]) -> None:
        h, w = shape
        x, y = pos[:, 0], pos[:, 1]
        outside = (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)
        if np.any(outside):
            k = int(np.argmax(outside))
            raise ValueError(
                f"{int(outside.sum())} scan positions lie outside the object canvas "
                f"(first: index {k} at x={x[k]:.3f}, y={y[k]:.3f}); expected 0 <= x <= {w - 1} "
                f"and 0 <= y <= {h - 1} for an object of shape (H, W)={shape}"
            )

    @staticmethod
    def _check_object_guess(value: Any, shape: tuple[int, int]) -> np.ndarray | None:
        if value is None:
            return None
        guess = np.asarray(value)
        if guess.shape != shape:
            raise ValueError(
                f"object_guess shape {guess.shape} does not match object_shape {shape}; "
                "expected a 2-D (H, W) complex array"
            )
        if guess.dtype.kind not in "biufc":
            raise ValueError(f"object_guess must be numeric (complex); got dtype {guess.dtype}")
        return np.ascontiguousarray(guess, dtype=np.complex64)

    @staticmethod
    def _check_bad_pixels(value: Any, n: int) -> np.ndarray | None:
        if value is None:
            return None
        bad = np.asarray(value)
        if bad.shape != (n, n):
            raise ValueError(
                f"bad_pixels shape {bad.shape} does not match the patterns; expected a ({n}, {n}) "
                "boolean mask (True = bad)"
            )
        return np.ascontiguousarray(bad, dtype=bool)
