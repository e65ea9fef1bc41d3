"""Run pty-chi LSQML on a scan stored in an NPZ; write object snapshots and timings back.

This script runs in pty-chi's OWN virtual environment (``.venv-ptychi``, see
docs/performance.md), never in the project's: ``benchmarks/suite.py`` starts it with that
environment's python through ``subprocess``. It imports nothing from this project.

Input NPZ (``--scan``):
    patterns      (M, N, N) float32 measured counts (zero frequency at pixel N//2)
    probe         (N, N) complex64 illumination on the object pixel grid (any intensity scale)
    positions_px  (M, 2) float64 (x, y) object pixels, Ptychodus centred-pixel convention
    object_shape  (2,) int (H, W)
    pixel_size_m, wavelength_m  float scalars

Run length: ``--epochs`` epochs, or with ``--until-seconds S`` as many more as it takes for the
reconstruction clock to reach S (at most ``--max-epochs``). Snapshots: after each epoch listed in
``--snapshots``, after the first epoch whose clock reaches each of ``--snapshot-seconds``, and
after the last epoch.

Output NPZ (``--out``):
    epochs        (K,) int, the epochs after which the object was snapshotted
    seconds       (K,) float, reconstruction seconds up to that epoch (task set-up included,
                  snapshot copies excluded)
    objects       (K, H, W) complex64
    epoch_seconds (E,) float, seconds of each epoch
    loss          (E,) float, pty-chi's loss per epoch
    setup_seconds float

Conventions applied here (shared/docs/environment-notes.md, "pty-chi"):

* pty-chi's FFT is unnormalised, so a probe meant for ``fft2(norm="ortho")`` is divided by N.
  The probe is first scaled, from the data alone, so that a flat unit object reproduces the
  mean measured counts under the orthonormal FFT (Parseval: ``sum |P|^2 = mean counts``);
* ``remove_object_probe_ambiguity`` and the first-epoch probe rescaling are off: the probe
  is known and fixed, as it is for the PINN;
* positions are passed as ``x - 0.5`` with origin ``0.5``: with origin 0 and an even probe
  size pty-chi 2.1.0 displaces every scan point by +-0.5 px.

torchvision's compiled operators do not load with the CPU build of torch ("operator
torchvision::nms does not exist"). pty-chi imports torchvision only for
``transforms.GaussianBlur`` (random object initialisation, unused here), so a minimal
pure-torch stand-in is installed in ``sys.modules`` before pty-chi is imported. This hack
lives in this driver only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch


def _install_torchvision_stub() -> None:
    """Register a pure-torch ``torchvision.transforms.GaussianBlur`` instead of torchvision."""
    try:  # a working torchvision (e.g. a CUDA build with matching torch) is used as is
        import torchvision.transforms  # noqa: F401

        return
    except Exception:  # noqa: BLE001 - any failure of the compiled extension
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]

    class GaussianBlur:
        """Separable Gaussian blur of ``(..., H, W)`` images with reflect padding."""

        def __init__(self, kernel_size: tuple[int, int] | int, sigma: tuple[float, float] | float = (0.1, 2.0)):
            self.kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
            self.sigma = (float(sigma), float(sigma)) if isinstance(sigma, (int, float)) else tuple(sigma)

        def __call__(self, img: torch.Tensor) -> torch.Tensor:
            shape = img.shape
            x = img.reshape(-1, 1, shape[-2], shape[-1])
            for axis, (k, s) in enumerate(zip(self.kernel_size, self.sigma)):
                t = torch.arange(k, dtype=x.dtype, device=x.device) - (k - 1) / 2
                w = torch.exp(-0.5 * (t / s) ** 2)
                w = (w / w.sum()).view(1, 1, -1, 1) if axis == 0 else (w / w.sum()).view(1, 1, 1, -1)
                pad = (0, 0, k // 2, k // 2) if axis == 0 else (k // 2, k // 2, 0, 0)
                x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, pad, mode="reflect"), w)
            return x.reshape(shape)

    torchvision = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.GaussianBlur = GaussianBlur  # type: ignore[attr-defined]
    torchvision.transforms = transforms  # type: ignore[attr-defined]
    torchvision.__version__ = "stub"  # type: ignore[attr-defined]
    sys.modules["torchvision"] = torchvision
    sys.modules["torchvision.transforms"] = transforms


def _ptychi_probe(probe: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """The probe in pty-chi's units: flat unit object -> mean measured counts, unnormalised FFT."""
    n = probe.shape[-1]
    mean_counts = float(np.mean(np.sum(patterns.astype(np.float64), axis=(-2, -1))))
    power = float(np.sum(np.abs(probe.astype(np.complex128)) ** 2))
    ortho = probe * math.sqrt(mean_counts / power)
    return (ortho / n).astype(np.complex64)


