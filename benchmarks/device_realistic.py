"""Realistic cases on a machine without Ptychodus (a lent GPU): export here, run there, score here.

    python benchmarks/device_realistic.py export --scans .device/scans          # here (needs Ptychodus)
    python benchmarks/device_realistic.py run --scans .device/scans --device cuda --out $OUT   # there
    python benchmarks/device_realistic.py score --scans .device/scans --objects DIR            # here

A GPU machine that has torch and Lightning but neither Ptychodus nor pty-chi's own environment
cannot run `benchmarks/realistic.py`, which simulates and scores with Ptychodus. So the work is
split in three, each step on the machine that can do it:

* ``export`` simulates the cases of `benchmarks/cases/realistic.json` (``simulate_scan``, the same
  seed as the suite) and writes each scan as pty-chi's driver input NPZ plus the true object.
* ``run`` (engine + torch only; pty-chi through ``benchmarks/ptychi_driver.py`` when it imports)
  does, per case: the suite's self-fit (gridsize-1 PINN with the case's settings, network alone,
  then the case's ``match_passes`` refinement passes), timed as a whole; pty-chi LSQML on the same
  device until the same wall time, with a snapshot at 100 epochs; and last, for the first case, the
  capacity fit (supervised on the true object, `refined_labels.SETTINGS`) for as many epochs as fit
  ``--capacity-seconds`` (timed from epochs 2-6 of a short probe run).
  It writes the objects and timings (``device-objects-<case>.npz``, ``device-realistic-run.json``).
* ``score`` re-simulates each case here (deterministic), scores every object with
  `evaluation.evaluate_object` and its excess NLL, and writes
  ``benchmarks/results/device-realistic-<device>.json`` and its section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402
import realistic  # noqa: E402
import refined_labels  # noqa: E402

NAME = "device-realistic"
DEFAULT_CASES = "brick-gravel,text-grass"
PTYCHI_EPOCHS = 100


def export(cases: list[Any], out: Path) -> None:
    from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
    from ptychodus_ptychopinn_torch.simulate import simulate_scan

    out.mkdir(parents=True, exist_ok=True)
    for case in cases:
        sim = simulate_scan(**case.simulate_kwargs())
        scan = scan_from_reconstruct_input(sim.reconstruct_input)
        truth = np.asarray(sim.product.object_.get_layers_flattened(), dtype=np.complex64)
        truth = truth.reshape(-1, *scan.object_shape)[0]
        pixel = sim.product.object_.get_pixel_geometry()
        patterns = np.asarray(sim.reconstruct_input.diffraction_patterns)
        counts = patterns.astype(np.uint32) if np.array_equal(patterns, np.round(patterns)) else patterns
        path = out / f"{case.name}.npz"
        np.savez_compressed(path, patterns=counts, probe=scan.probe, positions_px=scan.positions_px,
                            object_shape=np.asarray(scan.object_shape), pixel_size_m=pixel.width_m,
                            wavelength_m=sim.product.metadata.photon_wavelength_m, truth=truth,
                            propagator_scale=np.float64(scan.propagator_scale or math.nan))
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


def load_scan(path: Path, *, with_truth: bool = False) -> Any:
    from ptychodus_ptychopinn_torch.data.scan import ScanData

    raw = h.load_npz(path)
    scale = float(raw["propagator_scale"])
    return ScanData(amplitudes=np.sqrt(raw["patterns"].astype(np.float32)), probe=raw["probe"],
                    positions_px=raw["positions_px"], object_shape=tuple(int(v) for v in raw["object_shape"]),
                    object_guess=raw["truth"] if with_truth else None,
                    propagator_scale=None if math.isnan(scale) else scale)


def self_fit(case: Any, scan: Any, device: torch.device, log=print) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The suite's self-fit on ``device``: train (case settings), network alone, + match passes."""
    from ptychodus_ptychopinn_torch.config import InferenceConfig
    from ptychodus_ptychopinn_torch.workflows.engine import reconstruct_object, refine_reconstruction, train_model

    execution = h.execution_config(device.type)
    training = case.training_config()
    losses: list[float] = []
    h.sync(device)
    t0 = time.perf_counter()
    bundle = train_model(scan, training, execution, on_epoch=lambda r: losses.append(r.train_loss))
    h.sync(device)
    train_s = time.perf_counter() - t0
    net = reconstruct_object(bundle, scan, InferenceConfig(model=bundle.model_config, refine_iterations=0), execution)
    network_s = float(net.network_seconds if net.network_seconds is not None else net.seconds)
    rec = refine_reconstruction(net, scan, InferenceConfig(model=bundle.model_config,
                                                           refine_iterations=case.match_passes), execution)
    refine_s = float(rec.refinement.seconds)
    record = {"epochs": training.nepochs, "steps": training.nepochs * case.steps_per_epoch,
              "batch_size": training.batch_size, "train_seconds": train_s, "network_seconds": network_s,
              "refine_passes": case.match_passes, "refine_seconds": refine_s,
              "self_fit_seconds": train_s + network_s + refine_s, "losses": losses,
              "refine_final_loss": rec.refinement.final_loss}
    log(f"[{case.name}] self-fit: train {train_s:.1f} s ({record['steps']} steps), network {network_s:.2f} s, "
        f"{case.match_passes} passes {refine_s:.1f} s; final loss {losses[-1]:.4f}", flush=True)
    return record, {"network": net.object, "refined": rec.object}


