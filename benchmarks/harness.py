"""Shared measurement code for ``benchmarks/engine.py`` and ``benchmarks/suite.py``.

Everything here is device-agnostic: the device comes from the engine's `ExecutionConfig`
(``cpu`` or ``cuda``), CUDA work is synchronised before every clock read, and host and CUDA
memory are measured the same way on any machine. No timing thresholds live here: the
scripts record numbers, tests only check that they are positive and finite.

Conventions
-----------
* A *sample* of training is one group (``gridsize**2`` patterns); a *pattern* is one scan
  position. Inference reports scan positions per second (each position seeds one group).
* Wall seconds come from ``time.perf_counter``; CPU seconds (``time.process_time``) are
  recorded next to them because the shared CI/dev machines are often oversubscribed.
* Peak host memory is the resident-set high-water mark of this process (``VmHWM``, reset
  through ``/proc/self/clear_refs`` where the kernel allows it; else a 5 ms RSS sampling
  thread). Peak device memory is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import platform
import re
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ptychodus_ptychopinn_torch import __version__ as package_version
from ptychodus_ptychopinn_torch.checkpoint import ModelBundle, build_model
from ptychodus_ptychopinn_torch.config import ExecutionConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptychodus_ptychopinn_torch.data.dataset import GroupedDataset, normalisation_factor
from ptychodus_ptychopinn_torch.data.grouping import group_positions
from ptychodus_ptychopinn_torch.data.scan import ScanData
from ptychodus_ptychopinn_torch.device import resolve_device
from ptychodus_ptychopinn_torch.training import PtychoPINNModule
from ptychodus_ptychopinn_torch.workflows.engine import derive_constants, reconstruct_object, train_model

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
DOC = REPO / "docs" / "performance.md"
#: The precisions a benchmark can measure (16-mixed is left out: bf16 is the mixed precision used).
PRECISIONS = ("32-true", "bf16-mixed")

# Published dense peak figures (TFLOP/s) used for the fraction of peak on known GPUs.
GPU_SPEC_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16-mixed": 989.0, "32-true": 67.0, "tf32": 494.7},
    "H100": {"bf16-mixed": 989.0, "32-true": 67.0, "tf32": 494.7},
}


# ----------------------------------------------------------------------------- environment
def quiet_third_party_logs() -> None:
    """Silence Lightning's banners and the data-loader worker hints in benchmark output."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning.*")


def execution_config(device: str, precision: str = "32-true", inference_batch_size: int | None = None) -> ExecutionConfig:
    return ExecutionConfig(accelerator=device, precision=precision, inference_batch_size=inference_batch_size)


