"""Realistic quality suite: the PINN, the PINN plus physics refinement, refinement alone and
pty-chi LSQML side by side on photograph-like simulated scans, with wall times.

    python benchmarks/realistic.py                         # every case of benchmarks/cases/realistic.json
    python benchmarks/realistic.py --cases brick-gravel    # one case (results merge into the JSON)
    python benchmarks/realistic.py --quick --cases brick-gravel --no-ptychi --no-doc --out /tmp/r  # CI-sized

For each case (one `simulate_scan`, run one heavy job at a time in this process):

1. **network alone**: `train_model` self-fit on the scan (gridsize 1, CPU settings of the case:
   batch, `n_filters_scale`, epochs so that optimiser steps <= ``max_steps``), then
   `reconstruct_object(..., refine_iterations=0)`. The training curve is recorded with the
   **excess NLL** of every epoch: the epoch's training loss minus the Poisson NLL of the true
   object through the engine's refinement forward model (`refinement.negative_log_likelihood`
   of ``truth * fit_global_scale(truth)``; mean nats per pixel, ``log k!`` included). The units are
   checked, not assumed: the true object is also pushed through the *training* forward model
   (the trained network's probe, gauge and count scale) and both truth NLLs are recorded; the
   final network's per-pattern loss over all patterns and its stitched object's NLL after the
   scale fit (the refinement path) are recorded next to the epoch-averaged training loss.
2. **network + refinement**: that network's stitched object refined for each pass count of the
   case (`refine_reconstruction`; seconds = network inference + refinement, what
   `reconstruct_object(refine_iterations=K)` costs).
3. **refinement from flat** (no network): `refine_object(None, ...)` for the same pass counts.
4. **pty-chi LSQML** in its own environment (`benchmarks/ptychi_driver.py`, fixed known probe
   and positions): run for ``ptychi_epochs`` epochs and on until its clock reaches the self-fit
   time (training + inference + refinement at ``match_passes``); object snapshots with times.
   Reported: the first snapshot at or past the matched time, and the ``ptychi_epochs`` one.

Every object is scored with `evaluation.evaluate_object` (SSIM, PSNR, FRC after ambiguity
removal over the scanned area) and by its NLL (after the same one-number scale fit). A
``pretrained`` entry applies the network fitted to one case's scan to another case's scan
(+ refinement), against that case's pty-chi run.

Output: ``<out>/realistic-<device>.json`` (per-case results merge into an existing file, so
cases can be run in separate invocations; ``--fresh`` starts over), a PNG panel per case
(``docs/images/realistic/<case>.png``; with ``--no-doc`` under ``<out>``) and the
``realistic-<device>`` section of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

CASES_FILE = Path(__file__).resolve().parent / "cases" / "realistic.json"
IMAGES_DIR = h.REPO / "docs" / "images" / "realistic"
SCHEMA = 1
#: pty-chi epochs snapshotted (beyond these, the matched-time snapshot and the last epoch).
PTYCHI_SNAPSHOTS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000, 3000)
METRIC_KEYS = ("amplitude_ssim", "phase_ssim", "amplitude_psnr", "phase_psnr", "frc_half_bit_px", "frc_1_7_px",
               "frc_auc")


# ----------------------------------------------------------------------------- cases
@dataclasses.dataclass(frozen=True)
class Case:
    """One simulated scan and the settings every method uses on it."""

    name: str
    obj: str
    description: str = ""
    num_positions: int = 1024
    N: int = 64  # noqa: N815
    photons_per_pattern: float = 1e5
    seed: int = 0
    probe: str = "structured"
    batch_size: int = 4
    n_filters_scale: int = 1
    learning_rate: float = 1e-3
    max_steps: int = 2300
    epochs: int | None = None
    refine_passes: tuple[int, ...] = (10, 50, 100, 200)
    match_passes: int = 200
    ptychi_epochs: int = 100
    training: dict = dataclasses.field(default_factory=dict)
    model: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        passes = tuple(sorted({int(k) for k in self.refine_passes} | {int(self.match_passes)}))
        object.__setattr__(self, "refine_passes", passes)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_positions / self.batch_size)

    @property
    def nepochs(self) -> int:
        return int(self.epochs) if self.epochs else max(1, self.max_steps // self.steps_per_epoch)

    def simulate_kwargs(self) -> dict[str, Any]:
        return {"num_positions": self.num_positions, "N": self.N, "photons_per_pattern": self.photons_per_pattern,
                "seed": self.seed, "probe": self.probe, "obj": self.obj}

    def training_config(self) -> Any:
        from ptychodus_ptychopinn_torch.config import ModelConfig, TrainingConfig

        model = ModelConfig(N=self.N, gridsize=1, n_filters_scale=self.n_filters_scale, **self.model)
        extra = {"validation_fraction": 0.0, **self.training}
        return TrainingConfig(model=model, batch_size=self.batch_size, nepochs=self.nepochs, n_groups=None,
                              learning_rate=self.learning_rate, **extra)


@dataclasses.dataclass(frozen=True)
class Transfer:
    """A network fitted to ``train_case``'s scan, applied to ``apply_case``'s scan."""

    name: str
    train_case: str
    apply_case: str
    description: str = ""


def load_cases(path: Path, *, quick: bool, epochs: int | None = None) -> tuple[dict[str, Case], dict[str, Transfer]]:
    spec = json.loads(Path(path).read_text())
    defaults = dict(spec.get("defaults", {}))
    overrides = dict(spec.get("quick", {})) if quick else {}
    if epochs is not None:
        overrides["epochs"] = epochs
    cases = {}
    for entry in spec["cases"]:
        merged = {**defaults, **entry, **overrides}
        merged["refine_passes"] = tuple(merged.get("refine_passes", Case.refine_passes))
        cases[entry["name"]] = Case(**merged)
    transfers = {t["name"]: Transfer(**t) for t in spec.get("pretrained", [])}
    for t in transfers.values():
        for dep in (t.train_case, t.apply_case):
            if dep not in cases:
                raise ValueError(f"pretrained entry {t.name!r} names an unknown case {dep!r}")
    return cases, transfers


def select(cases: dict[str, Case], transfers: dict[str, Transfer], names: list[str] | None
           ) -> tuple[list[str], list[str]]:
    """Cases to run (in file order) and transfers to run: a transfer runs when both its cases do;
    naming a transfer adds its two cases."""
    if not names:
        return list(cases), list(transfers)
    unknown = [n for n in names if n not in cases and n not in transfers]
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; known: {', '.join([*cases, *transfers])}")
    wanted = {n for n in names if n in cases}
    for n in names:
        if n in transfers:
            wanted |= {transfers[n].train_case, transfers[n].apply_case}
    chosen = [n for n in cases if n in wanted]
    return chosen, [t for t, tr in transfers.items() if tr.train_case in wanted and tr.apply_case in wanted]


# ----------------------------------------------------------------------------- likelihood
def _load() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


class Likelihood:
    """NLLs in the engine's units (mean nats per pixel, ``log k!`` included) on one scan."""

    def __init__(self, scan: Any, device: torch.device) -> None:
        from ptychodus_ptychopinn_torch.refinement import ScanTensors

        self.device = device
        self.data = ScanTensors.from_arrays(scan.amplitudes, scan.positions_px, scan.object_shape, scan.bad_pixels)
        self.probe = torch.as_tensor(scan.probe, dtype=torch.complex64)
        self.spectrum = torch.fft.fft2(self.probe.to(device))

    def scale(self, obj: np.ndarray) -> float:
        """The one amplitude factor that matches the measured total counts (as refinement fits it)."""
        from ptychodus_ptychopinn_torch.refinement import fit_global_scale

        canvas = torch.as_tensor(np.asarray(obj, dtype=np.complex64)).to(self.device).reshape(-1)
        return fit_global_scale(canvas, self.spectrum, self.data, self.device)

    def nll(self, obj: np.ndarray, *, fit_scale: bool = True) -> tuple[float, float]:
        """``(NLL, scale)`` of ``obj`` after the scale fit (as the refinement path evaluates it)."""
        from ptychodus_ptychopinn_torch.refinement import negative_log_likelihood

        s = self.scale(obj) if fit_scale else 1.0
        canvas = torch.as_tensor(np.asarray(obj, dtype=np.complex64) * np.float32(s))
        return negative_log_likelihood(canvas, self.probe, self.data, device=self.device), s

    def saturated(self) -> float:
        """The NLL bound ``lambda = k`` (no model can fit the noise better on average)."""
        k = self.data.counts.double()
        value = k - torch.xlogy(k, k) + torch.lgamma(k + 1.0)
        if self.data.good is not None:
            return float((value * self.data.good).sum() / (self.data.good.sum() * k.shape[0]))
        return float(value.mean())


