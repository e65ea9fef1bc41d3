"""Jobs and events exchanged between the Ptychodus process and the worker.

A job is a small picklable dataclass (configs as plain dicts, paths, numpy arrays); the worker
answers with events, tuples whose first item is a tag. The same protocol serves the spawned
child and the in-process thread, so both modes behave alike. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "TAG_EPOCH",
    "TAG_ERROR",
    "TAG_LOG",
    "TAG_PROGRESS",
    "TAG_RESULT",
    "TAG_STARTED",
    "TAG_STOPPED",
    "ReconstructJob",
    "TrainJob",
    "Job",
]

TAG_STARTED = "started"  # ("started", pid)
TAG_LOG = "log"  # ("log", levelno, logger_name, message)
TAG_EPOCH = "epoch"  # ("epoch", {"epoch", "train_loss", "val_loss", "batches_done", ...})
TAG_PROGRESS = "progress"  # ("progress", batches_done, batches_total), throttled
TAG_RESULT = "result"  # ("result", dict)
TAG_STOPPED = "stopped"  # ("stopped",): the run ended early on request; nothing was saved
TAG_ERROR = "error"  # ("error", type_name, message, traceback_text)


@dataclass(frozen=True)
class TrainJob:
    """Train on the data in ``input_path`` and write the model to ``model_path``.

    ``configs`` maps "model", "training", "inference", "execution" to `config_to_dict` output;
    ``diffraction`` says what a training NPZ's ``diff3d`` holds (auto, counts, amplitudes).
    """

    input_path: Path
    model_path: Path
    configs: dict[str, dict[str, Any]]
    diffraction: str = "auto"


@dataclass(frozen=True)
class ReconstructJob:
    """Infer the object of ``scan`` with the model at ``model_path``.

    With ``model_path=None`` the PINN is first fitted to the scan itself (unsupervised).
    ``scan`` is a `ptychodus_ptychopinn_torch.data.scan.ScanData` built in the parent.
    """

    scan: Any
    model_path: Path | None
    configs: dict[str, dict[str, Any]]


Job = TrainJob | ReconstructJob
