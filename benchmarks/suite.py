"""Benchmark suite: throughput, the bare-convolution bound, memory, scan-size scaling, FLOPs and
fraction of peak, and a side-by-side with pty-chi LSQML. One command, JSON + markdown.

    python benchmarks/suite.py                   # full form on this machine's CPU
    python benchmarks/suite.py --device cuda     # fp32 (32-true) and bf16 (bf16-mixed) on a GPU
    python benchmarks/suite.py --quick           # CI-sized (tiny sizes, no pty-chi)

Sections (each in ``benchmarks/results/suite-<device>.json`` and in the ``suite-<device>``
section of ``docs/performance.md``):

* ``inference`` - `reconstruct_object` positions/s for N in {64, 128}, gridsize {1, 2}, a few
  batch sizes, interleaved with the bound: the `Generator` alone in a bare
  ``torch.inference_mode`` loop over the same number of patterns on one resident batch;
  ``end_to_end_over_bare`` is the ratio of their times;
* ``training`` - samples/s through `train_model` (Lightning) and through a plain loop of the
  same model + loss + Adam, interleaved;
* ``flops`` / ``peak`` - convolution FLOPs per pattern (``torch.utils.flop_counter``) and the
  fraction of the device's peak reached (CPU: a large fp32 matrix product measured in the same
  run; known GPUs: published dense figures, stated in the JSON);
* ``scaling`` - inference time and memory against the number of scan positions, on synthetic
  scans; a ``network`` series (the real generator, ``n_filters_scale=1`` on CPU to keep the run
  short) and a ``pipeline`` series whose generator is a stub (grouping, loading, normalisation and
  stitching only), which reaches the largest scans on CPU;
* ``ptychi`` - time to reach the same phase SSIM on one simulated scan (`simulate_scan`, N=64):
  (a) inference with a PINN pretrained on another scan, (b) fitting the PINN to the scan itself,
  against pty-chi LSQML run by ``benchmarks/ptychi_driver.py`` in its own environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

PTYCHI_PYTHON = h.PTYCHI_PYTHON
PTYCHI_DRIVER = h.PTYCHI_DRIVER
PTYCHI_SETUP = h.PTYCHI_SETUP


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one suite run."""

    sizes_n: tuple[int, ...]
    gridsizes: tuple[int, ...]
    inference_positions: dict[int, int]
    inference_batch_sizes: dict[int, tuple[int, ...]]
    training_batch_sizes: dict[int, tuple[int, ...]]
    warmup_batches: int
    timed_batches: int
    repeats: int
    scaling_network_sizes: tuple[int, ...]
    scaling_pipeline_sizes: tuple[int, ...]
    scaling_filters_scale: int
    scaling_batch_size: int
    matmul_seconds: float
    ptychi: bool
    fresh_processes: bool = True  # scaling points in spawned processes (clean memory figures)
    training_repeats: int = 2
    ptychi_positions: int = 256
    ptychi_epochs: int = 25
    pretrain_positions: int = 512
    pretrain_epochs: int = 3
    fit_epochs: int = 3


def make_plan(quick: bool, device: torch.device) -> Plan:
    cuda = device.type == "cuda"
    if quick:
        return Plan(sizes_n=(64,), gridsizes=(1,), inference_positions={64: 16, 128: 8},
                    inference_batch_sizes={64: (8,)}, training_batch_sizes={64: (2,)}, warmup_batches=1,
                    timed_batches=1, repeats=1, training_repeats=1, scaling_network_sizes=(8, 24),
                    scaling_pipeline_sizes=(32, 128), scaling_filters_scale=1, scaling_batch_size=16,
                    matmul_seconds=0.2, ptychi=False, fresh_processes=False)
    if cuda:
        return Plan(sizes_n=(64, 128), gridsizes=(1, 2), inference_positions={64: 4096, 128: 2048},
                    inference_batch_sizes={64: (64, 512), 128: (64, 512)},
                    training_batch_sizes={64: (16, 128), 128: (16, 128)}, warmup_batches=3,
                    timed_batches=10, repeats=2, scaling_network_sizes=(1_000, 10_000, 100_000),
                    scaling_pipeline_sizes=(1_000, 10_000, 100_000), scaling_filters_scale=2,
                    scaling_batch_size=1024, matmul_seconds=0.5, ptychi=True, fresh_processes=False,
                    training_repeats=1)
    return Plan(sizes_n=(64, 128), gridsizes=(1, 2), inference_positions={64: 128, 128: 64},
                inference_batch_sizes={64: (16, 64), 128: (64,)}, training_batch_sizes={64: (8, 16), 128: (16,)},
                warmup_batches=1, timed_batches=2, repeats=2, scaling_network_sizes=(1_000, 3_000),
                scaling_pipeline_sizes=(1_000, 10_000, 100_000),
                scaling_filters_scale=1, scaling_batch_size=128, matmul_seconds=1.0, ptychi=True)