def training_model_checks(bundle: Any, scan: Any, training: Any, truth: np.ndarray, lik: Likelihood,
                          batch_size: int = 128) -> dict[str, float]:
    """Check that the training loss and the refinement NLL share units, on all patterns.

    * ``truth_nll_training_loss``: the training loss function (`physics.poisson_nll` against the
      counts the training compares with, ``observed_count_amplitudes``) applied to the true
      object's exact exit waves (``shift(P, d) * O``, the simulator's and the refinement's
      model). Equal to the refinement NLL of the truth when the units agree.
    * ``loss_counts_over_measured_counts``: total of the training's ``k`` over the measured counts.
    * ``truth_nll_training_model``: the truth through the network's own forward model (its
      normalised probe, ``log_scale``), with the dataset's Fourier-shifted truth patches
      (``shift(O, -d)`` under the unshifted probe); ``truth_counts_training_model_over_measured``
      checks its gauge. Sub-pixel shifting a sharp photograph is not exact, so this NLL lies
      above the truth's (how far says what the patch convention costs, not a unit error).
    * ``final_network_loss_all_patterns``: the training loss of the final weights over every
      pattern (an epoch's training loss averages over changing weights).
    """
    from ptychodus_ptychopinn_torch import physics
    from ptychodus_ptychopinn_torch.data.dataset import GroupedDataset, extract_patches
    from ptychodus_ptychopinn_torch.data.grouping import group_positions
    from ptychodus_ptychopinn_torch.refinement import PositionBatch
    from ptychodus_ptychopinn_torch.training import PtychoPINNModule

    network = bundle.network.eval()
    device = next(network.parameters()).device
    groups = group_positions(scan.positions_px, gridsize=1, n_groups=None, neighbor_count=training.neighbor_count,
                             seed=0, all_positions=True)
    index = groups[:, 0]
    dataset = GroupedDataset(scan, groups, bundle.constants.kappa)
    module = PtychoPINNModule(network, training).to(device).eval()
    mask = None
    if scan.bad_pixels is not None and np.any(scan.bad_pixels):
        mask = torch.as_tensor(~np.asarray(scan.bad_pixels)).to(device)
    log_scale = float(network.log_scale.detach())
    gauge = bundle.constants.probe_factor / math.exp(log_scale)
    patches = extract_patches(truth, scan.positions_px[index], scan.N)
    canvas = torch.as_tensor(np.asarray(truth, np.complex64)).to(lik.device).reshape(-1)
    sums = {"net": 0.0, "exact": 0.0, "patches": 0.0, "k": 0.0, "counts": 0.0, "lam_patches": 0.0}
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            sel = np.arange(start, min(start + batch_size, len(dataset)))
            batch = {k: v.to(device) for k, v in dataset.get_batch(sel).items()}
            sums["net"] += float(module.compute_loss(batch)) * len(sel)
            obs = network.observed_count_amplitudes(batch["amplitudes"])
            exact = PositionBatch(lik.data, torch.as_tensor(index[sel]), lik.spectrum, lik.device)
            psi = exact.probes * exact.patches(canvas)
            pred = physics.diffract(psi).to(device)[:, None]
            sums["exact"] += float(physics.poisson_nll(pred, obs, mask=mask)) * len(sel)
            obj = torch.as_tensor(patches[sel] * np.complex64(gauge)).to(device)[:, None]
            pred = physics.diffract(network.illuminate(obj, batch["coords_relative"])) * math.exp(log_scale)
            sums["patches"] += float(physics.poisson_nll(pred, obs, mask=mask)) * len(sel)
            sums["lam_patches"] += float((pred.double() ** 2).sum())
            sums["k"] += float((obs.double() ** 2).sum())
            sums["counts"] += float((torch.as_tensor(scan.amplitudes[index[sel]]).double() ** 2).sum())
    m = len(dataset)
    return {"truth_nll_training_loss": sums["exact"] / m,
            "loss_counts_over_measured_counts": sums["k"] / sums["counts"],
            "truth_nll_training_model": sums["patches"] / m,
            "truth_counts_training_model_over_measured": sums["lam_patches"] / sums["counts"],
            "final_network_loss_all_patterns": sums["net"] / m,
            "log_scale": log_scale, "probe_factor": float(bundle.constants.probe_factor)}