def run_lsqml(
    scan: dict[str, np.ndarray],
    *,
    epochs: int,
    batch_size: int,
    snapshot_epochs: list[int],
    device: str,
    threads: int | None,
    snapshot_seconds: list[float] | None = None,
    until_seconds: float | None = None,
    max_epochs: int = 20_000,
) -> dict[str, object]:
    """Reconstruct with LSQML (fixed probe, fixed positions) and return snapshots and timings.

    Runs ``epochs`` epochs, or longer (up to ``max_epochs``) until the clock reaches
    ``until_seconds``; snapshots follow ``snapshot_epochs``, ``snapshot_seconds`` and the last epoch.
    """
    _install_torchvision_stub()
    import ptychi.api as api
    from ptychi.api.task import PtychographyTask

    if threads:
        torch.set_num_threads(threads)
    patterns = np.asarray(scan["patterns"], dtype=np.float32)
    positions = np.asarray(scan["positions_px"], dtype=np.float64)
    height, width = (int(v) for v in scan["object_shape"])
    probe = _ptychi_probe(np.asarray(scan["probe"], dtype=np.complex64), patterns)

    options = api.LSQMLOptions()
    options.data_options.wavelength_m = float(scan["wavelength_m"])
    options.data_options.free_space_propagation_distance_m = math.inf
    options.data_options.fft_shift = True

    options.object_options.pixel_size_m = float(scan["pixel_size_m"])
    options.object_options.optimizable = True
    options.object_options.remove_object_probe_ambiguity.enabled = False
    options.object_options.determine_position_origin_coords_by = api.ObjectPosOriginCoordsMethods.SPECIFIED
    options.object_options.position_origin_coords = np.array([0.5, 0.5])

    options.probe_options.optimizable = False

    options.probe_position_options.optimizable = False

    options.reconstructor_options.num_epochs = epochs
    options.reconstructor_options.batch_size = batch_size
    options.reconstructor_options.rescale_probe_intensity_in_first_epoch = False
    options.reconstructor_options.default_device = (
        api.Devices.GPU if device == "cuda" else api.Devices.CPU
    )

    marks = {e for e in snapshot_epochs if e >= 1}
    pending = sorted(float(t) for t in (snapshot_seconds or []))
    start = time.perf_counter()
    task = PtychographyTask(
        options,
        diffraction_data=patterns,
        object_data=np.ones((1, height, width), dtype=np.complex64),
        probe_data=probe[None, None],
        probe_position_x_px=positions[:, 0] - 0.5,
        probe_position_y_px=positions[:, 1] - 0.5,
    )
    setup = time.perf_counter() - start
    elapsed = setup
    epoch_seconds: list[float] = []
    objects, seconds, done = [], [], 0
    snapshots: list[int] = []

    def running() -> bool:
        if done < epochs:
            return True
        return until_seconds is not None and elapsed < until_seconds and done < max_epochs

    with task:
        while running():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            task.run(1)
            if device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            epoch_seconds.append(dt)
            elapsed += dt
            done += 1
            take = done in marks or not running()
            while pending and elapsed >= pending[0]:
                pending.pop(0)
                take = True
            if take:
                obj = np.asarray(task.get_data_to_cpu("object", as_numpy=True))
                objects.append(obj.reshape(-1, height, width)[0].astype(np.complex64))
                seconds.append(elapsed)
                snapshots.append(done)
        losses = task.reconstructor.loss_tracker.table["loss"].to_numpy().astype(np.float64)
    return {
        "epochs": np.asarray(snapshots, dtype=np.int64),
        "seconds": np.asarray(seconds, dtype=np.float64),
        "objects": np.stack(objects),
        "epoch_seconds": np.asarray(epoch_seconds, dtype=np.float64),
        "loss": losses,
        "setup_seconds": np.float64(setup),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", required=True, type=Path, help="input NPZ (see module doc)")
    parser.add_argument("--out", required=True, type=Path, help="output NPZ")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--snapshots", default="", help="comma-separated epochs to snapshot the object at")
    parser.add_argument("--snapshot-seconds", default="",
                        help="comma-separated clock times: snapshot after the first epoch reaching each")
    parser.add_argument("--until-seconds", type=float, default=None,
                        help="run past --epochs until the reconstruction clock reaches this many seconds")
    parser.add_argument("--max-epochs", type=int, default=20_000, help="cap on epochs with --until-seconds")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)

    with np.load(args.scan) as data:
        scan = {key: data[key] for key in data.files}
    snapshot_epochs = [int(s) for s in args.snapshots.split(",") if s.strip()]
    result = run_lsqml(
        scan, epochs=args.epochs, batch_size=args.batch_size, snapshot_epochs=snapshot_epochs,
        device=args.device, threads=args.threads,
        snapshot_seconds=[float(t) for t in args.snapshot_seconds.split(",") if t.strip()],
        until_seconds=args.until_seconds, max_epochs=args.max_epochs,
    )
    import ptychi

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **result)
    summary = {
        "ptychi_version": getattr(ptychi, "__version__", "unknown"),
        "torch_version": torch.__version__,
        "epochs": int(len(result["epoch_seconds"])),  # type: ignore[arg-type]
        "seconds": float(result["seconds"][-1]),  # type: ignore[index]
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