# ----------------------------------------------------------------------------- peak and flops
def measure_peak(device: torch.device, seconds: float) -> dict[str, Any]:
    peak: dict[str, Any] = {"matmul_fp32_gflops": h.matmul_peak(device, torch.float32, min_seconds=seconds)}
    if device.type == "cuda":
        peak["matmul_bf16_gflops"] = h.matmul_peak(device, torch.bfloat16, min_seconds=seconds)
        spec = h.gpu_spec_tflops(device)
        peak["spec_tflops"] = spec
        peak["spec_note"] = ("published dense peaks (H200/H100 SXM): 989 TFLOP/s bf16, 67 TFLOP/s fp32 "
                             "(non-tensor), 495 TFLOP/s tf32; cuDNN runs fp32 convolutions in TF32 by default "
                             f"(torch.backends.cudnn.allow_tf32={torch.backends.cudnn.allow_tf32})")
    else:
        peak["note"] = "CPU peak = measured 2048^3 fp32 matrix product, best of the start and end of the run"
    return peak


def peak_gflops(peak: dict[str, Any], precision: str) -> float:
    """The reference peak for a precision: spec figures for known GPUs, else the measured matmul."""
    spec = peak.get("spec_tflops")
    if spec and precision in spec:
        return 1000.0 * spec[precision]
    if precision == "bf16-mixed" and "matmul_bf16_gflops" in peak:
        return peak["matmul_bf16_gflops"]
    return peak["matmul_fp32_gflops"]


