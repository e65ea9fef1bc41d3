"""Fake worker entry points for the runner and lifecycle tests (loaded by file path).

They follow `ptychodus_ptychopinn_torch.integration.child.run_job`'s signature
``(job, emit, should_stop)`` and import nothing heavy, so a spawned child starts fast.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import time
import zipfile
from pathlib import Path

import numpy

from ptychodus_ptychopinn_torch import params
from ptychodus_ptychopinn_torch.config import (
    ModelConfig,
    TrainingConfig,
    config_from_dict,
    config_to_dict,
)


def epochs(job, emit, should_stop):
    """Three epochs, a log line, then a result."""
    logging.getLogger("ptychodus_ptychopinn_torch.fake").info("fake worker pid %d", os.getpid())
    logging.getLogger("some.other.library").warning("foreign logger line")
    for epoch in (1, 2, 3):
        emit("epoch", {"epoch": epoch, "num_epochs": 3, "train_loss": 1.0 / epoch,
                       "val_loss": None, "batches_done": epoch, "batches_total": 3})
    emit("result", {"value": 42})


def raise_value_error(job, emit, should_stop):
    raise ValueError("bad input: the probe is 32x32 but the patterns are 64x64")


def raise_custom(job, emit, should_stop):
    class WeirdError(Exception):
        pass

    raise WeirdError("something odd")


def die_after_epoch(job, emit, should_stop):
    """A child killed by the OOM killer: no sentinel, no error event."""
    emit("epoch", {"epoch": 1, "num_epochs": 9, "train_loss": 1.0, "val_loss": None,
                   "batches_done": 1, "batches_total": 9})
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


def batches_until_stopped(job, emit, should_stop):
    """Many short 'batches'; checks should_stop before each one, like the engine."""
    for batch in range(10_000):
        if should_stop():
            emit("stopped")
            return
        time.sleep(0.05)
        emit("progress", batch + 1, 10_000)


def ignore_stop(job, emit, should_stop):
    """A worker stuck in native code: it never looks at should_stop."""
    emit("progress", 1, 2)
    time.sleep(600)


def write_fake_model(path: Path, training: TrainingConfig | None = None, **payload) -> Path:
    """A model file the parent-side reader accepts (zip + data.pkl); it holds no weights."""
    training = training or TrainingConfig(model=ModelConfig(N=64, n_filters_scale=1), nepochs=1)
    data = {"format": "ptychodus-ptychopinn-torch/model", "format_version": 1,
            "training_config": config_to_dict(training),
            "history": {"train_loss": [0.5], "val_loss": [0.6]}, "provenance": {}}
    data.update(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(data))
    return path


def record_legacy_calls(job, emit, should_stop):
    """How many legacy-dict updates the parent made before the worker started (in-process)."""
    spy = params.update_legacy_dict
    if hasattr(spy, "calls"):  # the lifecycle tests' spy
        spy.worker_saw = len(spy.calls)
    if type(job).__name__ == "TrainJob":
        emit("epoch", {"epoch": 1, "num_epochs": 1, "train_loss": 0.5, "val_loss": 0.6,
                       "batches_done": 1, "batches_total": 1})
        training = config_from_dict(TrainingConfig, job.configs["training"])
        write_fake_model(Path(job.model_path), training)
        emit("result", {"model_path": str(job.model_path)})
    else:
        shape = job.scan.object_shape
        emit("epoch", {"epoch": 1, "num_epochs": 1, "train_loss": 0.5, "val_loss": None,
                       "batches_done": 1, "batches_total": 1})
        emit("result", {"object": numpy.full(shape, 0.5 + 0.5j, dtype=numpy.complex64),
                        "history": {"train_loss": [0.5]}})


FLAT_WARNING = ("the reconstruction fits the diffraction data worse than a flat object "
                "(Poisson NLL 0.9 vs 0.5 nats per pixel): 100% of the test's fake")


def _refined_result(job, emit, *, log_warning: bool) -> None:
    """Two fit epochs, then a result with three refinement passes, a refined probe, a warning."""
    for epoch, loss in ((1, 0.9), (2, 0.8)):
        emit("epoch", {"epoch": epoch, "num_epochs": 2, "train_loss": loss, "val_loss": None,
                       "batches_done": epoch, "batches_total": 2})
    if log_warning:  # as the engine does: the record reaches the parent before the result
        logging.getLogger("ptychodus_ptychopinn_torch.workflows.engine").warning(FLAT_WARNING)
    emit("result", {
        "object": numpy.full(job.scan.object_shape, 0.5 + 0.5j, dtype=numpy.complex64),
        "history": {"train_loss": [0.9, 0.8], "val_loss": []},
        "refinement": {"iterations": 3, "passes_run": 3, "losses": [0.5, 0.4, 0.3],
                       "network_loss": 0.6, "flat_loss": 0.25, "final_loss": 0.3,
                       "seconds": 0.1, "stopped_early": None, "scale": 2.0},
        "probe": (2 * numpy.asarray(job.scan.probe)).astype(numpy.complex64),
        "warnings": [FLAT_WARNING],
        "network_seconds": 0.05,
    })


def refined_result_logged(job, emit, should_stop):
    """A refined result whose warning the worker also logged (the engine's behaviour)."""
    _refined_result(job, emit, log_warning=True)


def refined_result_silent(job, emit, should_stop):
    """A refined result whose warning was never logged by the worker."""
    _refined_result(job, emit, log_warning=False)


def load_training_data(job, emit, should_stop):
    """Read the training data as the real worker does (`child._train`) and say what it read."""
    from ptychodus_ptychopinn_torch.data.io import load_scan

    scan = load_scan(job.input_path, diffraction=job.diffraction)
    logging.getLogger("ptychodus_ptychopinn_torch.fake").info(
        "loaded %d patterns, largest amplitude %.6g", scan.num_positions,
        float(scan.amplitudes[:].max()))


def _read_shared_patterns(job, emit):
    """Read every pattern the parent handed over, as the engine does (in batches)."""
    stack = job.scan.amplitudes
    total = sum(float(stack.amplitudes(numpy.arange(start, min(start + 7, len(stack)))).astype(
        numpy.float64).sum()) for start in range(0, len(stack), 7))
    emit("progress", 1, 2)
    return {"source": type(stack.source).__name__, "path": str(getattr(stack.source, "path", "")),
            "sum": total, "mean_counts": job.scan.mean_counts, "pid": os.getpid()}


def read_shared_patterns(job, emit, should_stop):
    """The patterns' file, what they sum to and the mean counts, as the worker sees them."""
    emit("result", _read_shared_patterns(job, emit))


def read_then_fail(job, emit, should_stop):
    _read_shared_patterns(job, emit)
    raise ValueError("the worker failed after reading the patterns")


def read_then_die(job, emit, should_stop):
    _read_shared_patterns(job, emit)
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)
