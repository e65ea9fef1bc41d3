"""PtychoPINN-compatible workflow entry points (``ptycho_torch.workflows.components`` names).

Code written against PtychoPINN's PyTorch workflows calls these three functions; they keep
PtychoPINN's signatures and its CONFIG-001 contract (``update_legacy_dict(params.cfg, config)``
with the dataclass, before anything else happens, so the legacy ``params.cfg`` view is
consistent), and run on this package's engine.

Differences from PtychoPINN, all deliberate:

- the model is one ``model.ckpt`` file (`checkpoint.save_model`), not ``wts.h5.zip``;
- stitching is Fourier-exact (integer placement plus a Fourier sub-pixel shift, weighted by the
  probe intensity) over the whole patch, so ``M`` (PtychoPINN's central crop size) is accepted
  for signature compatibility and validated but does not change the result;
- ``flip_x`` / ``flip_y`` / ``transpose`` reorient the stitched canvas (flip columns, flip rows,
  swap axes; applied as transpose, then flips) instead of patches and offsets; they require
  ``do_stitching=True``, and ``do_stitching=True`` requires test data: nothing is ignored
  silently.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import params
from ..config import ExecutionConfig, InferenceConfig, TrainingConfig

if TYPE_CHECKING:
    from ..data.scan import ScanData

__all__ = [
    "MODEL_FILE_NAME",
    "run_cdi_example_torch",
    "train_cdi_model_torch",
    "load_inference_bundle_torch",
]

logger = logging.getLogger(__name__)

MODEL_FILE_NAME = "model.ckpt"


def _require_training_config(config: Any) -> None:
    """Reject dicts and other configs before they reach the legacy view."""
    if not isinstance(config, TrainingConfig):
        raise TypeError(
            f"config must be a TrainingConfig dataclass, got {type(config).__name__}; "
            "build TrainingConfig(model=ModelConfig(...), ...) instead of passing a dict"
        )


def _as_scan(data: Any, what: str) -> ScanData:
    """A `ScanData` from a `ScanData` or a path `load_scan` accepts."""
    from ..data.io import load_scan
    from ..data.scan import ScanData

    if isinstance(data, ScanData):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_scan(data)
    raise TypeError(
        f"{what} must be a ScanData or a path to an NPZ file or a data directory, "
        f"got {type(data).__name__}"
    )


def _check_orientation(flip_x: Any, flip_y: Any, transpose: Any, M: Any, do_stitching: bool) -> None:  # noqa: N803
    for name, value in (("flip_x", flip_x), ("flip_y", flip_y), ("transpose", transpose),
                        ("do_stitching", do_stitching)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if isinstance(M, bool) or not isinstance(M, (int, np.integer)) or M <= 0:
        raise ValueError(f"M must be a positive integer (PtychoPINN's stitching crop), got {M!r}")
    if (flip_x or flip_y or transpose) and not do_stitching:
        raise ValueError(
            "flip_x, flip_y and transpose orient the stitched object; they need do_stitching=True"
        )


def _orient(canvas: np.ndarray, *, flip_x: bool, flip_y: bool, transpose: bool) -> np.ndarray:
    """Transpose, then flip columns (x) and rows (y) of the stitched canvas."""
    if transpose:
        canvas = canvas.T
    if flip_x:
        canvas = canvas[:, ::-1]
    if flip_y:
        canvas = canvas[::-1, :]
    return np.ascontiguousarray(canvas)


def train_cdi_model_torch(
    train_data: Any,
    test_data: Any,
    config: TrainingConfig,
    execution_config: ExecutionConfig | None = None,
) -> dict[str, Any]:
    """Train a model; ``test_data`` (if given) is the validation set.

    Returns a dict with ``history`` (``train_loss``, ``val_loss`` lists; ``val_loss`` is None
    when no validation ran), ``models`` (``diffraction_to_obj``: the trained network),
    ``bundle`` (the `ModelBundle`), ``intensity_scale`` and the scans used
    (``train_container``, ``test_container``).
    """
    _require_training_config(config)
    params.update_legacy_dict(params.cfg, config)
    from .engine import train_model

    train_scan = _as_scan(train_data, "train_data")
    test_scan = None if test_data is None else _as_scan(test_data, "test_data")
    execution = execution_config if execution_config is not None else ExecutionConfig()
    bundle = train_model(train_scan, config, execution, validation_scan=test_scan)
    intensity_scale = float(bundle.constants.intensity_scale)
    params.cfg["intensity_scale"] = intensity_scale
    val_loss = list(bundle.history.get("val_loss", []))
    return {
        "history": {
            "train_loss": list(bundle.history.get("train_loss", [])),
            "val_loss": val_loss or None,
        },
        "models": {"diffraction_to_obj": bundle.network},
        "bundle": bundle,
        "intensity_scale": intensity_scale,
        "train_container": train_scan,
        "test_container": test_scan,
    }


def run_cdi_example_torch(
    train_data: Any,
    test_data: Any,
    config: TrainingConfig,
    flip_x: bool = False,
    flip_y: bool = False,
    transpose: bool = False,
    M: int = 20,  # noqa: N803 - PtychoPINN's name
    do_stitching: bool = False,
    execution_config: ExecutionConfig | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """Train, optionally stitch the test scan, save the model; PtychoPINN's one-call workflow.

    Returns ``(amplitude, phase, results)``: float32 2-D arrays of the stitched test object
    (None without stitching) and the `train_cdi_model_torch` results plus, when stitched,
    ``reconstruction`` (the engine's `Reconstruction`) and ``stitched_obj`` (the oriented complex
    canvas), and ``model_path`` when the model was saved to ``config.output_dir/model.ckpt``.

    The stitched object is refined as `InferenceConfig` says by default (``refine_iterations``
    passes, probe fixed; PtychoPINN's signature has no inference config to change that);
    ``results["reconstruction"].refinement`` and ``.network_object`` say what refinement did.
    """
    _require_training_config(config)
    params.update_legacy_dict(params.cfg, config)
    _check_orientation(flip_x, flip_y, transpose, M, do_stitching)
    if do_stitching and test_data is None:
        raise ValueError("do_stitching=True needs test_data to stitch")

    results = train_cdi_model_torch(train_data, test_data, config, execution_config)
    bundle = results["bundle"]

    amplitude: np.ndarray | None = None
    phase: np.ndarray | None = None
    if do_stitching:
        from .engine import reconstruct_object

        execution = execution_config if execution_config is not None else ExecutionConfig()
        inference = InferenceConfig(
            model=config.model,
            test_data_file=config.test_data_file,
            neighbor_count=config.neighbor_count,
            subsample_seed=config.subsample_seed,
        )
        reconstruction = reconstruct_object(bundle, results["test_container"], inference, execution)
        canvas = _orient(reconstruction.object, flip_x=bool(flip_x), flip_y=bool(flip_y),
                         transpose=bool(transpose))
        amplitude = np.abs(canvas).astype(np.float32)
        phase = np.angle(canvas).astype(np.float32)
        results["reconstruction"] = reconstruction
        results["stitched_obj"] = canvas

    if config.output_dir is not None:
        from ..checkpoint import save_model

        path = save_model(bundle, Path(config.output_dir) / MODEL_FILE_NAME)
        results["model_path"] = path
        logger.info("model saved to %s", path)
    return amplitude, phase, results


def _model_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.is_dir():
        candidate = path / MODEL_FILE_NAME
        if not candidate.is_file():
            raise FileNotFoundError(f"no {MODEL_FILE_NAME} in directory {path}")
        return candidate
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    return path


def load_inference_bundle_torch(
    bundle_dir: str | os.PathLike[str],
    model_name: str = "diffraction_to_obj",
    map_location: str = "cpu",
) -> tuple[Any, dict[str, Any]]:
    """Load a model (a ``.ckpt`` file or a directory holding ``model.ckpt``).

    Like PtychoPINN's, loading overwrites the legacy view with the model's stored configuration
    (``update_legacy_dict(params.cfg, <stored TrainingConfig>)``) and its ``intensity_scale``.
    Returns ``(network, dict(params.cfg))``; the network is in eval mode on ``map_location``.
    """
    if model_name != "diffraction_to_obj":
        raise ValueError(
            f"model_name {model_name!r} is not stored in this model file; only "
            "'diffraction_to_obj' (the object-predicting network) exists"
        )
    from ..checkpoint import load_model

    bundle = load_model(_model_file(bundle_dir), map_location=map_location)
    stored = bundle.training_config
    if stored.nphotons is None:  # "measured from the data": restore the value actually used
        stored = dataclasses.replace(stored, nphotons=float(bundle.constants.nphotons))
    params.update_legacy_dict(params.cfg, stored)
    params.cfg["intensity_scale"] = float(bundle.constants.intensity_scale)
    return bundle.network, dict(params.cfg)