def measure_flops(plan: Plan, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    configs = {(n, g, 2) for n in plan.sizes_n for g in plan.gridsizes}
    configs.add((64, 1, plan.scaling_filters_scale))
    for n, g, f in sorted(configs):
        cfg = h.ModelConfig(N=n, gridsize=g, n_filters_scale=f)
        rows.append({
            "N": n, "gridsize": g, "n_filters_scale": f,
            "forward_gflop_per_group": h.generator_flops(cfg, device) / 1e9,
            "training_gflop_per_group": h.training_flops(cfg, device) / 1e9,
        })
    return rows


def _flops_for(flops: list[dict[str, Any]], n: int, g: int, f: int = 2) -> dict[str, Any]:
    return next(r for r in flops if (r["N"], r["gridsize"], r["n_filters_scale"]) == (n, g, f))


# ----------------------------------------------------------------------------- throughput
def measure_inference(plan: Plan, device: torch.device, precisions: list[str], flops: list[dict[str, Any]],
                      peak: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for n in plan.sizes_n:
        scan = h.synthetic_scan(plan.inference_positions[n], n, seed=0)
        warm = h.synthetic_scan(8, n, seed=1)
        for g in plan.gridsizes:
            bundle = h.untrained_bundle(scan, h.training_config(n, g))
            for precision in precisions:
                for batch in plan.inference_batch_sizes[n]:
                    execution = h.execution_config(device.type, precision, inference_batch_size=batch)
                    h.time_inference(bundle, warm, execution)
                    runs = h.interleave({
                        "end_to_end": lambda: h.time_inference(bundle, scan, execution),
                        "bare": lambda: h.time_bare_generator(bundle, scan, execution),
                    }, plan.training_repeats)
                    e2e, bare = h.best(runs["end_to_end"]), h.best(runs["bare"])
                    pairs = [a["seconds"] / b["seconds"] for a, b in zip(runs["end_to_end"], runs["bare"])]
                    gflops = _flops_for(flops, n, g)["forward_gflop_per_group"] * e2e["patterns_per_s"]
                    rows.append({
                        "N": n, "gridsize": g, "precision": precision, "batch_size": batch,
                        "positions": scan.num_positions,
                        "end_to_end": e2e, "bare": bare,
                        "end_to_end_over_bare": e2e["seconds"] / bare["seconds"],
                        "end_to_end_over_bare_pairs": pairs,
                        "achieved_gflops": gflops,
                        "fraction_of_peak": gflops / peak_gflops(peak, precision),
                    })
                    print(f"inference N={n} gs={g} {precision} batch {batch}: {e2e['patterns_per_s']:.1f} "
                          f"patterns/s end to end, {bare['patterns_per_s']:.1f} bare "
                          f"(ratio {rows[-1]['end_to_end_over_bare']:.2f})", flush=True)
    return rows


def measure_training(plan: Plan, device: torch.device, precisions: list[str], flops: list[dict[str, Any]],
                     peak: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for n in plan.sizes_n:
        for g in plan.gridsizes:
            for precision in precisions:
                for batch in plan.training_batch_sizes[n]:
                    training = h.training_config(n, g, batch_size=batch)
                    needed = (plan.warmup_batches + plan.timed_batches) * batch
                    scan = h.synthetic_scan(max(needed, 8), n, seed=2)
                    execution = h.execution_config(device.type, precision)
                    kw = {"warmup_batches": plan.warmup_batches, "timed_batches": plan.timed_batches}
                    runs = h.interleave({
                        "lightning": lambda: h.time_training_lightning(scan, training, execution, **kw),
                        "loop": lambda: h.time_training_loop(scan, training, execution, **kw),
                    }, plan.training_repeats)
                    lightning, loop = h.best(runs["lightning"]), h.best(runs["loop"])
                    gflops = _flops_for(flops, n, g)["training_gflop_per_group"] * lightning["samples_per_s"]
                    rows.append({
                        "N": n, "gridsize": g, "precision": precision, "batch_size": batch,
                        "lightning": lightning, "loop": loop,
                        "lightning_over_loop_time": loop["samples_per_s"] / lightning["samples_per_s"],
                        "achieved_gflops": gflops,
                        "fraction_of_peak": gflops / peak_gflops(peak, precision),
                    })
                    print(f"training N={n} gs={g} {precision} batch {batch}: {lightning['samples_per_s']:.1f} "
                          f"samples/s (Lightning), {loop['samples_per_s']:.1f} (loop)", flush=True)
    return rows


# ----------------------------------------------------------------------------- scaling
class StubGenerator(torch.nn.Module):
    """Stands in for the generator in the ``pipeline`` series: amplitudes -> complex patches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.complex(x.float(), torch.zeros_like(x, dtype=torch.float32))


def _scaling_point(point: tuple[str, int, str, int, int]) -> dict[str, Any]:
    """One scaling measurement, run in a fresh process so its memory figures are its own."""
    series, m, device_type, filters_scale, batch = point
    h.quiet_third_party_logs()
    n = 64
    scan = h.synthetic_scan(m, n, seed=3)
    bundle = h.untrained_bundle(scan, h.training_config(n, 1, n_filters_scale=filters_scale))
    if series == "pipeline":
        bundle.network.generator = StubGenerator()
    execution = h.execution_config(device_type, "32-true", inference_batch_size=batch)
    h.time_inference(bundle, h.synthetic_scan(min(m, 2 * batch), n, seed=4), execution)  # warm-up
    r = h.time_inference(bundle, scan, execution)
    mem = r["memory"]
    return {
        "series": series, "positions": m, "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"],
        "us_per_pattern": 1e6 * r["seconds"] / m, "batches": r["batches"],
        "median_batch_seconds": r["median_batch_seconds"], "setup_seconds": r["setup_seconds"],
        "canvas_px": list(scan.object_shape), "data_mib": scan.amplitudes.nbytes / 2**20,
        **{k: v for k, v in mem.items() if k != "host_method"},
    }


def measure_scaling(plan: Plan, device: torch.device) -> dict[str, Any]:
    """Inference time and memory against scan size; every point in a fresh (spawned) process."""
    import multiprocessing

    n = 64
    out: dict[str, Any] = {
        "N": n, "gridsize": 1, "n_filters_scale": plan.scaling_filters_scale, "batch_size": plan.scaling_batch_size,
        "precision": "32-true",
        "note": ("synthetic scans (positions on a jittered grid, 8 px apart); 'pipeline' replaces the generator "
                 "by a stub so only grouping, loading, normalisation and stitching remain; each point runs in a "
                 "fresh process: host_baseline_mib is its resident set with the scan and model loaded, "
                 "host_peak_mib its peak during reconstruct_object"),
    }
    points = [(series, m, device.type, plan.scaling_filters_scale, plan.scaling_batch_size)
              for series, sizes in (("network", plan.scaling_network_sizes), ("pipeline", plan.scaling_pipeline_sizes))
              for m in sizes]
    if plan.fresh_processes:
        with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
            rows = pool.map(_scaling_point, points, chunksize=1)
    else:
        rows = [_scaling_point(p) for p in points]
    out["fresh_processes"] = plan.fresh_processes
    for series in ("network", "pipeline"):
        chosen = [r for r in rows if r["series"] == series]
        first = chosen[0]
        for r in chosen:
            r["time_per_pattern_relative"] = r["us_per_pattern"] / first["us_per_pattern"]
            r["batch_time_relative"] = r["median_batch_seconds"] / first["median_batch_seconds"]
            print(f"scaling {series} {r['positions']} positions: {r['seconds']:.2f} s "
                  f"(median batch {r['median_batch_seconds']:.3f} s, setup {r['setup_seconds']:.2f} s), "
                  f"host peak {r['host_peak_mib']:.0f} MiB (+{r['host_above_baseline_mib']:.0f})"
                  + (f", CUDA peak {r['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in r else ""), flush=True)
        out[series] = chosen
    return out


# ----------------------------------------------------------------------------- pty-chi
def _ssim(obj: np.ndarray, product: Any) -> dict[str, float]:
    from ptychodus_ptychopinn_torch.evaluation import evaluate_object

    m = evaluate_object(obj, product)
    return {k: m[k] for k in ("amplitude_ssim", "phase_ssim", "flat_amplitude_ssim", "flat_phase_ssim")}


def _first_reaching(curve: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    return next((p for p in curve if p["phase_ssim"] >= target), None)


def _snapshot_epochs(epochs: int) -> list[int]:
    marks = set(range(1, min(epochs, 10) + 1)) | set(range(12, epochs + 1, 3)) | {epochs}
    return sorted(marks)


def run_ptychi_driver(npz: Path, out: Path, epochs: int, python: Path, device: torch.device) -> dict[str, Any]:
    return h.run_ptychi_driver(npz, out, python, device, epochs=epochs, snapshots=_snapshot_epochs(epochs))


def compare_ptychi(plan: Plan, device: torch.device, python: Path, *, pretrained: Path | None = None) -> dict[str, Any]:
    """Time to the same phase SSIM: PINN inference (pretrained), PINN fit, pty-chi LSQML."""
    missing = h.ptychi_missing(python)
    if missing:
        return {"status": "unavailable", "reason": missing}
    from ptychodus_ptychopinn_torch import workflows  # noqa: F401
    from ptychodus_ptychopinn_torch.checkpoint import ModelBundle
    from ptychodus_ptychopinn_torch.config import InferenceConfig
    from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
    from ptychodus_ptychopinn_torch.simulate import simulate_scan
    from ptychodus_ptychopinn_torch.workflows import engine

    sim = simulate_scan(num_positions=plan.ptychi_positions, N=64, seed=1)
    scan = scan_from_reconstruct_input(sim.reconstruct_input)
    result: dict[str, Any] = {
        "status": "ok",
        "scan": {"simulate_scan": {"num_positions": plan.ptychi_positions, "N": 64, "seed": 1,
                                   "photons_per_pattern": 1e5, "probe": "structured", "obj": "textured"},
                 "object_shape": list(scan.object_shape)},
        "metric": "phase SSIM after ambiguity removal over the scanned area (evaluation.evaluate_object)",
    }

    # pty-chi LSQML, in its own environment.
    with tempfile.TemporaryDirectory() as tmp:
        npz, out = Path(tmp) / "scan.npz", Path(tmp) / "ptychi.npz"
        h.write_ptychi_scan(npz, sim, scan)
        try:
            summary = run_ptychi_driver(npz, out, plan.ptychi_epochs, python, device)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            return {"status": "unavailable", "reason": str(exc)}
        ptychi = h.load_npz(out)
    curve = []
    for epoch, seconds, obj in zip(ptychi["epochs"], ptychi["seconds"], ptychi["objects"]):
        curve.append({"epoch": int(epoch), "seconds": float(seconds), **_ssim(obj, sim.product)})
    flat = {k: curve[-1].pop(k) for k in ("flat_amplitude_ssim", "flat_phase_ssim")}
    for p in curve:
        p.pop("flat_amplitude_ssim", None)
        p.pop("flat_phase_ssim", None)
    result["flat_object"] = flat
    result["ptychi"] = {
        **summary, "algorithm": "LSQML", "batch_size": 100, "probe": "fixed (known)", "positions": "fixed",
        "setup_seconds": float(ptychi["setup_seconds"]),
        "median_epoch_seconds": float(np.median(ptychi["epoch_seconds"])),
        "curve": curve,
    }
    print(f"pty-chi: {plan.ptychi_epochs} epochs in {curve[-1]['seconds']:.1f} s, phase SSIM "
          f"{curve[-1]['phase_ssim']:.3f}", flush=True)

    execution = h.execution_config(device.type)

    # (a) a PINN pretrained on another scan (untimed), then timed inference on this one.
    if pretrained is not None:
        from ptychodus_ptychopinn_torch.checkpoint import load_model

        bundle = load_model(pretrained)
        pretrain_info: dict[str, Any] = {"model_file": str(pretrained), "provenance": bundle.provenance}
    else:
        sim_train = simulate_scan(num_positions=plan.pretrain_positions, N=64, seed=2)
        train_scan = scan_from_reconstruct_input(sim_train.reconstruct_input)
        training = h.TrainingConfig(model=h.ModelConfig(N=64), nepochs=plan.pretrain_epochs, n_groups=None)
        t0 = time.perf_counter()
        bundle = engine.train_model(train_scan, training, execution)
        pretrain_info = {"train_positions": plan.pretrain_positions, "train_epochs": plan.pretrain_epochs,
                         "train_seconds_untimed": time.perf_counter() - t0}
    inference = InferenceConfig(model=bundle.model_config)
    engine.reconstruct_object(bundle, scan, inference, execution)  # warm-up
    t0 = time.perf_counter()
    recon = engine.reconstruct_object(bundle, scan, inference, execution)
    seconds = time.perf_counter() - t0
    result["pinn_pretrained"] = {**pretrain_info, "reconstruct_seconds": seconds,
                                 **_strip(_ssim(recon.object, sim.product))}
    print(f"PINN pretrained: reconstruct {seconds:.1f} s, phase SSIM {result['pinn_pretrained']['phase_ssim']:.3f}",
          flush=True)

    # (b) fit the PINN to this scan; snapshot the object after every epoch (snapshot costs excluded,
    # the snapshot's own reconstruct time included in "seconds").
    captured: dict[str, Any] = {}
    original_build = engine.build_model

    def capturing_build(training_cfg, constants, probe):
        network = original_build(training_cfg, constants, probe)
        captured.update(network=network, constants=constants, training=training_cfg)
        return network

    fit_curve: list[dict[str, Any]] = []
    clock = {"start": 0.0, "excluded": 0.0}

    def on_epoch(report: Any) -> None:
        now = time.perf_counter()
        train_seconds = now - clock["start"] - clock["excluded"]
        snap = ModelBundle(network=captured["network"], training_config=captured["training"],
                           constants=captured["constants"], probe=scan.probe)
        r0 = time.perf_counter()
        rec = engine.reconstruct_object(snap, scan, inference, execution)
        rec_seconds = time.perf_counter() - r0
        captured["network"].train()
        fit_curve.append({"epoch": report.epoch, "train_seconds": train_seconds, "reconstruct_seconds": rec_seconds,
                          "seconds": train_seconds + rec_seconds, "train_loss": report.train_loss,
                          **_strip(_ssim(rec.object, sim.product))})
        clock["excluded"] += time.perf_counter() - now

    inference = InferenceConfig(model=h.ModelConfig(N=64))
    fit_training = h.TrainingConfig(model=h.ModelConfig(N=64), nepochs=plan.fit_epochs, n_groups=None)
    engine.build_model = capturing_build
    try:
        clock["start"] = time.perf_counter()
        engine.train_model(scan, fit_training, execution, on_epoch=on_epoch)
    finally:
        engine.build_model = original_build
    result["pinn_fit"] = {"epochs": plan.fit_epochs, "batch_size": fit_training.batch_size, "curve": fit_curve}
    print(f"PINN fit: {plan.fit_epochs} epochs, {fit_curve[-1]['seconds']:.1f} s, phase SSIM "
          f"{fit_curve[-1]['phase_ssim']:.3f}", flush=True)

    targets = []
    for label, seconds_, target in (
        ("pinn_pretrained", result["pinn_pretrained"]["reconstruct_seconds"], result["pinn_pretrained"]["phase_ssim"]),
        ("pinn_fit", *max(((p["seconds"], p["phase_ssim"]) for p in fit_curve), key=lambda t: t[1])),
    ):
        hit = _first_reaching(curve, target)
        targets.append({
            "target_phase_ssim": target, "set_by": label, "pinn_seconds": seconds_,
            "ptychi_seconds": hit["seconds"] if hit else None, "ptychi_epoch": hit["epoch"] if hit else None,
            "ptychi_over_pinn_time": (hit["seconds"] / seconds_) if hit else None,
        })
    best_ptychi = max(curve, key=lambda p: p["phase_ssim"])
    fit_hit = _first_reaching([{"phase_ssim": p["phase_ssim"], "seconds": p["seconds"], "epoch": p["epoch"]}
                               for p in fit_curve], best_ptychi["phase_ssim"])
    targets.append({
        "target_phase_ssim": best_ptychi["phase_ssim"], "set_by": "ptychi (best)",
        "ptychi_seconds": best_ptychi["seconds"], "ptychi_epoch": best_ptychi["epoch"],
        "pinn_seconds": fit_hit["seconds"] if fit_hit else None,
        "note": "pinn_seconds from fitting; null = not reached within the fitting epochs",
    })
    result["time_to_phase_ssim"] = targets
    return result


def _strip(m: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in m.items() if not k.startswith("flat_")}


# ----------------------------------------------------------------------------- report
def markdown(doc: dict[str, Any]) -> str:
    kind = "CI-sized (--quick)" if doc["quick"] else "full"
    parts = [f"Suite, {doc['device']}, {kind} run. {h.machine_line(doc['machine'])}"]
    peak = doc["peak"]
    peak_text = f"measured fp32 matmul {peak['matmul_fp32_gflops']:.0f} GFLOP/s"
    if "matmul_bf16_gflops" in peak:
        peak_text += f", bf16 matmul {peak['matmul_bf16_gflops']:.0f} GFLOP/s"
    if peak.get("spec_tflops"):
        peak_text += f"; fraction of peak against published {peak['spec_tflops']} TFLOP/s"
    parts.append(f"**Peak** ({peak_text}) and **FLOPs** (convolutions, FlopCounterMode, per group of gridsize² "
                 "patterns; inference runs one group per scan position):\n\n" + h.table(
                     ["N", "gridsize", "n_filters_scale", "GFLOP forward", "GFLOP training step"],
                     [[r["N"], r["gridsize"], r["n_filters_scale"], r["forward_gflop_per_group"],
                       r["training_gflop_per_group"]] for r in doc["flops"]]))
    parts.append("**Inference** (`reconstruct_object`, positions/s) against the bound (the generator alone, "
                 "`torch.inference_mode`, same batch, interleaved):\n\n" + h.table(
                     ["N", "gridsize", "precision", "batch", "positions", "end-to-end /s", "bare /s",
                      "end-to-end / bare time", "GFLOP/s", "% of peak", "peak host MiB", "peak CUDA MiB"],
                     [[r["N"], r["gridsize"], r["precision"], r["batch_size"], r["positions"],
                       r["end_to_end"]["patterns_per_s"], r["bare"]["patterns_per_s"], r["end_to_end_over_bare"],
                       r["achieved_gflops"], 100 * r["fraction_of_peak"], r["end_to_end"]["memory"]["host_peak_mib"],
                       r["end_to_end"]["memory"].get("cuda_peak_mib")] for r in doc["inference"]]))
    parts.append("**Training** (samples = groups; `train_model` through Lightning, and the same model + loss + "
                 "Adam in a plain loop, interleaved):\n\n" + h.table(
                     ["N", "gridsize", "precision", "batch", "Lightning samples/s", "loop samples/s",
                      "Lightning / loop time", "GFLOP/s", "% of peak", "peak host MiB", "peak CUDA MiB"],
                     [[r["N"], r["gridsize"], r["precision"], r["batch_size"], r["lightning"]["samples_per_s"],
                       r["loop"]["samples_per_s"], r["lightning_over_loop_time"], r["achieved_gflops"],
                       100 * r["fraction_of_peak"], r["lightning"]["memory"]["host_peak_mib"],
                       r["lightning"]["memory"].get("cuda_peak_mib")] for r in doc["training"]]))
    sc = doc["scaling"]
    rows = []
    for series in ("network", "pipeline"):
        for r in sc[series]:
            rows.append([series, r["positions"], r["seconds"], r["us_per_pattern"], r["median_batch_seconds"],
                         r["batch_time_relative"], r["setup_seconds"], r["data_mib"], r["host_baseline_mib"],
                         r["host_peak_mib"], r.get("cuda_peak_mib")])
    parts.append(f"**Scaling with scan size** (N=64, gridsize 1, n_filters_scale={sc['n_filters_scale']}, batch "
                 f"{sc['batch_size']}; 'pipeline' = generator replaced by a stub; each point in a fresh process: "
                 "baseline = resident set with the scan and model loaded, peak = during `reconstruct_object`; "
                 "setup = time before the batch loop):\n\n" + h.table(
                     ["series", "positions", "seconds", "µs/position", "median batch s", "batch time vs smallest",
                      "setup s", "input data MiB", "host baseline MiB", "host peak MiB", "peak CUDA MiB"], rows))
    parts.append(_ptychi_markdown(doc["ptychi"]))
    return "\n\n".join(parts)


def _ptychi_markdown(p: dict[str, Any]) -> str:
    if p.get("status") != "ok":
        return f"**pty-chi side by side**: {p.get('status')} ({p.get('reason', '')})"
    rows = [["pty-chi LSQML", f"{p['ptychi']['epochs']} epochs", p["ptychi"]["curve"][-1]["seconds"],
             p["ptychi"]["curve"][-1]["amplitude_ssim"], p["ptychi"]["curve"][-1]["phase_ssim"]]]
    pre = p["pinn_pretrained"]
    how = (f"model file {Path(pre['model_file']).name}" if "model_file" in pre else
           f"trained {pre['train_epochs']} epochs on another {pre['train_positions']}-position scan (untimed)")
    rows.append(["PINN, pretrained (inference only)", how, pre["reconstruct_seconds"], pre["amplitude_ssim"],
                 pre["phase_ssim"]])
    for pt in p["pinn_fit"]["curve"]:
        rows.append([f"PINN fitted to the scan, epoch {pt['epoch']}", "train + reconstruct", pt["seconds"],
                     pt["amplitude_ssim"], pt["phase_ssim"]])
    for pt in p["ptychi"]["curve"]:
        if pt["epoch"] in (1, 2, 5, 10):
            rows.append([f"pty-chi LSQML, epoch {pt['epoch']}", "", pt["seconds"], pt["amplitude_ssim"],
                         pt["phase_ssim"]])
    targets = h.table(["target phase SSIM", "set by", "PINN seconds", "pty-chi seconds (epoch)",
                       "pty-chi time / PINN time"],
                      [[t["target_phase_ssim"], t["set_by"],
                        t["pinn_seconds"] if t.get("pinn_seconds") is not None else "not reached",
                        (f"{t['ptychi_seconds']:.3g} ({t['ptychi_epoch']})" if t.get("ptychi_seconds") is not None
                         else "not reached"),
                        (t["ptychi_seconds"] / t["pinn_seconds"]
                         if t.get("ptychi_seconds") and t.get("pinn_seconds") else None)]
                       for t in p["time_to_phase_ssim"]])
    flat = p["flat_object"]
    return (f"**pty-chi side by side** (simulate_scan: {p['scan']['simulate_scan']['num_positions']} positions, N=64, "
            f"10^5 photons; fixed known probe and positions for both; a flat object scores amplitude/phase SSIM "
            f"{flat['flat_amplitude_ssim']:.3f}/{flat['flat_phase_ssim']:.3f}):\n\n"
            + h.table(["method", "work", "seconds", "amplitude SSIM", "phase SSIM"], rows)
            + "\n\nTime to reach the same phase SSIM:\n\n" + targets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    h.add_common_arguments(parser, "suite", quick_help="CI-sized: tiny sizes, no pty-chi")
    parser.add_argument("--no-ptychi", action="store_true", help="skip the pty-chi comparison")
    parser.add_argument("--ptychi-python", type=Path, default=PTYCHI_PYTHON,
                        help="python of pty-chi's own environment (default: .venv-ptychi/bin/python)")
    parser.add_argument("--pretrained-model", type=Path, default=None,
                        help="model.ckpt (N=64, gridsize 1) for the pretrained-inference comparison instead "
                             "of training one (untimed) on another simulated scan")
    parser.add_argument("--ptychi-epochs", type=int, default=None, help="LSQML epochs (default 25)")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="PINN pretraining epochs (default 3)")
    parser.add_argument("--fit-epochs", type=int, default=None, help="PINN fitting epochs (default 3)")
    parser.add_argument("--scan-sizes", default=None,
                        help="comma-separated scan sizes for both scaling series (default per device)")
    args = parser.parse_args(argv)

    h.quiet_third_party_logs()
    start = time.perf_counter()
    device = h.torch_device(args.device)
    precisions = args.precision or (["32-true", "bf16-mixed"] if device.type == "cuda" else ["32-true"])
    plan = make_plan(args.quick, device)
    for name in ("ptychi_epochs", "pretrain_epochs", "fit_epochs"):
        if getattr(args, name) is not None:
            plan = dataclasses.replace(plan, **{name: getattr(args, name)})
    if args.scan_sizes:
        sizes = tuple(int(float(s)) for s in args.scan_sizes.split(","))
        plan = dataclasses.replace(plan, scaling_network_sizes=sizes, scaling_pipeline_sizes=sizes)
    info = h.machine_info(device)
    doc: dict[str, Any] = {
        "benchmark": "suite", "schema": 1, "quick": args.quick, "device": device.type, "precisions": precisions,
        "machine": info, "plan": dataclasses.asdict(plan), "partial": True,
        "notes": [
            "figures are the fastest of interleaved repeats; medians and all times are in the rows",
            "end_to_end_over_bare = reconstruct_object time / bare generator time for the same positions",
            f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        ],
    }
    json_path = args.out / f"suite-{device.type}.json"

    def section(name: str, value: Any) -> Any:
        doc[name] = value
        h.write_json(json_path, doc)  # partial results survive a later failure or time-out
        return value

    peak = section("peak", measure_peak(device, plan.matmul_seconds))
    flops = section("flops", measure_flops(plan, device))
    inference = section("inference", measure_inference(plan, device, precisions, flops, peak))
    training = section("training", measure_training(plan, device, precisions, flops, peak))
    section("scaling", measure_scaling(plan, device))
    if args.quick or args.no_ptychi or not plan.ptychi:
        section("ptychi", {"status": "skipped", "reason": "--quick" if args.quick else "--no-ptychi"})
    else:
        section("ptychi", compare_ptychi(plan, device, args.ptychi_python, pretrained=args.pretrained_model))
    if device.type == "cpu":  # best of start and end: the same matmul, less disturbed by other load
        peak["matmul_fp32_gflops"] = max(peak["matmul_fp32_gflops"],
                                         h.matmul_peak(device, torch.float32, min_seconds=plan.matmul_seconds))
        for row in inference + training:
            row["fraction_of_peak"] = row["achieved_gflops"] / peak_gflops(peak, row["precision"])
    h.finish_info(info, start)
    doc["partial"] = False
    path = h.write_json(json_path, doc)
    print(f"wrote {path}")
    if not args.no_doc:
        h.update_markdown(args.doc, f"suite-{device.type}", markdown(doc))
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
