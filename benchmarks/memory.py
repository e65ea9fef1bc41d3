"""Large scans: peak host memory and time per pattern of reconstruction from diffraction.h5.

Synthetic uint16 scans are written in Ptychodus's batch layout (``diffraction.h5`` with
h5py's automatic chunks and lzf compression, as ``ptychodus.api.io.save_diffraction_data``
writes it, plus ``product.h5`` written by Ptychodus's ``save_product``). Their patterns are the
Poisson counts of a small simulated scan (``simulate_scan``, 256 positions) repeated in order,
and their positions repeat that scan's positions: many passes over one area, so the object
canvas stays the small scan's whatever the number of patterns and the memory measured is the
data path's. Every case runs in its own process (``--case``), which reports its own ``VmHWM``
(peak resident memory over its life) and ``VmRSS`` at stages.

Cases:

* ``cli``: ``ptychopinn-torch reconstruct DIR --model MODEL`` end to end (an untrained model of
  the PtychoPINN default size; speed and memory do not depend on the weights).
* ``datapath``: ``load_scan`` + ``reconstruct_object`` over every pattern with a stand-in
  network (a constant patch), so the data path (lazy open, chunked statistics, dataset batches,
  stitching, refinement reads) is measured without the network's CPU time; ``bounded`` runs the
  same engine code for a fixed number of batches (sequential stitch batches, then random
  refinement batches) where a full pass does not fit the time.
* ``handoff``: the Ptychodus side of a reconstruction: a process holding the patterns (as
  Ptychodus does) builds the ScanData and runs the job in a spawned worker through
  ``JobRunner``; the worker reads every pattern through the dataset's batches. Both processes'
  peaks are reported against the patterns' own size.

    python benchmarks/memory.py                 # the full set (see --help for sizes)
    python benchmarks/memory.py --quick         # CI-sized: seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TEMPLATE_POSITIONS = 256
MIB = 2**20


# ----------------------------------------------------------------------------- memory probes
def _status() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        import resource

        peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        out = {"VmHWM": peak, "VmRSS": peak}
    return out


class Stages:
    """``VmRSS``/``VmHWM`` (MiB) and wall seconds at named points of one process."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.points: dict[str, dict[str, float]] = {}

    def mark(self, name: str) -> None:
        s = _status()
        self.points[name] = {"rss_mib": round(s.get("VmRSS", 0) / MIB, 1),
                             "peak_mib": round(s.get("VmHWM", 0) / MIB, 1),
                             "seconds": round(time.perf_counter() - self.start, 2),
                             "cpu_seconds": round(time.process_time(), 2)}


# ----------------------------------------------------------------------------- scan files
def template(n: int, seed: int = 0) -> Any:
    from ptychodus_ptychopinn_torch.simulate import simulate_scan

    return simulate_scan(num_positions=TEMPLATE_POSITIONS, N=n, seed=seed)


