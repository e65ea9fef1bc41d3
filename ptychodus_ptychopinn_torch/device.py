"""Choose the compute device and say why (CUDA when usable, CPU otherwise)."""

from __future__ import annotations

import logging

from .config import ExecutionConfig

__all__ = ["resolve_device", "lightning_accelerator"]

logger = logging.getLogger(__name__)


def resolve_device(execution: ExecutionConfig):
    """Return ``(torch.device, reason)`` for the execution config.

    ``auto`` falls back to the CPU with a warning when CUDA is unusable; an explicit ``cuda``
    (or ``gpu``) request without a usable GPU raises ``RuntimeError`` with install guidance.
    """
    import torch

    wants_cuda = execution.accelerator in ("cuda", "gpu")
    if execution.accelerator == "cpu":
        return torch.device("cpu"), "CPU requested (accelerator='cpu')"
    available = torch.cuda.is_available()
    if available:
        count = torch.cuda.device_count()
        index = execution.gpu_indices[0] if execution.gpu_indices else 0
        if index >= count:
            raise ValueError(
                f"GPU index {index} requested but only {count} CUDA device(s) are visible"
            )
        name = torch.cuda.get_device_name(index)
        how = "requested" if wants_cuda else "auto-selected"
        return torch.device("cuda", index), f"CUDA device {index} ({name}) {how}"
    build = torch.version.cuda
    why = (
        "torch was built without CUDA (a CPU-only build)" if build is None
        else f"torch {torch.__version__} (CUDA {build}) finds no usable GPU"
    )
    if wants_cuda:
        raise RuntimeError(
            f"CUDA was requested but {why}; install a CUDA build of torch on a machine with an "
            "NVIDIA GPU and driver, or use device 'auto' or 'cpu'"
        )
    logger.warning("No usable GPU (%s); running on the CPU, which is much slower", why)
    return torch.device("cpu"), f"CPU fallback: {why}"


def lightning_accelerator(execution: ExecutionConfig) -> tuple[str, list[int] | int]:
    """Lightning ``(accelerator, devices)`` matching `resolve_device`."""
    device, _ = resolve_device(execution)
    if device.type == "cuda":
        if execution.gpu_indices:
            return "gpu", list(execution.gpu_indices)
        return "gpu", execution.devices
    return "cpu", 1
