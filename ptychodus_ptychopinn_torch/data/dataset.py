"""Normalisation, truth patches and the torch Dataset of grouped patterns.

Conventions (pinned by tests against ``ptychodus.api.simulate``):

* Patches are centred like Ptychodus's simulator: for a position (x, y) the integer
  window starts at ``floor(x - (N-1)/2)`` (Ptychodus uses ``int()``, identical for the
  non-negative starts of a valid canvas) and the sub-pixel remainder
  ``dx = x - (x_lower + (N-1)/2)`` is in [0, 1). Ptychodus simulates
  ``|F(shift(P, +dx, +dy) * O[window])|^2``; the object patch seen by the *unshifted*
  probe is therefore ``shift(O[window], -dx, -dy)`` (``|F|^2`` is shift invariant), which
  puts the position exactly at patch pixel ((N-1)/2, (N-1)/2).
* Supervised labels (``truth``) are the integer windows ``O[window]`` themselves
  (`extract_windows`): exactly the object part of the simulator's exit wave, while a
  sub-pixel Fourier shift of a sharp photograph is not exact (shifted labels stitch back to
  amplitude SSIM 0.97 on a brick photograph, and capped a supervised fit near 0.85;
  docs/performance.md, "Capacity"). The network then learns the sub-pixel remainder from the
  pattern, and its patches are stitched at their integer pixel without a shift.
* ``coords_relative = -(r_c - mean_c r_c)`` in (x, y) pixels (PtychoPINN's
  ``local_offset_sign = -1``).
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import torch
from torch.utils.data import Dataset

from .patterns import DiffractionPatterns
from .scan import ScanData, mean_total_intensity

__all__ = [
    "GroupedDataset",
    "extract_patches",
    "extract_windows",
    "fourier_shift_patches",
    "normalisation_factor",
    "split_groups",
]


def normalisation_factor(amplitudes: DiffractionPatterns | np.ndarray) -> float:
    """kappa such that ``kappa * amplitudes`` has mean total squared amplitude (N/2)**2.

    PtychoPINN's ``normalize_data`` target; computed in float64, a chunk of patterns at a time
    (a `DiffractionPatterns` stack answers from its checked pass), so uint-sized counts and
    large scans neither lose precision nor need a float copy.
    """
    amp = amplitudes if isinstance(amplitudes, DiffractionPatterns) else np.asarray(amplitudes)
    mean_energy = mean_total_intensity(amp)
    if not np.isfinite(mean_energy) or mean_energy <= 0.0:
        raise ValueError(
            f"cannot normalise diffraction data with mean total intensity {mean_energy}; "
            "expected finite data with some counts"
        )
    return float((amp.shape[-1] / 2.0) / np.sqrt(mean_energy))


def fourier_shift_patches(patches: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Shift each (N, N) patch by its own (dx, dy) pixels with a Fourier phase ramp.

    Same sign convention as ``ptychodus.api.fourier.fourier_shift_2d``: positive shifts
    move content towards larger column (x) / row (y) indices.
    """
    h, w = patches.shape[-2:]
    fy = scipy.fft.fftfreq(h)[None, :, None]
    fx = scipy.fft.fftfreq(w)[None, None, :]
    dx = np.asarray(dx, dtype=np.float64).reshape(-1, 1, 1)
    dy = np.asarray(dy, dtype=np.float64).reshape(-1, 1, 1)
    ramp = np.exp(-2j * np.pi * (fy * dy + fx * dx))
    spectrum = scipy.fft.fft2(patches, axes=(-2, -1))
    return scipy.fft.ifft2(spectrum * ramp, axes=(-2, -1))


