"""Choose the compute device and say why (CUDA when usable, CPU otherwise)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .config import ExecutionConfig

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device", "lightning_accelerator", "check_precision", "native_cpu_bf16"]

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


def check_precision(device: "torch.device", precision: str) -> None:
    """Refuse a precision the device cannot run and warn when it would only be slower.

    ``16-mixed`` needs CUDA. ``bf16-mixed`` runs on any CPU but is fast only where oneDNN has
    native bfloat16 instructions (AVX-512 BF16 or AMX; docs/performance.md, "bf16 on a CPU");
    elsewhere it is emulated, with no speed-up to show for its rounding.
    """
    if device.type == "cuda":
        return
    if precision == "16-mixed":
        raise ValueError(
            "precision '16-mixed' needs a CUDA GPU; on the CPU use '32-true' or 'bf16-mixed' "
            "(fast on CPUs with AVX-512 BF16 or AMX)"
        )
    if precision == "bf16-mixed" and not native_cpu_bf16():
        logger.warning(
            "precision 'bf16-mixed' on a CPU without native bfloat16 instructions is emulated: "
            "expect no speed-up over '32-true'"
        )


def native_cpu_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (True when torch cannot tell)."""
    import torch

    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return True if probe is None else bool(probe())