def write_scan(directory: Path, m: int, n: int, *, seed: int = 0) -> dict[str, Any]:
    """diffraction.h5 + product.h5 of ``m`` patterns (the template's, repeated) in Ptychodus's layout."""
    import h5py
    from ptychodus.api.io import DiffractionFileKeys, save_product
    from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
    from ptychodus.api.product import Product

    sim = template(n, seed)
    counts = np.asarray(sim.diffraction.get_patterns())
    if counts.max() > np.iinfo(np.uint16).max:
        raise ValueError("template counts exceed uint16")
    counts = counts.astype(np.uint16)
    t = counts.shape[0]
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pixel = sim.diffraction.get_pixel_geometry()
    with h5py.File(directory / "diffraction.h5", "w") as handle:
        handle.create_dataset(DiffractionFileKeys.INDEXES, data=np.arange(m, dtype=np.int64), compression="lzf")
        patterns = handle.create_dataset(DiffractionFileKeys.PATTERNS, shape=(m, n, n), dtype=np.uint16,
                                         compression="lzf")  # h5py's automatic chunks, as Ptychodus
        patterns.attrs[DiffractionFileKeys.DETECTOR_PIXEL_WIDTH] = pixel.width_m
        patterns.attrs[DiffractionFileKeys.DETECTOR_PIXEL_HEIGHT] = pixel.height_m
        handle.create_dataset(DiffractionFileKeys.BAD_PIXELS, data=np.zeros((n, n), bool), compression="lzf")
        slab = patterns.chunks[0] * max(1, (64 * MIB) // (patterns.chunks[0] * n * n * 2))
        for lo in range(0, m, slab):
            hi = min(m, lo + slab)
            patterns[lo:hi] = counts[np.arange(lo, hi) % t]
        chunks = patterns.chunks
    positions = sim.product.probe_positions
    x, y = positions.get_coordinates_x_m(), positions.get_coordinates_y_m()
    points = [ProbePosition(index=i, x_m=float(x[i % t]), y_m=float(y[i % t])) for i in range(m)]
    product = Product(metadata=sim.product.metadata, probe_positions=ProbePositionSequence(points),
                      probes=sim.product.probes, object_=sim.product.object_, losses=[])
    save_product(directory / "product.h5", product)
    size = (directory / "diffraction.h5").stat().st_size
    return {"patterns": m, "N": n, "dtype": "uint16", "chunks": list(chunks), "compression": "lzf",
            "file_mib": round(size / MIB, 1), "stored_mib": round(m * n * n * 2 / MIB, 1),
            "object_shape": list(sim.product.object_.get_layer(0).shape),
            "write_seconds": round(time.perf_counter() - start, 1)}


def write_model(path: Path, n: int, seed: int = 0) -> Path:
    """An untrained model of the PtychoPINN default size for the template's probe."""
    import torch

    from ptychodus_ptychopinn_torch.checkpoint import ModelBundle, build_model, save_model
    from ptychodus_ptychopinn_torch.config import ModelConfig, TrainingConfig
    from ptychodus_ptychopinn_torch.data.grouping import group_positions
    from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
    from ptychodus_ptychopinn_torch.workflows.engine import derive_constants

    scan = scan_from_reconstruct_input(template(n, seed).reconstruct_input)
    training = TrainingConfig(model=ModelConfig(N=n), nepochs=1)
    constants = derive_constants(scan, training, group_positions(scan.positions_px, gridsize=1))
    torch.manual_seed(seed)
    bundle = ModelBundle(network=build_model(training, constants, scan.probe), training_config=training,
                         constants=constants, probe=scan.probe)
    return save_model(bundle, path)


# ----------------------------------------------------------------------------- cases (child side)
def _stub_bundle(n: int, probe: np.ndarray) -> Any:
    """A bundle whose network predicts a constant patch: the engine's data path without its CPU."""
    import torch

    from ptychodus_ptychopinn_torch.checkpoint import ModelBundle
    from ptychodus_ptychopinn_torch.config import ModelConfig, TrainingConfig

    class Constant(torch.nn.Module):
        def predict_object(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ones(x.shape, dtype=torch.complex64)

    return ModelBundle(network=Constant(), training_config=TrainingConfig(model=ModelConfig(N=n)),
                       constants=None, probe=probe)  # type: ignore[arg-type]


def case_cli(spec: dict[str, Any]) -> dict[str, Any]:
    stages = Stages()
    import ptychodus.api.io  # noqa: F401 - the imports are the baseline, as in a real run
    import torch  # noqa: F401

    from ptychodus_ptychopinn_torch import cli
    from ptychodus_ptychopinn_torch.workflows import engine  # noqa: F401 - torch, Lightning

    stages.mark("imported")
    out = Path(spec["workdir"]) / f"out-{os.getpid()}.npz"
    start, cpu = time.perf_counter(), time.process_time()
    code = cli.main(["reconstruct", spec["data"], "--model", spec["model"], "--out", str(out), "--device", "cpu",
                     "--refine-iterations", str(spec["refine"])])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    stages.mark("reconstructed")
    out.unlink(missing_ok=True)
    if code != 0:
        raise RuntimeError(f"ptychopinn-torch reconstruct exited with {code}")
    return {"seconds": seconds, "cpu_seconds": cpu, "stages": stages.points}


def case_datapath(spec: dict[str, Any]) -> dict[str, Any]:
    stages = Stages()
    import torch

    from ptychodus_ptychopinn_torch.config import ExecutionConfig, InferenceConfig
    from ptychodus_ptychopinn_torch.data.io import load_scan
    from ptychodus_ptychopinn_torch.workflows import engine

    stages.mark("imported")
    t0, c0 = time.perf_counter(), time.process_time()
    scan = load_scan(spec["data"])
    load_seconds, load_cpu = time.perf_counter() - t0, time.process_time() - c0
    stages.mark("loaded")
    result: dict[str, Any] = {"load_seconds": load_seconds, "load_cpu_seconds": load_cpu,
                              "num_positions": scan.num_positions,
                              "source": type(getattr(scan.amplitudes, "source", scan.amplitudes)).__name__}
    n = scan.N
    bundle = _stub_bundle(n, scan.probe)
    batch = int(spec.get("batch", 64))
    execution = ExecutionConfig(accelerator="cpu", inference_batch_size=batch)
    if not spec.get("bounded"):
        inference = InferenceConfig(model=bundle.model_config, refine_iterations=int(spec["refine"]))
        t0, c0 = time.perf_counter(), time.process_time()
        rec = engine.reconstruct_object(bundle, scan, inference, execution)
        result["engine_seconds"] = time.perf_counter() - t0
        result["engine_cpu_seconds"] = time.process_time() - c0
        result["refine_seconds"] = rec.refinement.seconds
        result["patterns_processed"] = scan.num_positions
        stages.mark("reconstructed")
        return {**result, "stages": stages.points}

    # Bounded: the engine's own pieces for a fixed number of batches.
    from ptychodus_ptychopinn_torch.data.dataset import GroupedDataset, normalisation_factor
    from ptychodus_ptychopinn_torch.data.grouping import group_positions
    from ptychodus_ptychopinn_torch.refinement import PositionBatch, ScanTensors

    batches = int(spec["batches"])
    device = torch.device("cpu")
    groups = group_positions(scan.positions_px, gridsize=1, all_positions=True)
    dataset = GroupedDataset(scan, groups, normalisation_factor(scan.amplitudes))
    intensity = torch.abs(torch.as_tensor(scan.probe)) ** 2
    weight = intensity / intensity.max()
    t0, c0 = time.perf_counter(), time.process_time()
    indices = np.arange(min(len(groups), batches * batch))
    engine._stitch_shard(bundle.network, dataset, indices, scan.object_shape, weight, device, batch,
                         "32-true", n, lambda: None, None)
    stitch_seconds, stitch_cpu = time.perf_counter() - t0, time.process_time() - c0
    stages.mark("stitched")
    data = ScanTensors.from_patterns(scan.amplitudes, scan.positions_px, scan.object_shape, scan.bad_pixels)
    spectrum = torch.fft.fft2(torch.as_tensor(scan.probe, dtype=torch.complex64))
    canvas = torch.ones(scan.object_shape[0] * scan.object_shape[1], dtype=torch.complex64)
    order = torch.randperm(scan.num_positions, generator=torch.Generator().manual_seed(0))
    t0, c0 = time.perf_counter(), time.process_time()
    nll = 0.0
    with torch.no_grad():
        for index in order.split(engine.REFINE_BATCH_SIZE)[:batches]:
            position_batch = PositionBatch(data, index, spectrum, device)
            nll += position_batch.nll(position_batch.intensity(canvas))
    refine_seconds, refine_cpu = time.perf_counter() - t0, time.process_time() - c0
    stages.mark("refinement reads")
    refine_patterns = min(batches * engine.REFINE_BATCH_SIZE, scan.num_positions)
    return {**result, "stitch_seconds": stitch_seconds, "stitch_cpu_seconds": stitch_cpu,
            "stitch_patterns": int(indices.size), "refine_read_seconds": refine_seconds,
            "refine_read_cpu_seconds": refine_cpu, "refine_patterns": refine_patterns,
            "patterns_processed": int(indices.size), "stages": stages.points}


def handoff_worker(job: Any, emit: Any, should_stop: Any) -> None:
    """JobRunner entry point: read every pattern through the dataset's batches, as inference does."""
    stages = Stages()
    import torch  # noqa: F401

    from ptychodus_ptychopinn_torch.data.dataset import GroupedDataset, normalisation_factor
    from ptychodus_ptychopinn_torch.data.grouping import group_positions

    stages.mark("imported")
    scan = job.scan
    t0 = time.perf_counter()
    groups = group_positions(scan.positions_px, gridsize=1, all_positions=True)
    dataset = GroupedDataset(scan, groups, normalisation_factor(scan.amplitudes))
    total = 0.0
    for start in range(0, len(groups), 64):
        total += float(dataset.get_batch(np.arange(start, min(start + 64, len(groups))))["amplitudes"].sum())
    stages.mark("read")
    emit("result", {"stages": stages.points, "read_seconds": time.perf_counter() - t0, "checksum": total,
                    "source": type(getattr(scan.amplitudes, "source", None)).__name__})


def case_handoff(spec: dict[str, Any]) -> dict[str, Any]:
    """The Ptychodus process: no torch; holds the patterns; runs the job in a spawned worker."""
    stages = Stages()
    from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
    from ptychodus.api.product import Product
    from ptychodus.api.reconstruct import ReconstructInput

    from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
    from ptychodus_ptychopinn_torch.integration.protocol import ReconstructJob
    from ptychodus_ptychopinn_torch.integration.runner import JobRunner

    m, n = int(spec["patterns"]), int(spec["N"])
    sim = template(n)
    counts = np.asarray(sim.diffraction.get_patterns()).astype(np.uint16)
    stages.mark("imported")
    patterns = np.empty((m, n, n), dtype=np.uint16)  # Ptychodus's own copy of the patterns
    for lo in range(0, m, counts.shape[0]):
        hi = min(m, lo + counts.shape[0])
        patterns[lo:hi] = counts[: hi - lo]
    positions = sim.product.probe_positions
    x, y = positions.get_coordinates_x_m(), positions.get_coordinates_y_m()
    t = counts.shape[0]
    points = [ProbePosition(index=i, x_m=float(x[i % t]), y_m=float(y[i % t])) for i in range(m)]
    product = Product(metadata=sim.product.metadata, probe_positions=ProbePositionSequence(points),
                      probes=sim.product.probes, object_=sim.product.object_, losses=[])
    ri = ReconstructInput(patterns, np.zeros((n, n), bool), product)
    stages.mark("patterns held")
    t0 = time.perf_counter()
    scan = scan_from_reconstruct_input(ri)
    scan_seconds = time.perf_counter() - t0
    stages.mark("scan built")
    job = ReconstructJob(scan=scan, model_path=None, configs={})
    runner = JobRunner(entry_point=f"{Path(__file__).resolve()}:handoff_worker",
                       scratch_dir=spec.get("scratch"))
    t0 = time.perf_counter()
    events = list(runner.run(job))
    run_seconds = time.perf_counter() - t0
    stages.mark("job done")
    worker = events[-1][1]
    return {"patterns_mib": round(patterns.nbytes / MIB, 1), "scan_seconds": scan_seconds,
            "run_seconds": run_seconds, "worker": worker, "torch_in_parent": "torch" in sys.modules,
            "stages": stages.points}


def case_reads(spec: dict[str, Any]) -> dict[str, Any]:
    """Per-pattern cost of a batch read (random and sequential, 64 patterns) by where the stored
    counts are: memory, a raw file, diffraction.h5 with h5py's automatic (tiled) or whole-frame
    chunks (lzf; the dataset fits the chunk cache, so these are the cached costs)."""
    import h5py

    from ptychodus_ptychopinn_torch.data.patterns import DiffractionPatterns, HDF5Patterns, write_raw

    m, n = int(spec["patterns"]), int(spec["N"])
    rng = np.random.default_rng(0)
    counts = rng.poisson(20.0, size=(m, n, n)).astype(np.uint16)
    work = Path(spec["workdir"])
    stacks = {"memory": DiffractionPatterns(counts)}
    stacks["raw file"] = DiffractionPatterns(write_raw(stacks["memory"], work / "reads.raw"))
    for name, chunks in (("h5, automatic chunks", True), ("h5, one frame per chunk", (1, n, n))):
        path = work / f"reads-{len(stacks)}.h5"
        with h5py.File(path, "w") as handle:
            handle.create_dataset("patterns", data=counts, chunks=chunks, compression="lzf")
        source = HDF5Patterns(path)
        stacks[f"{name} {source.chunks}"] = DiffractionPatterns(source)
    out = {}
    for name, stack in stacks.items():
        stack.amplitudes(np.arange(64))
        times = {}
        for order in ("random", "sequential"):
            t0 = time.perf_counter()
            for k in range(50):
                index = rng.integers(0, m, 64) if order == "random" else np.arange(64 * k, 64 * k + 64) % m
                stack.amplitudes(index)
            times[f"{order}_us_per_pattern"] = 1e6 * (time.perf_counter() - t0) / (50 * 64)
        out[name] = times
        stack.close()
    for path in work.glob("reads*"):
        path.unlink()
    return {"reads": out, "stages": {}}


CASES = {"cli": case_cli, "datapath": case_datapath, "handoff": case_handoff, "reads": case_reads}


def run_case(spec: dict[str, Any], python: str = sys.executable, env: dict[str, str] | None = None,
             threads: int = 1) -> dict[str, Any]:
    """Run one case in a fresh process and return what it reports (plus its peak RSS).

    ``threads`` intra-op threads (``OMP_NUM_THREADS``, inherited by spawned workers): on a shared
    machine, OpenMP threads of a descheduled process spin while they wait for each other, which
    made a 2-thread run 16x slower than a 1-thread run here (docs/performance.md).
    """
    start = time.perf_counter()
    env = {**(env or os.environ), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run([python, str(Path(__file__).resolve()), "--case", json.dumps(spec)],
                          capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"case {spec} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    result["spec"] = {k: v for k, v in spec.items() if k not in ("workdir",)}
    return result


def _case_main(text: str) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(text)
    result = CASES[spec["kind"]](spec)
    status = _status()
    result["peak_mib"] = round(status.get("VmHWM", 0) / MIB, 1)
    print(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- orchestration
def plan(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        return {"cli": [(500, 64), (1000, 64)], "datapath": [(1000, 64), (4000, 64)], "bounded": [],
                "handoff": [(2000, 64)], "refine": 2, "bounded_batches": 4}
    return {"cli": [(1000, 64), (10_000, 64)], "datapath": [(10_000, 64), (100_000, 64)],
            "bounded": [] if args.skip_big else [(args.big_patterns, args.big_n)],
            "handoff": [(100_000, 128)], "refine": 10, "bounded_batches": 100}


def _per_pattern_ms(seconds: float, patterns: int) -> float:
    return round(1000.0 * seconds / max(patterns, 1), 3)


def summarise(results: dict[str, Any]) -> list[list[Any]]:
    """One row per cli/datapath case: sizes, peaks, per-pattern wall and CPU time."""
    rows = []
    for r in results["cases"]:
        spec, scan = r["spec"], r.get("scan", {})
        kind = spec["kind"]
        if kind not in ("cli", "datapath"):
            continue
        base = r["stages"].get("imported", {}).get("peak_mib", 0.0)
        label = kind + (" (" + spec["code"] + ")" if spec.get("code") else "")
        if kind == "cli":
            work = f"`reconstruct`: network + {spec['refine']} refinement passes"
            patterns, wall, cpu = scan["patterns"], r["seconds"], r["cpu_seconds"]
        elif not spec.get("bounded"):
            work = f"`load_scan` + `reconstruct_object`, stand-in network, {spec['refine']} refinement pass"
            patterns, wall, cpu = scan["patterns"], r["engine_seconds"], r.get("engine_cpu_seconds")
        else:
            work = (f"`load_scan` (all patterns); {r['stitch_patterns']:,} stitched (stand-in network), "
                    f"{r['refine_patterns']:,} through refinement batches")
            patterns = r["stitch_patterns"] + r["refine_patterns"]
            wall = r["stitch_seconds"] + r["refine_read_seconds"]
            cpu = r["stitch_cpu_seconds"] + r["refine_read_cpu_seconds"]
        load = r.get("load_seconds")
        rows.append([label, f"{scan['patterns']:,} x {scan['N']}²", scan.get("stored_mib"), scan.get("chunks") and
                     "x".join(map(str, scan["chunks"])), r.get("source", "n/a"), r["peak_mib"], base,
                     round(r["peak_mib"] - base, 1), load, _per_pattern_ms(wall, patterns),
                     None if cpu is None else _per_pattern_ms(cpu, patterns), work])
    return rows


def markdown(results: dict[str, Any], info_line: str) -> str:
    from harness import table  # noqa: PLC0415 - harness imports torch

    machine = results["machine"]
    lines = [info_line + f" Host memory {machine.get('memory_total_mib', 0):,} MiB; every case ran with "
             f"{machine.get('case_threads', '?')} intra-op thread(s).", "",
             table(["case", "scan", "stored MiB", "h5 chunks", "read from", "peak MiB", "baseline MiB",
                    "added MiB", "load s", "wall ms / pattern", "CPU ms / pattern", "what ran"],
                   summarise(results))]
    handoffs = [r for r in results["cases"] if r["spec"]["kind"] == "handoff"]
    if handoffs:
        rows = []
        for r in handoffs:
            parent, worker = r["stages"], r["worker"]["stages"]
            added = (r["peak_mib"] - parent["imported"]["peak_mib"] - r["patterns_mib"]
                     + worker["read"]["peak_mib"] - worker["imported"]["peak_mib"])
            rows.append([f"{r['spec']['patterns']:,} x {r['spec']['N']}²", r["patterns_mib"],
                         parent["imported"]["peak_mib"], parent["patterns held"]["peak_mib"], r["peak_mib"],
                         worker["imported"]["peak_mib"], worker["read"]["peak_mib"], round(added, 1),
                         round(r["scan_seconds"], 1), round(r["run_seconds"], 1), r["worker"]["source"]])
        lines += ["", table(["hand-off", "patterns MiB", "parent baseline", "parent holding them", "parent peak",
                             "worker baseline", "worker peak", "both, above baselines + patterns MiB",
                             "ScanData s", "run s", "worker reads from"], rows)]
    reads = [r for r in results["cases"] if r["spec"]["kind"] == "reads"]
    if reads:
        r = reads[0]
        rows = [[name, t["random_us_per_pattern"], t["sequential_us_per_pattern"]] for name, t in r["reads"].items()]
        lines += ["", f"Batch reads (64 patterns of {r['spec']['N']}² uint16 counts to float32 amplitudes, "
                  f"{r['spec']['patterns']:,}-pattern stack, cached):", "",
                  table(["stored in", "random µs / pattern", "sequential µs / pattern"], rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--case"]:
        return _case_main(argv[1])
    sys.path.insert(0, str(HERE))
    import harness  # noqa: PLC0415 - imports torch; the case processes do not need it here

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.add_common_arguments(parser, "memory", quick_help="CI-sized scans (seconds)", precision=False)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the synthetic scans are written (default: a temporary directory, removed)")
    parser.add_argument("--keep-files", action="store_true", help="keep the synthetic scans")
    parser.add_argument("--big-patterns", type=int, default=100_000, help="patterns of the scan larger than RAM/2")
    parser.add_argument("--big-n", type=int, default=256, help="pattern size of that scan")
    parser.add_argument("--skip-big", action="store_true", help="leave out the scan larger than RAM/2")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every case (default 1)")
    parser.add_argument("--compare-with", type=Path, default=None,
                        help="a checkout of older code: rerun the N=64 data-path cases with it")
    args = parser.parse_args(argv)
    if args.device != "cpu":
        parser.error("memory.py measures host memory on the CPU path; use --device cpu")
    import torch

    start = time.perf_counter()
    info = harness.machine_info(torch.device("cpu"))
    info["memory_total_mib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MIB)
    info["case_threads"] = args.threads
    steps = plan(args)
    owned = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ptychopinn-memory-")) if owned else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"benchmark": "memory", "quick": args.quick, "machine": info, "cases": []}

    def scan_dir(m: int, n: int) -> tuple[Path, dict[str, Any]]:
        directory = workdir / f"scan-{m}-{n}"
        meta = directory / "meta.json"
        if meta.exists():
            return directory, json.loads(meta.read_text())
        written = write_scan(directory, m, n)
        meta.write_text(json.dumps(written))
        print(f"wrote {directory}: {written}", flush=True)
        return directory, written

    def record(spec: dict[str, Any], scan: dict[str, Any] | None, **kw: Any) -> None:
        result = run_case({**spec, "workdir": str(workdir)}, threads=args.threads, **kw)
        if scan is not None:
            result["scan"] = scan
        results["cases"].append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "stages"}), flush=True)

    try:
        for m, n in steps["cli"]:
            model = workdir / f"model-{n}.ckpt"
            if not model.exists():
                write_model(model, n)
            directory, scan = scan_dir(m, n)
            record({"kind": "cli", "data": str(directory), "model": str(model), "refine": steps["refine"]}, scan)
        for m, n in steps["datapath"]:
            directory, scan = scan_dir(m, n)
            record({"kind": "datapath", "data": str(directory), "refine": 1}, scan)
            if args.compare_with is not None:
                env = {**os.environ, "PYTHONPATH": str(args.compare_with.resolve())}
                record({"kind": "datapath", "data": str(directory), "refine": 1, "code": "before"}, scan, env=env)
        for m, n in steps["bounded"]:
            directory, scan = scan_dir(m, n)
            free = shutil.disk_usage(workdir).free
            record({"kind": "datapath", "data": str(directory), "bounded": True,
                    "batches": steps["bounded_batches"]}, scan)
            results["cases"][-1]["disk_free_mib_after"] = round(free / MIB)
            shutil.rmtree(directory)  # tens of GB: gone before the next case
        for m, n in steps["handoff"]:
            record({"kind": "handoff", "patterns": m, "N": n, "scratch": str(workdir)}, None)
        record({"kind": "reads", "patterns": 4000, "N": 64}, None)
    finally:
        if owned and not args.keep_files:
            shutil.rmtree(workdir, ignore_errors=True)
    harness.finish_info(info, start)
    path = harness.write_json(args.out / "memory-cpu.json", results)
    print(f"wrote {path}")
    if not args.no_doc:
        harness.update_markdown(args.doc, "memory-cpu", markdown(results, harness.machine_line(info)))
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