# ----------------------------------------------------------------------------- scoring
def score(obj: np.ndarray, product: Any) -> dict[str, float]:
    from ptychodus_ptychopinn_torch.evaluation import evaluate_object

    t0 = time.perf_counter()
    metrics = evaluate_object(obj, product)
    metrics["evaluation_seconds"] = time.perf_counter() - t0
    return metrics


def _entry(label: str, seconds: float, obj: np.ndarray, product: Any, lik: Likelihood, truth_nll: float,
           **extra: Any) -> dict[str, Any]:
    metrics = score(obj, product)
    nll, scale = lik.nll(obj)
    return {"method": label, "seconds": seconds, **extra,
            "metrics": {k: v for k, v in metrics.items() if not k.startswith("flat_")},
            "nll": nll, "excess_nll": nll - truth_nll, "nll_scale": scale}


# ----------------------------------------------------------------------------- one case
@dataclasses.dataclass
class CaseRun:
    """What later steps (pretrained entries, the panel) need from a case besides its record."""

    record: dict[str, Any]
    sim: Any = None
    scan: Any = None
    bundle: Any = None
    ptychi: dict[str, np.ndarray] | None = None


def run_case(case: Case, *, device: torch.device, ptychi_python: Path | None, images_dir: Path | None,
             keep_bundle: bool = False, keep_ptychi: bool = False, run_date: str = "", log=print) -> CaseRun:
    from ptychodus_ptychopinn_torch.config import InferenceConfig
    from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
    from ptychodus_ptychopinn_torch.refinement import RefinementOptions, ScanTensors, refine_object
    from ptychodus_ptychopinn_torch.simulate import simulate_scan
    from ptychodus_ptychopinn_torch.workflows.engine import (
        REFINE_BATCH_SIZE,
        reconstruct_object,
        refine_reconstruction,
        train_model,
    )

    start = time.perf_counter()
    record: dict[str, Any] = {"settings": dataclasses.asdict(case), "load_average_before": _load(),
                              "run_date_utc": run_date}
    execution = h.execution_config(device.type)

    t0 = time.perf_counter()
    sim = simulate_scan(**case.simulate_kwargs())
    scan = scan_from_reconstruct_input(sim.reconstruct_input)
    truth = np.asarray(sim.product.object_.get_layers_flattened(), dtype=np.complex64)
    record["scan"] = {"simulate_seconds": time.perf_counter() - t0, "object_shape": list(scan.object_shape),
                      "positions": scan.num_positions, "mean_counts": float(scan.mean_counts)}

    lik = Likelihood(scan, device)
    truth_nll, truth_scale = lik.nll(truth)
    flat = np.ones(scan.object_shape, np.complex64)
    flat_nll, _ = lik.nll(flat)
    flat_metrics = score(flat, sim.product)
    record["likelihood"] = {"truth_nll": truth_nll, "truth_scale": truth_scale, "flat_nll": flat_nll,
                            "flat_excess_nll": flat_nll - truth_nll, "saturated_nll": lik.saturated()}
    record["flat_object"] = {"metrics": {k: flat_metrics[k] for k in METRIC_KEYS if k in flat_metrics},
                             "flat_amplitude_ssim": flat_metrics["flat_amplitude_ssim"],
                             "flat_phase_ssim": flat_metrics["flat_phase_ssim"]}
    log(f"[{case.name}] scan {scan.num_positions} positions, canvas {scan.object_shape}, "
        f"{scan.mean_counts:.3g} counts/pattern; truth NLL {truth_nll:.4f} (scale {truth_scale:.4f}), "
        f"flat {flat_nll:.4f}")

    # 1. the network alone: self-fit, then inference without refinement.
    training = case.training_config()
    curve: list[dict[str, Any]] = []
    t_train = time.perf_counter()

    def on_epoch(report: Any) -> None:
        curve.append({"epoch": report.epoch, "seconds": time.perf_counter() - t_train,
                      "steps": report.batches_done, "train_loss": report.train_loss,
                      "excess_nll": report.train_loss - truth_nll, "learning_rate": report.learning_rate})
        log(f"[{case.name}] epoch {report.epoch}/{report.num_epochs}: loss {report.train_loss:.4f} "
            f"(excess {report.train_loss - truth_nll:+.4f}) at {curve[-1]['seconds']:.0f} s")

    bundle = train_model(scan, training, execution, on_epoch=on_epoch)
    train_seconds = time.perf_counter() - t_train
    inference = InferenceConfig(model=bundle.model_config, refine_iterations=0)
    net = reconstruct_object(bundle, scan, inference, execution)
    network_seconds = float(net.network_seconds if net.network_seconds is not None else net.seconds)
    checks = training_model_checks(bundle, scan, training, truth * np.complex64(truth_scale), lik)
    stitched_nll = float(net.refinement.network_loss) if net.refinement is not None else lik.nll(net.object)[0]
    diff = checks["truth_nll_training_loss"] - truth_nll
    units_agree = (abs(diff) <= 1e-3 * max(abs(truth_nll), 1.0)
                   and abs(checks["loss_counts_over_measured_counts"] - 1.0) <= 1e-3
                   and abs(checks["truth_counts_training_model_over_measured"] - 1.0) <= 0.01)
    network = _entry("network alone", network_seconds, net.object, sim.product, lik, truth_nll,
                     train_seconds=train_seconds, reconstruct_seconds=float(net.seconds),
                     self_fit_seconds=train_seconds + network_seconds)
    best_epoch = min(curve, key=lambda p: p["train_loss"]) if curve else None
    record["network"] = {
        **network,
        "training": {"epochs": training.nepochs, "epochs_run": len(curve), "batch_size": training.batch_size,
                     "steps": curve[-1]["steps"] if curve else 0, "n_filters_scale": case.n_filters_scale,
                     "learning_rate": training.learning_rate, "scheduler": training.scheduler,
                     "seconds": train_seconds, "curve": curve, "config": dataclasses.asdict(training),
                     "restored_epoch": best_epoch["epoch"] if best_epoch else None},
        "excess": {
            "truth_nll_refinement_model": truth_nll,
            **checks,
            "truth_nll_difference": diff,
            "patch_convention_excess": checks["truth_nll_training_model"] - truth_nll,
            "units_agree": bool(units_agree),
            "final_epoch_train_loss": curve[-1]["train_loss"] if curve else None,
            "excess_final_epoch_train_loss": (curve[-1]["train_loss"] - truth_nll) if curve else None,
            "excess_final_network_all_patterns": checks["final_network_loss_all_patterns"] - truth_nll,
            "stitched_nll": stitched_nll,
            "excess_stitched": stitched_nll - truth_nll,
            "primary": "training loss" if units_agree else "stitched object (refinement path)",
        },
    }
    log(f"[{case.name}] network: trained {train_seconds:.0f} s, inference {network_seconds:.1f} s, SSIM "
        f"{network['metrics']['amplitude_ssim']:.3f}/{network['metrics']['phase_ssim']:.3f}; truth NLL by the "
        f"training loss {checks['truth_nll_training_loss']:.4f} vs refinement {truth_nll:.4f} "
        f"(units {'agree' if units_agree else 'DISAGREE'}; Fourier-shifted truth patches "
        f"{checks['truth_nll_training_model']:.4f}); stitched excess {stitched_nll - truth_nll:+.4f}")

    # 2. network + refinement, 3. refinement from a flat object, for each pass count.
    refined, from_flat = [], []
    objects: dict[str, np.ndarray] = {"network": net.object}
    for passes in case.refine_passes:
        rec = refine_reconstruction(net, scan, InferenceConfig(model=bundle.model_config, refine_iterations=passes),
                                    execution)
        summary = rec.refinement
        refined.append(_entry(f"network + {passes} passes", network_seconds + summary.seconds, rec.object,
                              sim.product, lik, truth_nll, passes=passes, passes_run=summary.passes_run,
                              refine_seconds=summary.seconds, final_loss=summary.final_loss,
                              stopped_early=summary.stopped_early,
                              losses=list(summary.losses) if passes == max(case.refine_passes) else None))
        objects[f"refined-{passes}"] = rec.object
        t0 = time.perf_counter()
        data = ScanTensors.from_arrays(scan.amplitudes, scan.positions_px, scan.object_shape, scan.bad_pixels)
        res = refine_object(None, lik.probe, data, RefinementOptions(iterations=passes, batch_size=REFINE_BATCH_SIZE),
                            device=device)
        flat_seconds = time.perf_counter() - t0
        from_flat.append(_entry(f"flat + {passes} passes", flat_seconds, res.object, sim.product, lik, truth_nll,
                                passes=passes, passes_run=res.passes_run, stopped_early=res.stopped_early,
                                losses=list(res.losses) if passes == max(case.refine_passes) else None))
        objects[f"flat-{passes}"] = res.object
        log(f"[{case.name}] {passes} passes: network+refine {refined[-1]['seconds']:.1f} s SSIM "
            f"{refined[-1]['metrics']['amplitude_ssim']:.3f}/{refined[-1]['metrics']['phase_ssim']:.3f}; flat "
            f"{flat_seconds:.1f} s SSIM {from_flat[-1]['metrics']['amplitude_ssim']:.3f}/"
            f"{from_flat[-1]['metrics']['phase_ssim']:.3f}")
    record["network_refined"] = refined
    record["flat_refined"] = from_flat
    match = next(r for r in refined if r["passes"] == case.match_passes)
    matched_seconds = train_seconds + match["seconds"]
    record["self_fit"] = {"passes": case.match_passes, "seconds": matched_seconds,
                          "note": "training + network inference + refinement at match_passes"}

    # 4. pty-chi LSQML at the matched time and at ptychi_epochs.
    ptychi_raw = None
    if ptychi_python is None:
        record["ptychi"] = {"status": "skipped", "reason": "--no-ptychi"}
    else:
        record["ptychi"], ptychi_raw = run_ptychi(case, sim, scan, lik, truth_nll, device, ptychi_python,
                                                  matched_seconds, log=log)
        objects["ptychi-matched"] = ptychi_raw["matched_object"] if ptychi_raw else None

    record["load_average_after"] = _load()
    record["wall_seconds"] = time.perf_counter() - start
    if images_dir is not None:
        path = images_dir / f"{case.name}.png"
        panel(path, case, truth, objects, record, scan.positions_px)
        record["image"] = str(path.relative_to(h.REPO)) if path.is_relative_to(h.REPO) else str(path)
    return CaseRun(record=record, sim=sim, scan=scan, bundle=bundle if keep_bundle else None,
                   ptychi=ptychi_raw if keep_ptychi else None)


