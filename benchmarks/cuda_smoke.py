"""Training + inference smoke run on one device in fp32 (32-true) and bf16 (bf16-mixed).

For each precision and gridsize 1 and 2: train a few epochs with `train_model`, save and reload
the model file onto the device, reconstruct with `reconstruct_object`, and check that losses
and the object are finite. Uses `simulate_scan` (and reports SSIM) when Ptychodus is installed,
else a synthetic scan. Writes ``smoke-<device>.json``. Used by ``benchmarks/gpu_check.sh``;
runs on CPU too (``--device cpu``).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402
import numpy as np  # noqa: E402


def _scan(positions: int) -> tuple[Any, Any]:
    """(ScanData, truth Product or None)."""
    try:
        from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
        from ptychodus_ptychopinn_torch.simulate import simulate_scan
    except ImportError:
        return h.synthetic_scan(positions, 64, seed=0), None
    sim = simulate_scan(num_positions=positions, N=64, seed=0)
    return scan_from_reconstruct_input(sim.reconstruct_input), sim.product


def run(device_name: str, *, positions: int, epochs: int) -> dict[str, Any]:
    from ptychodus_ptychopinn_torch.checkpoint import load_model, save_model
    from ptychodus_ptychopinn_torch.config import InferenceConfig
    from ptychodus_ptychopinn_torch.workflows.engine import reconstruct_object, train_model

    h.quiet_third_party_logs()
    device = h.torch_device(device_name)
    scan, truth = _scan(positions)
    runs = []
    precisions = ["32-true", "bf16-mixed"] if device.type == "cuda" else ["32-true"]
    for precision in precisions:
        for gridsize in (1, 2):
            execution = h.execution_config(device.type, precision)
            training = h.TrainingConfig(model=h.ModelConfig(N=64, gridsize=gridsize), nepochs=epochs, n_groups=None,
                                        batch_size=16)
            with h.PeakMemory(device) as mem:
                t0 = time.perf_counter()
                bundle = train_model(scan, training, execution)
                train_s = time.perf_counter() - t0
                with tempfile.TemporaryDirectory() as tmp:
                    bundle = load_model(save_model(bundle, Path(tmp) / "model.ckpt"), map_location=device)
                t0 = time.perf_counter()
                rec = reconstruct_object(bundle, scan, InferenceConfig(model=bundle.model_config), execution)
                infer_s = time.perf_counter() - t0
            losses = bundle.history["train_loss"]
            entry: dict[str, Any] = {
                "precision": precision, "gridsize": gridsize, "epochs": len(losses),
                "train_seconds": train_s, "reconstruct_seconds": infer_s,
                "train_loss_first": losses[0], "train_loss_last": losses[-1],
                "finite": bool(np.isfinite(rec.object).all() and all(math.isfinite(v) for v in losses)),
                "memory": mem.as_dict(),
            }
            if truth is not None:
                from ptychodus_ptychopinn_torch.evaluation import evaluate_object

                metrics = evaluate_object(rec.object, truth)
                entry.update(amplitude_ssim=metrics["amplitude_ssim"], phase_ssim=metrics["phase_ssim"])
            runs.append(entry)
            print(f"{precision} gridsize {gridsize}: train {train_s:.1f} s, reconstruct {infer_s:.2f} s, loss "
                  f"{losses[0]:.4g} -> {losses[-1]:.4g}, finite={entry['finite']}", flush=True)
    return {"benchmark": "smoke", "device": device.type, "machine": h.machine_info(device),
            "scan": {"positions": scan.num_positions, "simulated": truth is not None}, "runs": runs,
            "ok": all(r["finite"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cuda")
    parser.add_argument("--positions", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=h.RESULTS_DIR)
    args = parser.parse_args(argv)
    doc = run(args.device, positions=args.positions, epochs=args.epochs)
    path = h.write_json(args.out / f"smoke-{doc['device']}.json", doc)
    print(f"wrote {path}; ok={doc['ok']}")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
