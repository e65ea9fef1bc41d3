"""Cheap, torch-free checks of training directories in the Ptychodus process.

`train` must fail at once, with a clear message, on a directory without data (instead of
after a 3-5 s child start), and it needs the pattern size N to build the configs before the
child loads anything. Both only read file headers.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy

__all__ = ["TRAINING_NPZ", "DIFFRACTION_H5", "PRODUCT_H5", "check_training_dir",
           "pattern_size"]

TRAINING_NPZ = "train_data.npz"
DIFFRACTION_H5 = "diffraction.h5"
PRODUCT_H5 = "product.h5"


def check_training_dir(path: Path) -> Path:
    """Return the data file `train` will read from ``path``; raise if there is none."""
    if not path.is_dir():
        raise FileNotFoundError(
            f"PtychoPINN (PyTorch) training input must be a directory; {path} "
            f"{'is a file' if path.exists() else 'does not exist'}"
        )

    npz = path / TRAINING_NPZ

    if npz.is_file():
        return npz

    diffraction, product = path / DIFFRACTION_H5, path / PRODUCT_H5

    if diffraction.is_file() and product.is_file():
        return diffraction

    others = sorted(p.name for p in path.glob("*.npz"))
    hint = f" Found {', '.join(others)}: rename the exported file to {TRAINING_NPZ}." \
        if others else " Use Processing > Export Training Data... and save it there as " \
        f"{TRAINING_NPZ}."
    raise FileNotFoundError(
        f"no PtychoPINN (PyTorch) training data in {path}: expected {TRAINING_NPZ} or "
        f"{DIFFRACTION_H5} + {PRODUCT_H5}.{hint}"
    )


def _npz_pattern_size(path: Path) -> int | None:
    with zipfile.ZipFile(path) as archive, archive.open("diff3d.npy") as handle:
        version = numpy.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, _ = numpy.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, _ = numpy.lib.format.read_array_header_2_0(handle)
    return int(shape[-1]) if len(shape) == 3 else None


def _h5_pattern_size(path: Path) -> int | None:
    import h5py

    with h5py.File(path, "r") as handle:
        patterns = handle.get("patterns")
        if isinstance(patterns, h5py.Dataset) and patterns.ndim == 3:
            return int(patterns.shape[-1])
    return None


def pattern_size(data_file: Path) -> int | None:
    """Pattern width N from a training NPZ or a diffraction HDF5 file; None if unreadable."""
    try:
        if data_file.suffix == ".npz":
            return _npz_pattern_size(data_file)
        return _h5_pattern_size(data_file)
    except Exception:  # the worker reports unreadable files with the full story
        return None