def run_ptychi(case: Case, sim: Any, scan: Any, lik: Likelihood, truth_nll: float, device: torch.device,
               python: Path, matched_seconds: float, log=print) -> tuple[dict[str, Any], dict[str, Any] | None]:
    missing = h.ptychi_missing(python)
    if missing:
        return {"status": "unavailable", "reason": missing}, None
    with tempfile.TemporaryDirectory() as tmp:
        npz, out = Path(tmp) / "scan.npz", Path(tmp) / "ptychi.npz"
        h.write_ptychi_scan(npz, sim, scan)
        t0 = time.perf_counter()
        try:
            summary = h.run_ptychi_driver(npz, out, python, device, epochs=case.ptychi_epochs,
                                          snapshots=PTYCHI_SNAPSHOTS, snapshot_seconds=[matched_seconds],
                                          until_seconds=matched_seconds, timeout=max(3600.0, 4 * matched_seconds))
        except Exception as exc:  # noqa: BLE001 - report, do not lose the case
            return {"status": "failed", "reason": str(exc)}, None
        driver_seconds = time.perf_counter() - t0
        raw = h.load_npz(out)
    curve = []
    for epoch, seconds, obj in zip(raw["epochs"], raw["seconds"], raw["objects"]):
        curve.append(_entry(f"pty-chi LSQML, {int(epoch)} epochs", float(seconds), obj, sim.product, lik, truth_nll,
                            epoch=int(epoch)))
    matched_i = next((i for i, p in enumerate(curve) if p["seconds"] >= matched_seconds), len(curve) - 1)
    final_i = next((i for i, p in enumerate(curve) if p["epoch"] == case.ptychi_epochs), len(curve) - 1)
    matched = {**curve[matched_i], "target_seconds": matched_seconds}
    result = {
        "status": "ok", **summary, "algorithm": "LSQML", "batch_size": 100, "probe": "fixed (known)",
        "positions": "fixed", "setup_seconds": float(raw["setup_seconds"]),
        "median_epoch_seconds": float(np.median(raw["epoch_seconds"])), "driver_wall_seconds": driver_seconds,
        "epoch_seconds": [float(v) for v in raw["epoch_seconds"]],
        "loss": [float(v) for v in raw["loss"]], "curve": curve, "matched": matched, "final": curve[final_i],
    }
    log(f"[{case.name}] pty-chi: {case.ptychi_epochs} epochs {curve[final_i]['seconds']:.1f} s SSIM "
        f"{curve[final_i]['metrics']['amplitude_ssim']:.3f}/{curve[final_i]['metrics']['phase_ssim']:.3f}; matched "
        f"{matched['seconds']:.0f} s (epoch {matched['epoch']}) SSIM {matched['metrics']['amplitude_ssim']:.3f}/"
        f"{matched['metrics']['phase_ssim']:.3f}")
    keep = {"epochs": raw["epochs"], "seconds": raw["seconds"], "objects": raw["objects"],
            "matched_object": raw["objects"][matched_i]}
    return result, keep