def _windows(
    obj: np.ndarray, positions_px: np.ndarray, N: int, margin: int, dtype: type  # noqa: N803
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(windows (M, N + 2 margin, N + 2 margin), dx, dy)``: the integer windows around each (x, y)
    position, widened by ``margin`` on every side, and each position's sub-pixel remainder.

    The window of a position starts at ``floor(p - (N - 1) / 2)``; parts outside the canvas read as zero.
    """
    obj = np.asarray(obj)
    if obj.ndim != 2:
        raise ValueError(f"object must be a 2-D (H, W) array; got shape {obj.shape}")
    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    size = N + 2 * margin
    if pos.shape[0] == 0:
        empty = np.zeros(0, dtype=np.float64)
        return np.zeros((0, size, size), dtype=dtype), empty, empty
    r = (N - 1) / 2.0
    x_lower = np.floor(pos[:, 0] - r).astype(np.int64)
    y_lower = np.floor(pos[:, 1] - r).astype(np.int64)
    padded = np.pad(obj.astype(dtype), size)
    rows = np.clip((y_lower + size - margin)[:, None] + np.arange(size)[None, :], 0, padded.shape[0] - 1)
    cols = np.clip((x_lower + size - margin)[:, None] + np.arange(size)[None, :], 0, padded.shape[1] - 1)
    windows = padded[rows[:, :, None], cols[:, None, :]]  # far outside: clipped into the zero border
    return windows, pos[:, 0] - (x_lower + r), pos[:, 1] - (y_lower + r)


def extract_windows(obj: np.ndarray, positions_px: np.ndarray, N: int) -> np.ndarray:  # noqa: N803
    """(M, N, N) complex64 integer windows ``O[y_lower:y_lower+N, x_lower:x_lower+N]``, no shift.

    The supervised labels: the object part of the simulator's exit wave, exact for any object.
    Parts of a window outside the canvas read as zero.
    """
    return _windows(obj, positions_px, N, 0, np.complex64)[0]


def extract_patches(obj: np.ndarray, positions_px: np.ndarray, N: int) -> np.ndarray:  # noqa: N803
    """(M, N, N) complex64 object patches centred on each (x, y) position (see module doc).

    Parts of a window outside the canvas read as zero.
    """
    # Cut windows with a margin and shift those: the Fourier shift treats a window as
    # periodic, and the margin keeps the ringing from its edges out of the returned patch.
    margin = N // 4
    windows, dx, dy = _windows(obj, positions_px, N, margin, np.complex128)
    frac = (dx != 0.0) | (dy != 0.0)  # pixel-centred positions stay exact slices
    if np.any(frac):
        windows[frac] = fourier_shift_patches(windows[frac], -dx[frac], -dy[frac])
    return windows[:, margin : margin + N, margin : margin + N].astype(np.complex64)


class GroupedDataset(Dataset):
    """Groups of normalised amplitudes with their relative offsets (and, for supervised
    training, the label windows).

    The small per-group arrays are built once as contiguous tensors; the amplitudes are read
    from the scan's pattern stack when an item or batch is asked for (``sqrt`` of the stored
    counts, times kappa), so the dataset holds no copy of the patterns. Item ``i`` is a dict:
    ``amplitudes`` float32 (C, N, N) = kappa * amplitudes[groups[i]];
    ``coords_relative`` float32 (C, 2) = -(r_c - mean_c r_c), (x, y) pixels;
    ``positions`` float64 (C, 2) absolute (x, y); ``index`` int64 (C,) pattern indices;
    ``truth`` complex64 (C, N, N) integer object windows (`extract_windows`), only with ``with_truth=True``.
    """

    def __init__(
        self, scan: ScanData, groups: np.ndarray, kappa: float, *, with_truth: bool = False
    ) -> None:
        groups = np.asarray(groups)
        if groups.ndim != 2 or groups.shape[1] < 1:
            raise ValueError(f"groups must be a (G, C) integer array; got shape {groups.shape}")
        if groups.size and groups.dtype.kind not in "iu":
            raise ValueError(f"groups must hold integer pattern indices; got dtype {groups.dtype}")
        if groups.size and (groups.min() < 0 or groups.max() >= scan.num_positions):
            raise ValueError(
                f"groups reference pattern indices outside [0, {scan.num_positions - 1}]"
            )
        if not (np.isfinite(kappa) and kappa > 0):
            raise ValueError(f"kappa must be a positive finite number; got {kappa}")
        if with_truth and scan.object_guess is None:
            raise ValueError(
                "with_truth=True needs the scan's object_guess (the true object); it is None"
            )
        self.kappa = float(kappa)
        self.groups = torch.from_numpy(groups.astype(np.int64, copy=True))
        self.patterns: DiffractionPatterns = scan.amplitudes
        self.positions = torch.from_numpy(scan.positions_px.copy())
        group_pos = scan.positions_px[groups.astype(np.int64)]  # (G, C, 2)
        rel = -(group_pos - group_pos.mean(axis=1, keepdims=True))
        self.coords_relative = torch.from_numpy(rel.astype(np.float32))
        self.truth: torch.Tensor | None = None
        if with_truth:
            self.truth = torch.from_numpy(extract_windows(scan.object_guess, scan.positions_px, scan.N))

    def __len__(self) -> int:
        return int(self.groups.shape[0])

    def _amplitudes(self, index: torch.Tensor) -> torch.Tensor:
        """``kappa * amplitudes`` of the patterns in ``index`` (any shape), read now."""
        flat = self.patterns.amplitudes(index.numpy().reshape(-1))
        return torch.from_numpy(flat).mul_(self.kappa).reshape(*index.shape, *flat.shape[1:])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        index = self.groups[i]
        item = {
            "amplitudes": self._amplitudes(index),
            "coords_relative": self.coords_relative[i],
            "positions": self.positions[index],
            "index": index,
        }
        if self.truth is not None:
            item["truth"] = self.truth[index]
        return item

    def get_batch(self, indices: torch.Tensor | np.ndarray | list[int]) -> dict[str, torch.Tensor]:
        """The batched form of ``__getitem__`` (leading batch axis), without collation."""
        sel = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        index = self.groups[sel]
        batch = {
            "amplitudes": self._amplitudes(index),
            "coords_relative": self.coords_relative[sel],
            "positions": self.positions[index],
            "index": index,
        }
        if self.truth is not None:
            batch["truth"] = self.truth[index]
        return batch


def split_groups(
    groups: np.ndarray, validation_fraction: float, seed: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled split into (train, validation) groups.

    At least one validation group when ``validation_fraction > 0`` and G >= 2, and at
    least one training group always.
    """
    groups = np.asarray(groups)
    if groups.ndim != 2:
        raise ValueError(f"groups must be a (G, C) array; got shape {groups.shape}")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1); got {validation_fraction}")
    g = groups.shape[0]
    order = np.random.default_rng(seed).permutation(g)
    n_val = int(round(validation_fraction * g))
    if validation_fraction > 0 and g >= 2:
        n_val = min(max(n_val, 1), g - 1)
    else:
        n_val = 0
    return groups[order[n_val:]], groups[order[:n_val]]