def torch_device(device: str) -> torch.device:
    return resolve_device(execution_config(device))[0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _distribution_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_info(device: torch.device) -> dict[str, Any]:
    """Versions, processor, threads, GPU and the load average (the noise caveat)."""
    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "lightning": _distribution_version("lightning"),
        "numpy": np.__version__,
        "package": package_version,
        "device": str(device),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    return info


def finish_info(info: dict[str, Any], start: float) -> None:
    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    info["wall_seconds"] = round(time.perf_counter() - start, 1)


# ----------------------------------------------------------------------------- memory
def _status_kib(key: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - neither /proc nor psutil
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark; False where unsupported (non-Linux, gVisor, ...)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 4096


@dataclass
class PeakMemory:
    """Context manager: peak host RSS and peak CUDA allocation during the block."""

    device: torch.device
    baseline_bytes: int = 0
    host_peak_bytes: int = 0
    cuda_peak_bytes: int | None = None
    method: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _sampled: int = 0

    def __enter__(self) -> "PeakMemory":
        self.baseline_bytes = current_rss_bytes()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        if _reset_hwm():
            self.method = "VmHWM"
        else:
            self.method = "sampled-5ms"
            self._sampled = self.baseline_bytes
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._sampled = max(self._sampled, current_rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.host_peak_bytes = max(self._sampled, current_rss_bytes())
        else:
            self.host_peak_bytes = (_status_kib("VmHWM") or 0) * 1024

    def as_dict(self) -> dict[str, Any]:
        mib = 2**20
        out: dict[str, Any] = {
            "host_peak_mib": round(self.host_peak_bytes / mib, 1),
            "host_baseline_mib": round(self.baseline_bytes / mib, 1),
            "host_above_baseline_mib": round(max(self.host_peak_bytes - self.baseline_bytes, 0) / mib, 1),
            "host_method": self.method,
        }
        if self.cuda_peak_bytes is not None:
            out["cuda_peak_mib"] = round(self.cuda_peak_bytes / mib, 1)
        return out


# ----------------------------------------------------------------------------- data
def synthetic_scan(num_positions: int, N: int, *, seed: int = 0, step_fraction: float = 0.125) -> ScanData:  # noqa: N803
    """A scan for speed and memory only: random amplitudes, a soft disk probe, a jittered grid.

    Positions lie on a square grid with step ``step_fraction * N`` pixels (plus sub-pixel
    jitter so the Fourier-shift stitching path runs) inside a canvas that holds every patch.
    """
    rng = np.random.default_rng(seed)
    side = int(math.ceil(math.sqrt(num_positions)))
    step = max(1.0, step_fraction * N)
    idx = np.arange(num_positions)
    xy = np.column_stack([idx % side, idx // side]).astype(np.float64) * step
    xy += rng.uniform(0.0, 1.0, size=xy.shape)
    margin = N / 2 + 2
    xy += margin
    extent = int(math.ceil(xy.max() + margin + 1))
    yy, xx = np.mgrid[:N, :N] - (N - 1) / 2.0
    r = np.hypot(xx, yy)
    probe = (1.0 / (1.0 + np.exp((r - N / 5) / 1.5))) * np.exp(1j * 0.002 * r**2)
    amplitudes = rng.random((num_positions, N, N), dtype=np.float32)
    amplitudes *= np.float32(10.0)
    return ScanData(amplitudes=amplitudes, probe=probe.astype(np.complex64), positions_px=xy,
                    object_shape=(extent, extent))


def training_config(N: int, gridsize: int, *, batch_size: int = 16, n_filters_scale: int = 2,  # noqa: N803
                    n_groups: int | None = None, nepochs: int = 1) -> TrainingConfig:
    model = ModelConfig(N=N, gridsize=gridsize, n_filters_scale=n_filters_scale)
    return TrainingConfig(model=model, batch_size=batch_size, nepochs=nepochs, n_groups=n_groups,
                          validation_fraction=0.0, neighbor_count=max(4, gridsize * gridsize))


def untrained_bundle(scan: ScanData, training: TrainingConfig) -> ModelBundle:
    """A model with the engine's constants for ``scan`` (speed does not depend on the weights)."""
    cfg = training.model
    groups = group_positions(scan.positions_px, gridsize=cfg.gridsize, n_groups=None,
                             neighbor_count=training.neighbor_count, seed=0, all_positions=True)
    constants = derive_constants(scan, training, groups)
    network = build_model(training, constants, scan.probe).eval()
    return ModelBundle(network=network, training_config=training, constants=constants,
                       probe=np.asarray(scan.probe, dtype=np.complex64))


@contextlib.contextmanager
def _timer(device: torch.device) -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    sync(device)
    w, c = time.perf_counter(), time.process_time()
    yield out
    sync(device)
    out["seconds"] = time.perf_counter() - w
    out["cpu_seconds"] = time.process_time() - c


# ----------------------------------------------------------------------------- training
def time_training_lightning(scan: ScanData, training: TrainingConfig, execution: ExecutionConfig, *,
                            warmup_batches: int, timed_batches: int) -> dict[str, Any]:
    """Samples/s through the real path: `train_model` (Lightning Trainer, DataLoader, Adam).

    One epoch of ``warmup + timed`` full batches (no validation); the clock runs between the end of batch
    ``warmup`` and the end of batch ``warmup + timed`` (per-batch callback, CUDA synchronised
    at those two points), so set-up, the first batches and the epoch end are excluded.
    """
    device = torch_device(execution.accelerator)
    batches = warmup_batches + timed_batches
    if scan.num_positions < batches * training.batch_size:
        raise ValueError(f"the scan needs at least {batches * training.batch_size} positions for "
                         f"{batches} batches of {training.batch_size}")
    training = _replace(training, n_groups=batches * training.batch_size, nepochs=1)
    stamps: dict[int, tuple[float, float]] = {}

    def on_batch(done: int, total: int) -> None:
        if done in (warmup_batches, warmup_batches + timed_batches):
            sync(device)
            stamps[done] = (time.perf_counter(), time.process_time())

    with PeakMemory(device) as memory:
        train_model(scan, training, execution, on_batch=on_batch)
    (w0, c0), (w1, c1) = stamps[warmup_batches], stamps[warmup_batches + timed_batches]
    samples = timed_batches * training.batch_size
    return {
        "method": "train_model (Lightning), per-batch clock",
        "samples": samples,
        "seconds": w1 - w0,
        "cpu_seconds": c1 - c0,
        "samples_per_s": samples / (w1 - w0),
        "patterns_per_s": samples * training.model.channels / (w1 - w0),
        "memory": memory.as_dict(),
    }


def time_training_loop(scan: ScanData, training: TrainingConfig, execution: ExecutionConfig, *,
                       warmup_batches: int, timed_batches: int) -> dict[str, Any]:
    """Samples/s of the bare optimisation step: model + engine loss + Adam in a plain loop.

    Same network, loss (`PtychoPINNModule.compute_loss`) and optimiser as Lightning uses, with
    batches cut directly from the `GroupedDataset` (no DataLoader, no Trainer); bf16-mixed runs
    under ``torch.autocast`` as Lightning does.
    """
    device = torch_device(execution.accelerator)
    cfg = training.model
    batches = warmup_batches + timed_batches
    n_groups = batches * training.batch_size
    groups = group_positions(scan.positions_px, gridsize=cfg.gridsize, n_groups=n_groups,
                             neighbor_count=training.neighbor_count, seed=0)
    constants = derive_constants(scan, training, groups)
    dataset = GroupedDataset(scan, groups, constants.kappa)
    module = PtychoPINNModule(build_model(training, constants, scan.probe), training).to(device)
    module.train()
    optimiser = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=training.learning_rate)
    autocast = execution.precision == "bf16-mixed"

    def step(i: int) -> None:
        sel = np.arange(i * training.batch_size, (i + 1) * training.batch_size) % len(dataset)
        batch = {k: v.to(device, non_blocking=True) for k, v in dataset.get_batch(sel).items()}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = module.compute_loss(batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    with PeakMemory(device) as memory:
        for i in range(warmup_batches):
            step(i)
        with _timer(device) as t:
            for i in range(warmup_batches, batches):
                step(i)
    samples = timed_batches * training.batch_size
    return {
        "method": "model + loss + Adam in a plain loop",
        "samples": samples,
        "seconds": t["seconds"],
        "cpu_seconds": t["cpu_seconds"],
        "samples_per_s": samples / t["seconds"],
        "patterns_per_s": samples * cfg.channels / t["seconds"],
        "memory": memory.as_dict(),
    }


def _replace(training: TrainingConfig, **changes: Any) -> TrainingConfig:
    import dataclasses

    return dataclasses.replace(training, **changes)


# ----------------------------------------------------------------------------- inference
def time_inference(bundle: ModelBundle, scan: ScanData, execution: ExecutionConfig) -> dict[str, Any]:
    """Scan positions/s of `reconstruct_object` (grouping, loading, network, stitching), with the
    physics refinement off (``refine_iterations=0``): the refinement's own speed is a number of
    passes, measured by the realistic benchmarks, not a rate of the network path.

    Also splits the time, from per-batch timestamps, into ``median_batch_seconds`` and
    ``setup_seconds`` (everything before the batch loop: validation, grouping, normalisation,
    dataset), which stay meaningful when other load on the machine inflates the total.
    """
    device = torch_device(execution.accelerator)
    inference = InferenceConfig(model=bundle.model_config, neighbor_count=max(4, bundle.model_config.channels),
                                refine_iterations=0)
    stamps: list[float] = []

    def on_batch(done: int, total: int) -> None:
        stamps.append(time.perf_counter())  # batches sync themselves (masked indexing in the stitcher)

    with PeakMemory(device) as memory, _timer(device) as t:
        start = time.perf_counter()
        result = reconstruct_object(bundle, scan, inference, execution, on_batch=on_batch)
    if not np.isfinite(result.object).all():
        raise FloatingPointError("reconstruction is not finite")
    m = scan.num_positions
    gaps = np.diff(stamps)
    median_batch = float(np.median(gaps)) if len(gaps) else float(stamps[0] - start)
    return {
        "patterns": m,
        "seconds": t["seconds"],
        "cpu_seconds": t["cpu_seconds"],
        "patterns_per_s": m / t["seconds"],
        "patches_per_s": m * bundle.model_config.channels / t["seconds"],
        "batches": len(stamps),
        "median_batch_seconds": median_batch,
        "setup_seconds": max(float(stamps[0] - start) - median_batch, 0.0) if stamps else 0.0,
        "memory": memory.as_dict(),
    }


def time_bare_generator(bundle: ModelBundle, scan: ScanData, execution: ExecutionConfig) -> dict[str, Any]:
    """The bound: the `Generator` alone, in ``torch.inference_mode``, on one resident batch.

    Runs as many batches (of the same size, last one partial) as `reconstruct_object` does for
    ``scan``, on a batch already on the device, so it holds exactly the convolutions.
    """
    device = torch_device(execution.accelerator)
    cfg = bundle.model_config
    batch_size = execution.inference_batch_size or max(64, bundle.training_config.batch_size)
    groups = group_positions(scan.positions_px, gridsize=cfg.gridsize, neighbor_count=max(4, cfg.channels),
                             seed=0, all_positions=True)[:batch_size]
    dataset = GroupedDataset(scan, groups, normalisation_factor(scan.amplitudes[:256]))
    x = dataset.get_batch(np.arange(len(dataset)))["amplitudes"].to(device)
    if x.shape[0] < batch_size:
        x = x.repeat((batch_size + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[:batch_size]
    generator = bundle.network.generator.to(device).eval()
    m = scan.num_positions
    sizes = [batch_size] * (m // batch_size) + ([m % batch_size] if m % batch_size else [])
    autocast = execution.precision == "bf16-mixed"
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
        generator(x[:2])
        with _timer(device) as t:
            for size in sizes:
                generator(x[:size])
    return {"patterns": m, "seconds": t["seconds"], "cpu_seconds": t["cpu_seconds"], "patterns_per_s": m / t["seconds"]}


def interleave(funcs: dict[str, Callable[[], dict[str, Any]]], repeats: int) -> dict[str, list[dict[str, Any]]]:
    """Run each function ``repeats`` times, alternating, so machine-load drift hits all alike."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in funcs}
    for _ in range(repeats):
        for name, func in funcs.items():
            out[name].append(func())
    return out


def best(runs: list[dict[str, Any]], key: str = "seconds") -> dict[str, Any]:
    """The fastest run (least disturbed by other load), with the median and all times attached."""
    ordered = sorted(runs, key=lambda r: r[key])
    chosen = dict(ordered[0])
    chosen["median_seconds"] = float(np.median([r[key] for r in runs]))
    chosen["all_seconds"] = [round(r[key], 4) for r in runs]
    return chosen


# ----------------------------------------------------------------------------- flops and peak
def generator_flops(config: ModelConfig, device: torch.device) -> int:
    """FLOPs (2 x MACs, counted by ``FlopCounterMode``) of one generator forward of one group."""
    from torch.utils.flop_counter import FlopCounterMode

    generator = build_model(TrainingConfig(model=config), _dummy_constants(config), np.ones((config.N, config.N),
                            np.complex64)).generator.to(device).eval()
    x = torch.ones(1, config.channels, config.N, config.N, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        generator(x)
    return int(counter.get_total_flops())


def training_flops(config: ModelConfig, device: torch.device) -> int:
    """FLOPs of one training step (forward + backward through the loss) of one group."""
    from torch.utils.flop_counter import FlopCounterMode

    training = TrainingConfig(model=config, neighbor_count=max(4, config.channels))
    module = PtychoPINNModule(build_model(training, _dummy_constants(config), np.ones((config.N, config.N),
                              np.complex64)), training).to(device)
    batch = {
        "amplitudes": torch.ones(1, config.channels, config.N, config.N, device=device),
        "coords_relative": torch.zeros(1, config.channels, 2, device=device),
    }
    counter = FlopCounterMode(display=False)
    with counter:
        module.compute_loss(batch).backward()
    return int(counter.get_total_flops())


def _dummy_constants(config: ModelConfig):
    from ptychodus_ptychopinn_torch.model.pinn import PhysicsConstants

    n = config.N
    return PhysicsConstants(N=n, kappa=1.0, nphotons=1e5, intensity_scale=math.sqrt(1e5) / (n / 2), probe_factor=1.0,
                            amp_max=1.0, canvas_size=n + 16)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, *, n: int | None = None,
                min_seconds: float = 1.0) -> float:
    """Measured GFLOP/s of a large square matrix product (the practical compute peak)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    try:
        for _ in range(2):
            a @ b
        sync(device)
        count, start = 0, time.perf_counter()
        while True:
            a @ b
            count += 1
            if count % 4 == 0 or device.type != "cuda":
                sync(device)
                elapsed = time.perf_counter() - start
                if elapsed >= min_seconds:
                    break
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2.0 * n**3 * count / elapsed / 1e9


def gpu_spec_tflops(device: torch.device) -> dict[str, float] | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, spec in GPU_SPEC_TFLOPS.items():
        if key in name:
            return spec
    return None


# ----------------------------------------------------------------------------- pty-chi
PTYCHI_PYTHON = REPO / ".venv-ptychi" / "bin" / "python"
PTYCHI_DRIVER = REPO / "benchmarks" / "ptychi_driver.py"
PTYCHI_SETUP = ('python3 -m venv .venv-ptychi && .venv-ptychi/bin/pip install torch==2.13.0 && '
                '.venv-ptychi/bin/pip install "ptychi==2.1.*" "torch==2.13.0" "torchvision==0.28.*"')


def ptychi_missing(python: Path) -> str | None:
    """Why pty-chi cannot run (no environment at ``python``), or None."""
    if Path(python).exists():
        return None
    return f"no pty-chi environment at {python}; create it from the repository root with: {PTYCHI_SETUP}"


def write_ptychi_scan(path: Path, sim: Any, scan: ScanData) -> Path:
    """The input NPZ of ``benchmarks/ptychi_driver.py`` for a `simulate_scan` result and its `ScanData`."""
    pixel = sim.product.object_.get_pixel_geometry()
    np.savez(path, patterns=np.asarray(sim.reconstruct_input.diffraction_patterns, dtype=np.float32),
             probe=scan.probe, positions_px=scan.positions_px, object_shape=np.asarray(scan.object_shape),
             pixel_size_m=pixel.width_m, wavelength_m=sim.product.metadata.photon_wavelength_m)
    return path


def run_ptychi_driver(npz: Path, out: Path, python: Path, device: torch.device, *, epochs: int,
                      snapshots: list[int] | tuple[int, ...] = (), snapshot_seconds: list[float] | tuple[float, ...] = (),
                      until_seconds: float | None = None, timeout: float = 3600.0) -> dict[str, Any]:
    """Run pty-chi LSQML in its own environment; return the driver's JSON summary.

    The snapshots and timings are in the NPZ ``out`` (see the driver's docstring). Raises
    ``RuntimeError`` with the tail of its output when the driver fails.
    """
    cmd = [str(python), str(PTYCHI_DRIVER), "--scan", str(npz), "--out", str(out), "--epochs", str(epochs),
           "--snapshots", ",".join(str(int(e)) for e in snapshots), "--device", device.type,
           "--threads", str(torch.get_num_threads())]
    if snapshot_seconds:
        cmd += ["--snapshot-seconds", ",".join(f"{float(t):.3f}" for t in snapshot_seconds)]
    if until_seconds is not None:
        cmd += ["--until-seconds", f"{float(until_seconds):.3f}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
        raise RuntimeError("pty-chi driver failed: " + " | ".join(tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


# ----------------------------------------------------------------------------- output
def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as strict JSON (non-finite floats become null), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def update_markdown(path: Path, key: str, body: str) -> Path:
    """Replace the text between ``<!-- key:start -->`` and ``<!-- key:end -->`` in ``path``.

    The section is appended (and the file created) when the markers are missing.
    """
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Performance\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def results_path(args: Any, name: str, device: torch.device) -> Path:
    """``<out>/<name>-<device>[-quick].json``: where a benchmark's results live, so that a quick
    run never overwrites the published file."""
    return args.out / f"{name}-{device.type}{'-quick' if args.quick else ''}.json"


def publish(doc: dict[str, Any], args: Any, name: str, device: torch.device,
            markdown: Callable[[dict[str, Any]], str]) -> Path:
    """Write ``<out>/<name>-<device>[-quick].json`` and, for a full run without ``--no-doc``,
    replace the ``name`` section of the doc with ``markdown(doc)``."""
    out = write_json(results_path(args, name, device), doc)
    print(f"wrote {out}")
    if not args.no_doc and not args.quick:
        update_markdown(args.doc, name, markdown(doc))
    return out


def read_results(path: Path, fresh: bool = False) -> dict[str, Any] | None:
    """The results document at ``path`` to merge a new run into; None with ``fresh``, when there
    is none, or when it cannot be read."""
    if fresh or not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def merge_entries(old: dict[str, Any], doc: dict[str, Any], sections: tuple[str, ...],
                  old_runs: list[dict[str, Any]], new_run: dict[str, Any]) -> tuple[dict[str, dict], list[dict]]:
    """Each of ``sections`` as ``old``'s entries updated by ``doc``'s (an entry run again replaces
    its earlier one), and the runs (machine records, matched by ``date_utc`` to each entry's
    ``run_date_utc``) that some entry still comes from: ``old_runs`` then ``new_run``."""
    merged = {s: {**old.get(s, {}), **doc[s]} for s in sections}
    used = {e.get("run_date_utc") for s in sections for e in merged[s].values()}
    runs = [r for r in old_runs if r.get("date_utc") != new_run.get("date_utc")] + [new_run]
    return merged, [r for r in runs if r.get("date_utc") in used]


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats get three significant figures."""
    def fmt(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            if not math.isfinite(v):
                return "n/a"
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ""
    load = info.get("load_average_start")
    load_text = f"; load average at start {load[0]:.1f}" if load else ""
    return (f"{info['date_utc']}: {info['cpu']} ({info['cpu_count']} cores, {info['torch_threads']} torch threads)"
            f"{gpu}; torch {info['torch']}, lightning {info['lightning']}, python {info['python']}{load_text}; "
            f"{info.get('wall_seconds', '?')} s wall.")


def add_common_arguments(parser: "argparse.ArgumentParser", name: str, *, quick_help: str,
                         doc_help: str = "do not touch the markdown file", precision: bool = True) -> None:
    """The options every benchmark shares: ``--device``, ``--quick``, ``--out``, ``--doc``,
    ``--no-doc`` and (optionally) the repeatable ``--precision``."""
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"directory for {name}-<device>.json")
    parser.add_argument("--doc", type=Path, default=DOC, help="markdown file whose section is replaced")
    parser.add_argument("--no-doc", action="store_true", help=doc_help)
    if precision:
        parser.add_argument("--precision", action="append", choices=PRECISIONS,
                            help="repeatable; default: 32-true, plus bf16-mixed on CUDA (engine.py: also on a "
                                 "CPU with native bfloat16)")