def run_transfer(transfer: Transfer, source: CaseRun, target: CaseRun, case: Case, *, device: torch.device,
                 run_date: str = "", log=print) -> dict[str, Any]:
    """The network fitted to ``source``'s scan applied (+ refinement) to ``target``'s scan."""
    from ptychodus_ptychopinn_torch.config import InferenceConfig
    from ptychodus_ptychopinn_torch.workflows.engine import reconstruct_object, refine_reconstruction

    record: dict[str, Any] = {"train_case": transfer.train_case, "apply_case": transfer.apply_case,
                              "description": transfer.description, "load_average_before": _load(),
                              "run_date_utc": run_date}
    start = time.perf_counter()
    execution = h.execution_config(device.type)
    scan, sim, bundle = target.scan, target.sim, source.bundle
    p_src, p_dst = np.asarray(bundle.probe), np.asarray(scan.probe)
    record["probe_relative_difference"] = float(np.linalg.norm(p_src - p_dst) / np.linalg.norm(p_dst))
    record["probe_shape_difference"] = float(np.linalg.norm(p_src / np.linalg.norm(p_src) - p_dst / np.linalg.norm(p_dst)))
    lik = Likelihood(scan, device)
    truth = np.asarray(sim.product.object_.get_layers_flattened(), dtype=np.complex64)
    truth_nll, _ = lik.nll(truth)
    net = reconstruct_object(bundle, scan, InferenceConfig(model=bundle.model_config, refine_iterations=0), execution)
    network_seconds = float(net.network_seconds if net.network_seconds is not None else net.seconds)
    record["network"] = _entry("pretrained network alone", network_seconds, net.object, sim.product, lik, truth_nll,
                               train_seconds_untimed=source.record["network"]["training"]["seconds"])
    refined = []
    for passes in case.refine_passes:
        rec = refine_reconstruction(net, scan, InferenceConfig(model=bundle.model_config, refine_iterations=passes),
                                    execution)
        refined.append(_entry(f"pretrained network + {passes} passes", network_seconds + rec.refinement.seconds,
                              rec.object, sim.product, lik, truth_nll, passes=passes,
                              refine_seconds=rec.refinement.seconds, stopped_early=rec.refinement.stopped_early))
    record["network_refined"] = refined
    target_record = target.record
    record["self_fit_on_apply_case"] = {
        "network": target_record["network"]["metrics"],
        "refined": next(r for r in target_record["network_refined"] if r["passes"] == case.match_passes)["metrics"],
        "seconds": target_record["self_fit"]["seconds"],
    }
    record["flat_refined_on_apply_case"] = target_record["flat_refined"]
    pty = target_record.get("ptychi", {})
    if pty.get("status") == "ok":
        match = next(r for r in refined if r["passes"] == case.match_passes)
        hit = next((p for p in pty["curve"] if p["seconds"] >= match["seconds"]), pty["curve"][-1])
        record["ptychi"] = {"final": pty["final"], "at_pretrained_time": {**hit, "target_seconds": match["seconds"]}}
    else:
        record["ptychi"] = {"status": pty.get("status", "skipped"), "reason": pty.get("reason", "")}
    record["load_average_after"] = _load()
    record["wall_seconds"] = time.perf_counter() - start
    m = record["network"]["metrics"]
    log(f"[{transfer.name}] pretrained network {network_seconds:.1f} s SSIM {m['amplitude_ssim']:.3f}/"
        f"{m['phase_ssim']:.3f}; + {refined[-1]['passes']} passes {refined[-1]['seconds']:.1f} s SSIM "
        f"{refined[-1]['metrics']['amplitude_ssim']:.3f}/{refined[-1]['metrics']['phase_ssim']:.3f}")
    return record