def ptychi(npz: Path, device: torch.device, until_seconds: float, python: Path, epochs: int = PTYCHI_EPOCHS,
           log=print) -> tuple[dict[str, Any], dict]:
    """pty-chi LSQML with ``python`` (one that imports ptychi): ``epochs`` epochs, then on until
    ``until_seconds``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ptychi.npz"
        try:
            summary = h.run_ptychi_driver(npz, out, python, device, epochs=epochs, snapshots=[epochs],
                                          snapshot_seconds=[until_seconds], until_seconds=until_seconds,
                                          timeout=max(900.0, 4 * until_seconds))
        except Exception as exc:  # noqa: BLE001 - report, do not lose the rest of the run
            log(f"pty-chi failed: {exc}", flush=True)
            return {"status": "failed", "reason": str(exc)}, {}
        raw = h.load_npz(out)
    record = {"status": "ok", **summary, "epochs": [int(e) for e in raw["epochs"]],
              "seconds": [float(s) for s in raw["seconds"]], "setup_seconds": float(raw["setup_seconds"]),
              "median_epoch_seconds": float(np.median(raw["epoch_seconds"]))}
    log(f"pty-chi: snapshots at epochs {record['epochs']} ({[round(s, 1) for s in record['seconds']]} s), "
        f"median epoch {record['median_epoch_seconds'] * 1e3:.1f} ms", flush=True)
    objects = {f"ptychi-{int(e)}": o for e, o in zip(raw["epochs"], raw["objects"])}
    return record, objects


def capacity(case: Any, scan: Any, device: torch.device, budget_s: float,
             log=print) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Supervised fit of the true object (``scan.object_guess``; refined_labels.SETTINGS), epochs
    sized to ``budget_s``."""
    from ptychodus_ptychopinn_torch.config import InferenceConfig
    from ptychodus_ptychopinn_torch.workflows.engine import reconstruct_object, train_model

    settings = dict(refined_labels.SETTINGS)
    execution = h.execution_config(device.type, settings["precision"])

    def config(epochs: int) -> Any:
        return dataclasses.replace(refined_labels.training_config(case, epochs, settings), supervised_labels="object")

    probe_epochs, stamps = 6, []  # time epochs 2..6 only: the first carries set-up and warm-up
    train_model(scan, config(probe_epochs), execution, on_epoch=lambda r: stamps.append(time.perf_counter()))
    per_epoch = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    epochs = max(probe_epochs, int(budget_s / per_epoch))
    losses: list[float] = []
    t0 = time.perf_counter()
    bundle = train_model(scan, config(epochs), execution, on_epoch=lambda r: losses.append(r.train_loss))
    h.sync(device)
    train_s = time.perf_counter() - t0
    steps = epochs * -(-scan.num_positions // int(settings["batch_size"]))
    objects = {}
    no_truth = dataclasses.replace(scan, object_guess=None)
    for e in (None, 2.0):
        inference = InferenceConfig(model=bundle.model_config, refine_iterations=0, stitch_weight_exponent=e)
        objects["capacity" if e is None else f"capacity-e{e:g}"] = reconstruct_object(bundle, no_truth, inference,
                                                                                      execution).object
    record = {"settings": settings, "epochs": epochs, "steps": steps, "train_seconds": train_s,
              "seconds_per_epoch_probe": per_epoch, "losses": losses,
              "stitch_exponents": {"capacity": "automatic (3, supervised)", "capacity-e2": 2.0}}
    log(f"[{case.name}] capacity: {epochs} epochs ({steps} steps) in {train_s:.0f} s, final loss {losses[-1]:.4f}",
        flush=True)
    return record, objects


def run(args: argparse.Namespace) -> int:
    h.quiet_third_party_logs()
    device = h.torch_device(args.device)
    cases, _ = realistic.load_cases(args.cases_file, quick=args.quick)
    names = args.cases.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    info = h.machine_info(device)
    start = time.perf_counter()
    doc: dict[str, Any] = {"benchmark": NAME, "quick": args.quick, "machine": info, "cases": {}}
    objects: dict[str, dict[str, np.ndarray]] = {}

    def save(name: str) -> None:  # after every step, so that a run cut short keeps what it did
        np.savez_compressed(args.out / f"device-objects-{name}.npz", **objects[name])
        h.finish_info(info, start)
        h.write_json(args.out / "device-realistic-run.json", doc)

    first_scan = None  # with its truth, for the capacity fit
    for name in names:
        case, npz = cases[name], args.scans / f"{name}.npz"
        scan = load_scan(npz, with_truth=True)
        if first_scan is None:
            first_scan = scan
        scan = dataclasses.replace(scan, object_guess=None)
        if scan.num_positions != case.num_positions:
            raise SystemExit(f"{npz} holds {scan.num_positions} positions but case {name} has {case.num_positions}: "
                             "export and run with the same --quick")
        doc["cases"][name], objects[name] = self_fit(case, scan, device)
        save(name)
        if not args.no_ptychi:
            doc["cases"][name]["ptychi"], more = ptychi(npz, device, doc["cases"][name]["self_fit_seconds"],
                                                        args.ptychi_python)
            objects[name].update(more)
            save(name)
    if args.capacity_seconds > 0:  # last: its length is a time budget
        name = names[0]
        doc["cases"][name]["capacity"], more = capacity(cases[name], first_scan, device, args.capacity_seconds)
        objects[name].update(more)
        save(name)
    print(f"wrote {args.out}/device-realistic-run.json", flush=True)
    return 0


# ----------------------------------------------------------------------------- scoring (here)
def score(args: argparse.Namespace) -> int:
    from ptychodus_ptychopinn_torch.simulate import simulate_scan

    run_doc = json.loads((args.objects / "device-realistic-run.json").read_text())
    quick = bool(run_doc.get("quick"))
    cases, _ = realistic.load_cases(args.cases_file, quick=quick)
    cpu = torch.device("cpu")
    out: dict[str, Any] = {"benchmark": NAME, "quick": quick, "machine": run_doc["machine"], "cases": {}}
    for name, record in run_doc["cases"].items():
        case = cases[name]
        sim = simulate_scan(**case.simulate_kwargs())
        scan = load_scan(args.scans / f"{name}.npz")
        truth = h.load_npz(args.scans / f"{name}.npz")["truth"]
        lik = realistic.Likelihood(scan, cpu)
        truth_nll, _ = lik.nll(truth)
        objects = h.load_npz(args.objects / f"device-objects-{name}.npz")
        scored = {key: realistic._entry(key, 0.0, obj, sim.product, lik, truth_nll) for key, obj in objects.items()}
        out["cases"][name] = {**record, "truth_nll": truth_nll, "scores": scored}
        print(name, {k: f"{v['metrics']['amplitude_ssim']:.3f}/{v['metrics']['phase_ssim']:.3f}"
                     for k, v in scored.items()}, flush=True)
    key = f"{NAME}-{'cuda' if run_doc['machine'].get('gpu') else 'cpu'}{'-quick' if quick else ''}"
    path = h.write_json(args.results / f"{key}.json", out)
    print(f"wrote {path}")
    if not args.no_doc:
        h.update_markdown(args.doc, key, markdown(out))
    return 0


def _s(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "n/a"
    m = entry["metrics"]  # phases this close need the fourth digit
    return f"{m['amplitude_ssim']:.3f} / {m['phase_ssim']:.4f}"


def markdown(doc: dict[str, Any]) -> str:
    rows = []
    for name, r in doc["cases"].items():
        s = r["scores"]
        p = r.get("ptychi") or {}
        seconds = dict(zip(p.get("epochs", []), p.get("seconds", [])))
        last = max(seconds) if seconds else None
        rows.append([name, f"{r['steps']} ({r['batch_size']})", f"{r['train_seconds']:.1f}",
                     f"{r['self_fit_seconds']:.1f}", _s(s.get("network")), _s(s.get("refined")),
                     f"{_s(s.get(f'ptychi-{last}'))} ({last} ep.)" if last else "n/a",
                     f"{_s(s.get(f'ptychi-{PTYCHI_EPOCHS}'))} ({seconds.get(PTYCHI_EPOCHS, math.nan):.1f} s)"
                     if PTYCHI_EPOCHS in seconds else "n/a"])
    lines = [f"Machine: {h.machine_line(doc['machine'])} (`python benchmarks/device_realistic.py`: export and "
             "score on the CPU machine, run on the GPU; JSON: `benchmarks/results/device-realistic-cuda.json`)", "",
             h.table(["case", "PINN steps (batch)", "train s", "self-fit s (train + network + refinement)",
                      "network alone", "network + refinement passes", "pty-chi LSQML at the same time",
                      "pty-chi 100 epochs"], rows)]
    for name, r in doc["cases"].items():
        c = r.get("capacity")
        if c:
            s = r["scores"]
            lines += ["", f"Capacity on {name} (supervised on the true object, width 1, BatchNorm, batch 64, "
                      f"WarmupCosine 4e-3, bf16): {c['epochs']} epochs = {c['steps']} steps in "
                      f"{c['train_seconds']:.0f} s, final loss {c['losses'][-1]:.3f}; network alone "
                      f"{_s(s.get('capacity'))} (automatic stitch exponent 3), "
                      f"{_s(s.get('capacity-e2'))} (exponent 2)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("export", "run", "score"):
        p = sub.add_parser(name)
        p.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated case names")
        p.add_argument("--cases-file", type=Path, default=realistic.CASES_FILE)
        p.add_argument("--scans", type=Path, default=h.REPO / ".device" / "scans")
        if name == "export":
            p.add_argument("--quick", action="store_true", help="the cases' CI-sized settings")
            p.set_defaults(func=lambda a: export([realistic.load_cases(a.cases_file, quick=a.quick)[0][n]
                                                  for n in a.cases.split(",")], a.scans) or 0)
        elif name == "run":
            p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cuda")
            p.add_argument("--out", type=Path, required=True)
            p.add_argument("--quick", action="store_true", help="the cases' CI-sized settings (as exported)")
            p.add_argument("--no-ptychi", action="store_true")
            p.add_argument("--ptychi-python", type=Path, default=Path(sys.executable),
                           help="an interpreter that imports ptychi (default: this one)")
            p.add_argument("--capacity-seconds", type=float, default=120.0,
                           help="training budget of the capacity fit on the first case (0: skip)")
            p.set_defaults(func=run)
        else:
            p.add_argument("--objects", type=Path, required=True, help="the run's output directory")
            p.add_argument("--results", type=Path, default=h.RESULTS_DIR)
            p.add_argument("--doc", type=Path, default=h.DOC)
            p.add_argument("--no-doc", action="store_true")
            p.set_defaults(func=score)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
