"""Engine benchmark (N=64, gridsize 1 and 2): training samples/s, inference patterns/s, peak memory.

Training is timed two ways, interleaved:

* ``lightning`` - the real path, `train_model` (Lightning Trainer, DataLoader, Adam), clocked
  per batch between the end of the warm-up batches and the end of the timed ones;
* ``loop`` - the same network, loss and Adam in a plain PyTorch loop (no Trainer, no DataLoader),
  which shows what Lightning and data loading cost on top.

Inference is `reconstruct_object` end to end (grouping, normalisation, batches, network,
Fourier-shift stitching) on a synthetic scan. Peak host RSS and peak CUDA allocation are
recorded for each. Writes ``benchmarks/results/engine-<device>.json`` and replaces the
``engine-<device>`` section of ``docs/performance.md``.

    python benchmarks/engine.py                 # CPU (or --device cuda), full form
                                                # (float32, and bf16 on CUDA or a native-bf16 CPU)
    python benchmarks/engine.py --quick         # CI-sized, seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402
from ptychodus_ptychopinn_torch.device import native_cpu_bf16  # noqa: E402

N = 64
GRIDSIZES = (1, 2)


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"positions": 16, "batch_size": 2, "inference_batch_size": 8, "warmup": 1, "timed": 1, "repeats": 1}
    return {"positions": 256, "batch_size": 16, "inference_batch_size": 64, "warmup": 2, "timed": 4, "repeats": 3}


def run(device_name: str, *, quick: bool, precisions: list[str]) -> dict[str, Any]:
    """Measure every (gridsize, precision) case and return the result document."""
    h.quiet_third_party_logs()
    start = time.perf_counter()
    device = h.torch_device(device_name)
    info = h.machine_info(device)
    s = sizes(quick)
    scan = h.synthetic_scan(s["positions"], N, seed=0)
    cases = []
    for gridsize in GRIDSIZES:
        for precision in precisions:
            execution = h.execution_config(device.type, precision, inference_batch_size=s["inference_batch_size"])
            training = h.training_config(N, gridsize, batch_size=s["batch_size"])
            train_runs = h.interleave({
                "lightning": lambda: h.time_training_lightning(scan, training, execution, warmup_batches=s["warmup"],
                                                               timed_batches=s["timed"]),
                "loop": lambda: h.time_training_loop(scan, training, execution, warmup_batches=s["warmup"],
                                                     timed_batches=s["timed"]),
            }, s["repeats"])
            bundle = h.untrained_bundle(scan, training)
            h.time_inference(bundle, h.synthetic_scan(min(8, s["positions"]), N, seed=1), execution)  # warm-up
            inference = h.best([h.time_inference(bundle, scan, execution) for _ in range(s["repeats"])])
            lightning, loop = h.best(train_runs["lightning"]), h.best(train_runs["loop"])
            cases.append({
                "N": N,
                "gridsize": gridsize,
                "precision": precision,
                "batch_size": s["batch_size"],
                "inference_batch_size": s["inference_batch_size"],
                "training": {
                    "lightning": lightning,
                    "loop": loop,
                    "lightning_over_loop_time": loop["samples_per_s"] / lightning["samples_per_s"],
                },
                "inference": inference,
            })
            print(f"gridsize {gridsize} {precision}: train {lightning['samples_per_s']:.1f} samples/s (Lightning), "
                  f"{loop['samples_per_s']:.1f} (loop); inference {inference['patterns_per_s']:.1f} patterns/s",
                  flush=True)
    h.finish_info(info, start)
    return {
        "benchmark": "engine",
        "schema": 1,
        "quick": quick,
        "device": device.type,
        "machine": info,
        "sizes": s,
        "notes": [
            "training samples are groups of gridsize**2 patterns; inference patterns are scan positions",
            "each figure is the fastest of the interleaved repeats (median and all times recorded)",
            "synthetic scan (random amplitudes, soft disk probe, jittered grid); speed does not depend on content",
        ],
        "cases": cases,
    }


def markdown(doc: dict[str, Any]) -> str:
    """The results table for docs/performance.md."""
    rows = []
    for c in doc["cases"]:
        tr, inf = c["training"], c["inference"]
        rows.append([
            c["gridsize"], c["precision"], c["batch_size"],
            tr["lightning"]["samples_per_s"], tr["loop"]["samples_per_s"], tr["lightning_over_loop_time"],
            c["inference_batch_size"], inf["patterns_per_s"],
            tr["lightning"]["memory"]["host_peak_mib"], inf["memory"]["host_peak_mib"],
            inf["memory"].get("cuda_peak_mib", tr["lightning"]["memory"].get("cuda_peak_mib")),
        ])
    headers = ["gridsize", "precision", "train batch", "train samples/s (Lightning)", "train samples/s (loop)",
               "Lightning time / loop time", "infer batch", "inference patterns/s",
               "peak host MiB (train)", "peak host MiB (infer)", "peak CUDA MiB (infer)"]
    kind = "CI-sized (--quick)" if doc["quick"] else "full"
    return (f"Engine benchmark, N=64, {doc['device']}, {kind} run, {doc['sizes']['positions']} positions. "
            f"{h.machine_line(doc['machine'])}\n\n" + h.table(headers, rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_arguments(parser, "engine", quick_help="CI-sized run (seconds)")
    args = parser.parse_args(argv)
    device = h.torch_device(args.device)
    both = device.type == "cuda" or native_cpu_bf16()
    precisions = args.precision or (["32-true", "bf16-mixed"] if both else ["32-true"])
    doc = run(device.type, quick=args.quick, precisions=precisions)
    path = h.write_json(args.out / f"engine-{device.type}.json", doc)
    print(f"wrote {path}")
    if not args.no_doc:
        h.update_markdown(args.doc, f"engine-{device.type}", markdown(doc))
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
