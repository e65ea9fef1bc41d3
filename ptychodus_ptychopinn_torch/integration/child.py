"""The worker side of a run: rebuild configs, update the legacy view, train or infer.

`run_job` runs in the spawned child (or in the in-process thread). Like every lifecycle hook
in the parent, it first rebuilds the config dataclasses and calls
``update_legacy_dict(params.cfg, config)`` before it touches any data. The engine (torch,
Lightning) is imported here, lazily, never in the Ptychodus process.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy

from .. import params
from ..config import (
    ExecutionConfig,
    InferenceConfig,
    TrainingConfig,
    config_from_dict,
    config_to_dict,
)
from .protocol import (
    TAG_EPOCH,
    TAG_PROGRESS,
    TAG_RESULT,
    TAG_STOPPED,
    Job,
    ReconstructJob,
    TrainJob,
)

__all__ = ["run_job"]

logger = logging.getLogger("ptychodus_ptychopinn_torch.integration.worker")

Emit = Callable[..., None]
PROGRESS_INTERVAL_S = 0.5


def run_job(job: Job, emit: Emit, should_stop: Callable[[], bool]) -> None:
    """Entry point of the worker (see `runner.DEFAULT_ENTRY_POINT`)."""
    if isinstance(job, TrainJob):
        _train(job, emit, should_stop)
    elif isinstance(job, ReconstructJob):
        _reconstruct(job, emit, should_stop)
    else:
        raise TypeError(f"unknown PtychoPINN (PyTorch) job {type(job).__name__}")


def _configs(job: Job) -> tuple[TrainingConfig, InferenceConfig, ExecutionConfig]:
    training = config_from_dict(TrainingConfig, job.configs["training"])
    inference = config_from_dict(InferenceConfig, job.configs["inference"])
    execution = config_from_dict(ExecutionConfig, job.configs["execution"])
    params.update_legacy_dict(params.cfg, training)
    params.update_legacy_dict(params.cfg, inference)
    return training, inference, execution


def _with_n(training: TrainingConfig, inference: InferenceConfig, n: int
            ) -> tuple[TrainingConfig, InferenceConfig]:
    """Use the data's pattern size (the parent may not have known it)."""
    if training.model.N == n:
        return training, inference
    model = dataclasses.replace(training.model, N=n)
    training = dataclasses.replace(training, model=model)
    inference = dataclasses.replace(inference, model=model)
    params.update_legacy_dict(params.cfg, training)
    return training, inference


class _Reporter:
    """Engine callbacks -> throttled events."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._last = 0.0

    def on_epoch(self, report: Any) -> None:
        self._emit(TAG_EPOCH, {
            "epoch": int(report.epoch),
            "num_epochs": int(report.num_epochs),
            "train_loss": float(report.train_loss),
            "val_loss": None if report.val_loss is None else float(report.val_loss),
            "batches_done": int(report.batches_done),
            "batches_total": int(report.batches_total),
        })

    def on_batch(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last >= PROGRESS_INTERVAL_S:
            self._last = now
            self._emit(TAG_PROGRESS, int(done), int(total))


def _fit(scan: Any, training: TrainingConfig, execution: ExecutionConfig, emit: Emit,
         should_stop: Callable[[], bool]) -> Any:
    """Train; None when stopped (a `TAG_STOPPED` event has been sent)."""
    from ..workflows import engine

    reporter = _Reporter(emit)
    try:
        return engine.train_model(scan, training, execution, on_epoch=reporter.on_epoch,
                                  on_batch=reporter.on_batch, should_stop=should_stop)
    except engine.TrainingCancelled:
        logger.info("training stopped on request; nothing was saved")
        emit(TAG_STOPPED)
        return None


def _plain(value: Any) -> Any:
    """Plain Python data only: the parent must never unpickle a torch object."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or type(value) in (bool, int, float, str):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return _plain(value.item())
    return str(value)


def _model_summary(bundle: Any) -> dict[str, Any]:
    return {
        "training_config": config_to_dict(bundle.training_config),
        "history": {str(k): [float(v) for v in vs] for k, vs in bundle.history.items()},
        "provenance": _plain(bundle.provenance),
    }


def _train(job: TrainJob, emit: Emit, should_stop: Callable[[], bool]) -> None:
    training, inference, execution = _configs(job)
    from ..data.io import load_scan

    scan = load_scan(job.input_path, diffraction=job.diffraction)
    training, inference = _with_n(training, inference, scan.N)
    bundle = _fit(scan, training, execution, emit, should_stop)

    if bundle is None or should_stop():
        if bundle is not None:
            emit(TAG_STOPPED)
        return

    from ..checkpoint import save_model

    bundle.provenance = _plain(bundle.provenance)  # e.g. torch.__version__ is no plain str
    path = save_model(bundle, job.model_path)
    logger.info("model written to %s", path)
    emit(TAG_RESULT, {"model_path": str(path), **_model_summary(bundle)})


def _reconstruct(job: ReconstructJob, emit: Emit, should_stop: Callable[[], bool]) -> None:
    training, inference, execution = _configs(job)
    scan = job.scan
    from ..workflows import engine

    if job.model_path is not None:
        from ..checkpoint import load_model

        bundle = load_model(job.model_path, map_location="cpu")
        params.update_legacy_dict(params.cfg, bundle.training_config)  # the model's view wins
    else:
        training, inference = _with_n(training, inference, scan.N)
        bundle = _fit(scan, training, execution, emit, should_stop)

        if bundle is None:
            return

    inference = dataclasses.replace(inference, model=bundle.model_config)
    params.update_legacy_dict(params.cfg, inference)
    reporter = _Reporter(emit)

    try:
        result = engine.reconstruct_object(bundle, scan, inference, execution,
                                           on_batch=reporter.on_batch, should_stop=should_stop)
    except engine.TrainingCancelled:
        emit(TAG_STOPPED)
        return

    emit(TAG_RESULT, {"object": result.object, **_model_summary(bundle),
                      **_reconstruction_summary(result)})


def _reconstruction_summary(result: Any) -> dict[str, Any]:
    """The refinement of a `Reconstruction` as plain data (numpy arrays, floats, strings).

    ``refinement`` is None when the engine ran no refinement step; ``probe`` is the refined
    probe (complex64 numpy) or None; ``warnings`` are the engine's warnings, which the parent
    shows in the Ptychodus log.
    """
    summary = result.refinement
    refinement = None
    if summary is not None:
        refinement = {
            "iterations": int(summary.iterations),
            "passes_run": int(summary.passes_run),
            "losses": [float(v) for v in summary.losses],
            "network_loss": float(summary.network_loss),
            "flat_loss": float(summary.flat_loss),
            "final_loss": float(summary.final_loss),
            "seconds": float(summary.seconds),
            "stopped_early": None if summary.stopped_early is None else str(summary.stopped_early),
            "scale": float(summary.scale),
        }
    probe = None if result.probe is None else numpy.asarray(result.probe, dtype=numpy.complex64)
    network_seconds = result.network_seconds
    return {
        "refinement": refinement,
        "probe": probe,
        "warnings": [str(w) for w in result.warnings],
        "network_seconds": None if network_seconds is None else float(network_seconds),
    }