# ----------------------------------------------------------------------------- panel
def _aligned(obj: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``obj`` times the complex factor that best matches the truth on ``mask`` (scale + phase offset)."""
    o, t = obj[mask].astype(np.complex128), truth[mask].astype(np.complex128)
    denom = np.vdot(o, o)
    return obj * (np.vdot(o, t) / denom) if abs(denom) > 0 else obj


def panel(path: Path, case: Case, truth: np.ndarray, objects: dict[str, np.ndarray | None],
          record: dict[str, Any], positions: np.ndarray) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The scanned disc (Fermat spiral) plus most of a probe radius; outside it is left blank.
    centre = positions.mean(axis=0)
    radius = float(np.max(np.hypot(*(positions - centre).T))) + 0.25 * case.N
    yy, xx = np.mgrid[: truth.shape[0], : truth.shape[1]]
    mask = np.hypot(xx - centre[0], yy - centre[1]) <= radius
    rows = slice(max(int(centre[1] - radius), 0), int(centre[1] + radius) + 1)
    cols = slice(max(int(centre[0] - radius), 0), int(centre[0] + radius) + 1)
    inner = np.hypot(xx - centre[0], yy - centre[1]) <= radius - 0.25 * case.N
    match = case.match_passes
    refined = next(r for r in record["network_refined"] if r["passes"] == match)
    columns = [("truth", truth, None),
               ("network", objects.get("network"), record["network"]["metrics"]),
               (f"network + {match} passes", objects.get(f"refined-{match}"), refined["metrics"])]
    pty = record.get("ptychi", {})
    if pty.get("status") == "ok" and objects.get("ptychi-matched") is not None:
        columns.append((f"pty-chi {pty['matched']['epoch']} ep. ({pty['matched']['seconds']:.0f} s)",
                        objects["ptychi-matched"], pty["matched"]["metrics"]))
    else:
        flat = next(r for r in record["flat_refined"] if r["passes"] == match)
        columns.append((f"flat + {match} passes (no pty-chi)", objects.get(f"flat-{match}"), flat["metrics"]))
    fig = plt.figure(figsize=(3.2 * len(columns) + 5.0, 6.6), constrained_layout=True)
    grid = fig.add_gridspec(2, len(columns) + 2)
    ph_t = np.angle(truth[inner])
    for j, (label, obj, metrics) in enumerate(columns):
        if obj is None:
            continue
        view = np.where(mask, obj if metrics is None else _aligned(obj, truth, inner), np.nan)
        amp = np.abs(view)
        lo, hi = np.nanpercentile(amp[inner], [1, 99])  # each amplitude on its own range: structure shows
        for i, (image, vmin, vmax, cmap, key) in enumerate((
                (amp, lo, hi, "gray", "amplitude_ssim"),
                (np.angle(view), float(ph_t.min()), float(ph_t.max()), "twilight", "phase_ssim"))):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(image[rows, cols], cmap=cmap, vmin=vmin, vmax=vmax)
            kind = "amplitude" if i == 0 else "phase"
            title = f"{label}\n{kind}" if metrics is None else f"{label}\n{kind} SSIM {metrics[key]:.3f}"
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
    ax = fig.add_subplot(grid[:, len(columns):])
    curve = record["network"]["training"]["curve"]
    if curve:
        ax.plot([p["seconds"] for p in curve], [p["excess_nll"] for p in curve], "o-", label="training loss (epoch mean)")
    ex = record["network"]["excess"]
    t_train = record["network"]["training"]["seconds"]
    ax.plot([t_train], [ex["excess_stitched"]], "s", color="C1", label="stitched network object")
    ax.plot([r["seconds"] + t_train for r in record["network_refined"]], [r["excess_nll"] for r in record["network_refined"]],
            "^-", color="C2", label="network + refinement")
    ax.plot([r["seconds"] for r in record["flat_refined"]], [r["excess_nll"] for r in record["flat_refined"]],
            "v-", color="C3", label="flat + refinement")
    if pty.get("status") == "ok":
        ax.plot([p["seconds"] for p in pty["curve"]], [p["excess_nll"] for p in pty["curve"]], ".-", color="C4",
                label="pty-chi LSQML")
    ax.axhline(record["likelihood"]["flat_excess_nll"], color="0.6", ls="--", lw=1, label="flat object")
    values = [y for line in ax.get_lines() for y in np.asarray(line.get_ydata(), float) if np.isfinite(y)]
    if values and min(values) > 0:
        ax.set_yscale("log")
    else:
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xscale("log")
    ax.set_xlabel("wall seconds")
    ax.set_ylabel("excess NLL (nats/pixel over the truth)")
    ax.set_title(f"NLL above the truth's ({ex['truth_nll_refinement_model']:.3f} nats/pixel)\n"
                 f"training loss units {'agree' if ex['units_agree'] else 'DISAGREE'} (truth by the training loss "
                 f"{ex['truth_nll_training_loss']:.3f})", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{case.name}: {case.obj}, {case.num_positions} positions, {case.photons_per_pattern:.0e} photons, "
                 f"{record['network']['training']['epochs_run']} epochs ({record['network']['training']['steps']} "
                 f"steps, batch {case.batch_size})", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return compact_png(path)


def compact_png(path: Path) -> Path:
    """Re-save a PNG with a 256-colour adaptive palette (noisy phase images compress ~3x better)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow comes with matplotlib
        return path
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    small.save(path, optimize=True)
    return path


# ----------------------------------------------------------------------------- report
def _ssims(entry: dict[str, Any] | None) -> list[Any]:
    if not entry:
        return [None] * 5
    m = entry["metrics"]
    return [m.get("amplitude_ssim"), m.get("phase_ssim"), m.get("amplitude_psnr"), m.get("phase_psnr"),
            m.get("frc_1_7_px")]


def markdown(doc: dict[str, Any]) -> str:
    kind = "CI-sized (--quick)" if doc.get("quick") else "full"
    runs = doc.get("runs", [])
    parts = [f"Realistic quality suite, {doc['device']}, {kind} run (`python benchmarks/realistic.py`; cases in "
             "`benchmarks/cases/realistic.json`). Each case ran alone, its methods one after another; "
             "machine, dates and load averages per run are in `benchmarks/results/realistic-"
             f"{doc['device']}{'-quick' if doc.get('quick') else ''}.json`."]
    for run in runs:
        parts[-1] += f"\n\n- {h.machine_line(run)} Cases: {', '.join(run.get('cases', []))}."
    summary = []
    for name, c in doc["cases"].items():
        s = c["settings"]
        net, fit = c["network"], c["self_fit"]
        ref = next(r for r in c["network_refined"] if r["passes"] == s["match_passes"])
        flat = next(r for r in c["flat_refined"] if r["passes"] == s["match_passes"])
        pty = c.get("ptychi", {})
        ok = pty.get("status") == "ok"
        summary.append([name, f"{s['photons_per_pattern']:.0e}", f"{net['training']['epochs_run']} ({net['training']['steps']})",
                        f"{net['metrics']['amplitude_ssim']:.2f}/{net['metrics']['phase_ssim']:.2f}",
                        f"{ref['metrics']['amplitude_ssim']:.2f}/{ref['metrics']['phase_ssim']:.2f}", fit["seconds"],
                        f"{flat['metrics']['amplitude_ssim']:.2f}/{flat['metrics']['phase_ssim']:.2f}", flat["seconds"],
                        (f"{pty['matched']['metrics']['amplitude_ssim']:.2f}/{pty['matched']['metrics']['phase_ssim']:.2f}"
                         f" ({pty['matched']['epoch']} ep.)") if ok else pty.get("status", "n/a"),
                        (f"{pty['final']['metrics']['amplitude_ssim']:.2f}/{pty['final']['metrics']['phase_ssim']:.2f}")
                        if ok else "n/a", pty["final"]["seconds"] if ok else None,
                        f"{c['flat_object']['flat_amplitude_ssim']:.2f}/{c['flat_object']['flat_phase_ssim']:.2f}"])
    parts.append("**Summary** (amplitude/phase SSIM after ambiguity removal over the scanned area; seconds are wall "
                 "time; *self-fit* = training + network inference + refinement at the case's matched pass count, "
                 "and pty-chi is read at the first snapshot at or past that time):\n\n" + h.table(
                     ["case", "photons", "epochs (steps)", "network", "network + refinement", "self-fit s",
                      "flat + refinement", "flat s", "pty-chi at self-fit time", "pty-chi final", "pty-chi final s",
                      "flat object"], summary))
    excess = []
    for name, c in doc["cases"].items():
        e = c["network"]["excess"]
        excess.append([name, c["likelihood"]["truth_nll"], e["truth_nll_training_loss"],
                       "yes" if e["units_agree"] else "NO", e["patch_convention_excess"],
                       e["excess_final_epoch_train_loss"],
                       e["excess_final_network_all_patterns"], e["excess_stitched"],
                       next(r for r in c["network_refined"] if r["passes"] == c["settings"]["match_passes"])["excess_nll"],
                       c["likelihood"]["flat_excess_nll"], c["likelihood"]["saturated_nll"] - c["likelihood"]["truth_nll"]])
    parts.append("**Excess NLL** (nats per pixel above the true object's NLL through the refinement forward model, "
                 "`log k!` included. 'truth NLL by the training loss': the training's loss function and counts applied "
                 "to the truth's exact exit waves; equal to the truth NLL when the units agree. 'Fourier-shifted truth "
                 "patches': the excess of the truth cut into patches as the training data convention does "
                 "(`shift(O, -d)` under the unshifted probe) and pushed through the network's own forward model: what "
                 "that sub-pixel convention costs on a sharp photograph. 'network, all patterns': the final weights' "
                 "training loss over every pattern; 'stitched': the network's stitched object after the one-number "
                 "scale fit, which, unlike the per-pattern loss, must be consistent across overlapping patterns):"
                 "\n\n" + h.table(
                     ["case", "truth NLL", "truth NLL by the training loss", "units agree",
                      "Fourier-shifted truth patches", "last epoch loss",
                      "network, all patterns", "stitched", "stitched + refinement", "flat object", "saturated (λ = k)"],
                     excess))
    for name, c in doc["cases"].items():
        s = c["settings"]
        rows = [["flat object", "", None, *_ssims(c["flat_object"]), c["likelihood"]["flat_excess_nll"]]]
        net = c["network"]
        rows.append(["network alone", f"train {net['training']['seconds']:.0f} s + inference",
                     net["train_seconds"] + net["seconds"], *_ssims(net), net["excess_nll"]])
        for r in c["network_refined"]:
            rows.append([f"network + {r['passes']} passes", f"refine {r['refine_seconds']:.1f} s",
                         net["train_seconds"] + r["seconds"], *_ssims(r), r["excess_nll"]])
        for r in c["flat_refined"]:
            rows.append([f"flat + {r['passes']} passes", "", r["seconds"], *_ssims(r), r["excess_nll"]])
        pty = c.get("ptychi", {})
        if pty.get("status") == "ok":
            rows.append([f"pty-chi LSQML, {pty['matched']['epoch']} epochs", "at self-fit time",
                         pty["matched"]["seconds"], *_ssims(pty["matched"]), pty["matched"]["excess_nll"]])
            rows.append([f"pty-chi LSQML, {pty['final']['epoch']} epochs", "", pty["final"]["seconds"],
                         *_ssims(pty["final"]), pty["final"]["excess_nll"]])
        else:
            rows.append(["pty-chi LSQML", pty.get("status", "n/a"), None, None, None, None, None, None, None])
        image = c.get("image")
        link = f"\n\n![{name}]({os.path.relpath(h.REPO / image, h.DOC.parent)})" if image and not Path(image).is_absolute() else ""
        parts.append(f"**{name}** ({s['obj']}, {s['num_positions']} positions, {s['photons_per_pattern']:.0e} photons; "
                     f"batch {s['batch_size']}, n_filters_scale {s['n_filters_scale']}; load average "
                     f"{_fmt_load(c.get('load_average_before'))} before, {_fmt_load(c.get('load_average_after'))} after; "
                     f"{c['wall_seconds']:.0f} s wall for the case):\n\n" + h.table(
                         ["method", "work", "seconds", "amplitude SSIM", "phase SSIM", "amplitude PSNR",
                          "phase PSNR", "FRC 1/7 px", "excess NLL"], rows) + link)
    if doc.get("pretrained"):
        rows = []
        for name, t in doc["pretrained"].items():
            rows.append([name, "pretrained network alone", t["network"]["seconds"], *_ssims(t["network"])])
            for r in t["network_refined"]:
                rows.append([name, f"pretrained network + {r['passes']} passes", r["seconds"], *_ssims(r)])
            own = t["self_fit_on_apply_case"]
            rows.append([name, f"self-fit on {t['apply_case']} + refinement (for comparison)", own["seconds"],
                         *_ssims({"metrics": own["refined"]})])
            pty = t.get("ptychi", {})
            if "final" in pty:
                hit = pty["at_pretrained_time"]
                rows.append([name, f"pty-chi, {hit['epoch']} epochs (at pretrained + refinement time)", hit["seconds"],
                             *_ssims(hit)])
                rows.append([name, f"pty-chi, {pty['final']['epoch']} epochs", pty["final"]["seconds"],
                             *_ssims(pty["final"])])
        parts.append("**Pretrained** (network fitted to one case's scan, applied to another's with the same probe; "
                     "its training time is not counted):\n\n" + h.table(
                         ["entry", "method", "seconds", "amplitude SSIM", "phase SSIM", "amplitude PSNR", "phase PSNR",
                          "FRC 1/7 px"], rows))
    return "\n\n".join(parts)


def _fmt_load(load: list[float] | None) -> str:
    return "n/a" if not load else f"{load[0]:.1f}"


# ----------------------------------------------------------------------------- main
def _merge(path: Path, doc: dict[str, Any], fresh: bool) -> dict[str, Any]:
    """Add this run's cases to the results already at ``path`` (same device and kind)."""
    old = h.read_results(path, fresh)
    if old is None or old.get("schema") != SCHEMA or old.get("quick") != doc["quick"] \
            or old.get("device") != doc["device"]:
        return doc
    sections, runs = h.merge_entries(old, doc, ("cases", "pretrained"), old.get("runs", []), doc["runs"][-1])
    return {**old, **sections, "runs": runs, "partial": doc["partial"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=None, help="comma-separated case (or pretrained entry) names; default all")
    parser.add_argument("--cases-file", type=Path, default=CASES_FILE)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs for every case (default: from "
                        "max_steps, or the case's 'epochs')")
    parser.add_argument("--no-ptychi", action="store_true", help="skip pty-chi")
    parser.add_argument("--ptychi-python", type=Path, default=h.PTYCHI_PYTHON)
    h.add_common_arguments(parser, "realistic", quick_help="CI-sized: 128 positions, 2 epochs, few passes",
                           doc_help="touch neither the markdown file nor docs/images", precision=False)
    parser.add_argument("--images", type=Path, default=None,
                        help="directory for the PNG panels (default docs/images/realistic, or <out>/realistic-images "
                             "with --no-doc or --quick)")
    parser.add_argument("--fresh", action="store_true", help="do not merge into an existing results file")
    args = parser.parse_args(argv)

    h.quiet_third_party_logs()
    start = time.perf_counter()
    device = h.torch_device(args.device)
    cases, transfers = load_cases(args.cases_file, quick=args.quick, epochs=args.epochs)
    names = [n.strip() for n in args.cases.split(",") if n.strip()] if args.cases else None
    chosen, chosen_transfers = select(cases, transfers, names)
    images = args.images or (args.out / "realistic-images" if (args.no_doc or args.quick) else IMAGES_DIR)
    ptychi_python = None if args.no_ptychi else args.ptychi_python
    info = h.machine_info(device)
    info["cases"] = chosen + chosen_transfers
    json_path = h.results_path(args, "realistic", device)
    doc: dict[str, Any] = {
        "benchmark": "realistic", "schema": SCHEMA, "quick": args.quick, "device": device.type,
        "cases_file": str(args.cases_file), "runs": [info], "partial": True, "cases": {}, "pretrained": {},
        "notes": [
            "seconds are wall time of one method at a time in this process; pty-chi runs in its own environment "
            "(subprocess) after the other methods of its case",
            "excess_nll = NLL - NLL(true object * its scale fit), mean nats per pixel with log k!, refinement "
            "forward model; training curve: epoch-mean training loss - the same truth NLL",
            "train_model restores the weights of the epoch with the lowest training loss (restored_epoch)",
            "network + K passes: seconds = network inference + refinement (refine_reconstruction), as "
            "reconstruct_object(refine_iterations=K) costs; the training time is in network.train_seconds",
            f"threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        ],
    }

    def save() -> None:
        h.write_json(json_path, _merge(json_path, doc, args.fresh))

    needed_bundles = {transfers[t].train_case for t in chosen_transfers}
    needed_targets = {transfers[t].apply_case for t in chosen_transfers}
    runs: dict[str, CaseRun] = {}
    for name in chosen:
        run = run_case(cases[name], device=device, ptychi_python=ptychi_python, images_dir=images,
                       keep_bundle=name in needed_bundles, keep_ptychi=name in needed_targets,
                       run_date=info["date_utc"])
        doc["cases"][name] = run.record
        runs[name] = run if name in needed_bundles | needed_targets else CaseRun(record=run.record)
        save()
    for tname in chosen_transfers:
        t = transfers[tname]
        doc["pretrained"][tname] = run_transfer(t, runs[t.train_case], runs[t.apply_case], cases[t.apply_case],
                                                device=device, run_date=info["date_utc"])
        save()
    h.finish_info(info, start)
    doc["partial"] = False
    merged = _merge(json_path, doc, args.fresh)
    path = h.write_json(json_path, merged)
    print(f"wrote {path}")
    if not args.no_doc:
        h.update_markdown(args.doc, json_path.stem, markdown(merged))
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
