"""The network alone, trained supervised on the physics refinement's object of the scan itself.

    python benchmarks/refined_labels.py                                   # the 10^5-photon realistic cases
    python benchmarks/refined_labels.py --cases text-grass --epochs 10    # a subset, shorter
    python benchmarks/refined_labels.py --quick --no-doc --out /tmp/b      # CI-sized

A run of some cases merges into the results already in ``<out>/refined-labels-<device>.json``
when they were measured with the same settings and passes (each case keeps its run's date), so
a long benchmark can be spread over several invocations; ``--fresh`` starts over.

The gridsize-1 PINN's loss cannot identify a photograph-like object (docs/performance.md, "What
limits the network"); the physics refinement, which sees every overlap at once, can. With
``supervised_labels="refined"`` the engine first refines a flat object against the scan (known
probe and positions, `RefinementOptions` defaults) and then trains the network supervised on that
object: no true object is used anywhere. For each case of `benchmarks/cases/realistic.json` this
runs `train_model` that way (timed as a whole: label refinement + training), reconstructs the
scan with the network alone (`refine_iterations=0`) and with 200 refinement passes, and scores
every object with `evaluation.evaluate_object` and its excess NLL (`realistic.Likelihood`). The
gridsize-1 PINN's network-alone scores of the last realistic-suite run
(`benchmarks/results/realistic-cpu.json`) are quoted next to them. ``--transfer`` also applies the
first case's network to the second case's scan (same probe).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402
import realistic  # noqa: E402

NAME = "refined-labels"
DEFAULT_CASES = "brick-gravel,text-grass,chelsea-coffee,moon-retina,coins-camera-weak"
#: Supervised settings measured best on a CPU (docs/performance.md, "More levers, screened", and the
#: screens of "Supervised on refined labels": WarmupCosine beat the plateau schedule on every case,
#: batches of 32 beat 16 on every score and 64 beat 32 on nine of ten). bf16 autocast
#: scores as float32 does at half the time per step on a CPU with AVX-512 BF16, which pays for batch 64.
SETTINGS = {"batch_size": 64, "learning_rate": 4e-3, "n_filters_scale": 1, "normalization": "batch",
            "validation_fraction": 0.0, "early_stop_patience": 100, "scheduler": "WarmupCosine",
            "lr_min_ratio": 0.05, "precision": "bf16-mixed"}


def training_config(case: Any, epochs: int | None, settings: dict[str, Any]) -> Any:
    from ptychodus_ptychopinn_torch.config import ModelConfig, TrainingConfig

    steps_per_epoch = -(-case.num_positions // int(settings["batch_size"]))
    nepochs = epochs or max(1, case.max_steps // steps_per_epoch)
    model = ModelConfig(N=case.N, gridsize=1, n_filters_scale=settings["n_filters_scale"],
                        model_type="supervised", normalization=settings["normalization"])
    return TrainingConfig(model=model, batch_size=settings["batch_size"], nepochs=nepochs, n_groups=None,
                          learning_rate=settings["learning_rate"], supervised_labels="refined",
                          validation_fraction=settings["validation_fraction"],
                          early_stop_patience=settings["early_stop_patience"], scheduler=settings["scheduler"],
                          lr_min_ratio=settings["lr_min_ratio"])


def pinn_reference(path: Path) -> dict[str, Any]:
    """Network-alone scores of the last realistic-suite run, by case (empty if none)."""
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    out = {}
    for name, record in doc.get("cases", {}).items():
        try:
            out[name] = {"network": record["network"]["metrics"], "steps": record["network"]["training"]["steps"],
                         "flat": record["flat_object"]["metrics"]}
        except KeyError:
            continue
    for record in doc.get("pretrained", {}).values():
        try:
            out[f"{record['train_case']}-on-{record['apply_case']}"] = {"network": record["network"]["metrics"]}
        except KeyError:
            continue
    return out


def run_case(case: Any, epochs: int | None, settings: dict[str, Any], device: torch.device, passes: int,
             log=print, stitch_exponents: tuple[float, ...] = ()) -> tuple[dict, Any]:
    from ptychodus_ptychopinn_torch.config import InferenceConfig
    from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
    from ptychodus_ptychopinn_torch.simulate import simulate_scan
    from ptychodus_ptychopinn_torch.workflows.engine import reconstruct_object, refine_reconstruction, train_model

    execution = h.execution_config(device.type, settings["precision"])
    sim = simulate_scan(**case.simulate_kwargs())
    scan = dataclasses.replace(scan_from_reconstruct_input(sim.reconstruct_input), object_guess=None)
    truth = np.asarray(sim.product.object_.get_layers_flattened(), dtype=np.complex64)
    lik = realistic.Likelihood(scan, device)
    truth_nll, _ = lik.nll(truth)
    training = training_config(case, epochs, settings)
    record: dict[str, Any] = {"settings": case.simulate_kwargs(), "load_average_before": realistic._load()}
    losses: list[float] = []
    start = time.perf_counter()
    bundle = train_model(scan, training, execution, on_epoch=lambda r: losses.append(r.train_loss))
    train_seconds = time.perf_counter() - start
    labels = bundle.provenance["supervised_labels"]
    steps = len(losses) * -(-scan.num_positions // training.batch_size)
    record["training"] = {"seconds": train_seconds, "label_seconds": labels["seconds"], "label_passes": labels["passes"],
                          "label_nll": labels["nll"], "label_excess_nll": labels["nll"] - truth_nll,
                          "epochs": len(losses), "steps": steps, "batch_size": training.batch_size,
                          "learning_rate": training.learning_rate, "losses": losses}
    record["truth_nll"] = truth_nll
    record["flat"] = realistic._entry("flat object", 0.0, np.ones(scan.object_shape, np.complex64), sim.product,
                                      lik, truth_nll)
    net = reconstruct_object(bundle, scan, InferenceConfig(model=bundle.model_config, refine_iterations=0), execution)
    record["network"] = realistic._entry("network alone", train_seconds + net.seconds, net.object, sim.product,
                                         lik, truth_nll)
    record["network_by_stitch_exponent"] = {}
    for e in stitch_exponents:  # the same network, its patches averaged with another weight
        other = reconstruct_object(bundle, scan, InferenceConfig(model=bundle.model_config, refine_iterations=0,
                                                                 stitch_weight_exponent=e), execution)
        record["network_by_stitch_exponent"][f"{e:g}"] = realistic._entry(
            f"network alone, stitch weight exponent {e:g}", train_seconds + other.seconds, other.object,
            sim.product, lik, truth_nll)
    rec = refine_reconstruction(net, scan, InferenceConfig(model=bundle.model_config, refine_iterations=passes),
                                execution)
    record["network_refined"] = realistic._entry(f"network + {passes} passes",
                                                 train_seconds + net.seconds + rec.refinement.seconds,
                                                 rec.object, sim.product, lik, truth_nll, passes=passes)
    record["load_average_after"] = realistic._load()
    m = record["network"]["metrics"]
    others = "".join(f", exponent {e}: {_ssim(r['metrics'])}" for e, r in record["network_by_stitch_exponent"].items())
    log(f"[{case.name}] labels {labels['seconds']:.1f} s + training {train_seconds - labels['seconds']:.0f} s "
        f"({steps} steps): network alone {m['amplitude_ssim']:.3f}/{m['phase_ssim']:.3f}{others}", flush=True)
    return record, (sim, scan, bundle)


def run_transfer(source: Any, target: Any, device: torch.device, passes: int) -> dict[str, Any]:
    from ptychodus_ptychopinn_torch.config import InferenceConfig
    from ptychodus_ptychopinn_torch.workflows.engine import reconstruct_object, refine_reconstruction

    execution = h.execution_config(device.type)
    (_, _, bundle), (sim, scan, _) = source, target
    lik = realistic.Likelihood(scan, device)
    truth_nll, _ = lik.nll(np.asarray(sim.product.object_.get_layers_flattened(), dtype=np.complex64))
    net = reconstruct_object(bundle, scan, InferenceConfig(model=bundle.model_config, refine_iterations=0), execution)
    rec = refine_reconstruction(net, scan, InferenceConfig(model=bundle.model_config, refine_iterations=passes),
                                execution)
    return {"network": realistic._entry("pretrained network alone", net.seconds, net.object, sim.product, lik,
                                        truth_nll),
            "network_refined": realistic._entry(f"pretrained network + {passes} passes",
                                                net.seconds + rec.refinement.seconds, rec.object, sim.product,
                                                lik, truth_nll, passes=passes)}


def merge(path: Path, doc: dict[str, Any], *, fresh: bool = False) -> dict[str, Any]:
    """This run's cases and transfers added to those at ``path`` measured with the same settings,
    passes and device (a case run again replaces its earlier entry); ``doc`` itself otherwise."""
    old = h.read_results(path, fresh)
    if old is None or any(old.get(k) != doc[k] for k in ("benchmark", "settings", "passes")) \
            or old.get("machine", {}).get("device") != doc["machine"].get("device"):
        return doc
    sections, runs = h.merge_entries(old, doc, ("cases", "transfers"), old.get("runs", [old.get("machine", {})]),
                                     doc["machine"])
    return {**doc, **sections, "runs": runs}


def _ssim(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "n/a"
    return f"{metrics['amplitude_ssim']:.3f} / {metrics['phase_ssim']:.3f}"


def markdown(doc: dict[str, Any]) -> str:
    st = {"scheduler": "ReduceLROnPlateau", "lr_min_ratio": 0.1, "precision": "32-true", "stitch_weight_exponent": 2.0,
          **doc["settings"]}
    extra = sorted({e for r in doc["cases"].values() for e in r.get("network_by_stitch_exponent", {})}, key=float)
    rows = []
    for name, r in doc["cases"].items():
        t, ref = r["training"], doc["pinn_reference"].get(name, {})
        pinn = ref.get("network")
        rows.append([name, f"{t['epochs']} ({t['steps']})", round(t["label_seconds"], 1), round(t["seconds"], 1),
                     _ssim(r["flat"]["metrics"]), f"{_ssim(pinn)} ({ref.get('steps', '?')} steps)" if pinn else "n/a",
                     f"**{_ssim(r['network']['metrics'])}**", f"{r['network']['excess_nll']:.3g}",
                     *[_ssim(r.get("network_by_stitch_exponent", {}).get(e, {}).get("metrics")) for e in extra],
                     _ssim(r["network_refined"]["metrics"])])
    headers = ["case", f"epochs (steps, batch {doc['settings']['batch_size']})", "labels s", "labels + training s", "flat object",
               "PINN network alone (suite run)",
               f"network alone, refined labels, stitch exponent {st['stitch_weight_exponent']:g}", "its excess NLL",
               *[f"network alone, stitch exponent {e}" for e in extra], f"+ {doc['passes']} passes"]
    runs = doc.get("runs", [doc["machine"]])
    dated = len(runs) > 1
    if dated:
        headers.insert(1, "run (UTC)")
        for row, r in zip(rows, doc["cases"].values()):
            row.insert(1, r.get("run_date_utc", "?"))
    text = ("\n".join(f"- {h.machine_line(r)}" if dated else h.machine_line(r) for r in runs)
            + "\n\nSupervised, `supervised_labels=\"refined\"`, gridsize 1, "
            f"`n_filters_scale` {st['n_filters_scale']}, `normalization` {st['normalization']}, batch "
            f"{st['batch_size']}, learning rate {st['learning_rate']:g}, scheduler {st['scheduler']}"
            + (f" (floor {st['lr_min_ratio']:g})" if st["scheduler"] == "WarmupCosine" else "")
            + f", precision {st['precision']}; amplitude / phase SSIM.\n\n" + h.table(headers, rows))
    for name, tr in doc.get("transfers", {}).items():
        pinn = doc["pinn_reference"].get(name, {}).get("network")
        text += (f"\n\nNetwork fitted to {tr['train_case']} (refined labels) applied to {tr['apply_case']}: "
                 f"network alone {_ssim(tr['network']['metrics'])} in {tr['network']['seconds']:.1f} s "
                 f"(the PINN fitted to {tr['train_case']}, suite run: {_ssim(pinn)}), "
                 f"+ {doc['passes']} passes {_ssim(tr['network_refined']['metrics'])} in "
                 f"{tr['network_refined']['seconds']:.1f} s.")
    return text + ("\n\nRegenerate: `python benchmarks/refined_labels.py` (JSON: "
                   "`benchmarks/results/refined-labels-cpu.json`).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated realistic case names")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default: the most that keep optimiser steps <= the case's max_steps)")
    parser.add_argument("--passes", type=int, default=200, help="refinement passes after the network (default: 200)")
    parser.add_argument("--transfer", action="store_true",
                        help="also apply the first case's network to the second case's scan")
    parser.add_argument("--batch-size", type=int, default=SETTINGS["batch_size"],
                        help=f"training batch size (default: {SETTINGS['batch_size']})")
    parser.add_argument("--learning-rate", type=float, default=SETTINGS["learning_rate"],
                        help=f"peak learning rate (default: {SETTINGS['learning_rate']:g})")
    parser.add_argument("--scheduler", default=SETTINGS["scheduler"], help="TrainingConfig.scheduler")
    parser.add_argument("--lr-min-ratio", type=float, default=SETTINGS["lr_min_ratio"],
                        help="TrainingConfig.lr_min_ratio (WarmupCosine's floor)")
    parser.add_argument("--n-filters-scale", type=int, default=SETTINGS["n_filters_scale"],
                        help=f"ModelConfig.n_filters_scale, the network's width (default: {SETTINGS['n_filters_scale']})")
    parser.add_argument("--fresh", action="store_true",
                        help="do not merge into results measured earlier with the same settings")
    parser.add_argument("--stitch-exponents", default="2",
                        help="comma-separated stitch weight exponents at which the network alone is also "
                             "scored (InferenceConfig.stitch_weight_exponent; the main column uses the automatic "
                             "one, 3 for these supervised networks); empty for none (default: 2, the PINN's)")
    parser.add_argument("--precision", choices=h.PRECISIONS, default=SETTINGS["precision"],
                        help=f"training and inference precision (default: {SETTINGS['precision']})")
    h.add_common_arguments(parser, NAME, quick_help="CI-sized: 128 positions, 2 epochs", precision=False)
    args = parser.parse_args(argv)
    settings = {**SETTINGS, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                "scheduler": args.scheduler, "lr_min_ratio": args.lr_min_ratio,
                "precision": args.precision, "n_filters_scale": args.n_filters_scale}
    from ptychodus_ptychopinn_torch.config import InferenceConfig

    settings["stitch_weight_exponent"] = InferenceConfig().stitch_exponent("supervised")  # the main column's
    try:
        exponents = tuple(float(e) for e in args.stitch_exponents.split(",") if e.strip())
        for e in exponents:
            InferenceConfig(stitch_weight_exponent=e)
    except ValueError as exc:
        raise SystemExit(f"--stitch-exponents {args.stitch_exponents!r}: {exc}") from None
    if args.n_filters_scale < 1:
        raise SystemExit(f"--n-filters-scale must be a positive integer, got {args.n_filters_scale}")

    h.quiet_third_party_logs()
    start = time.perf_counter()
    device = h.torch_device(args.device)
    cases, _ = realistic.load_cases(realistic.CASES_FILE, quick=args.quick)
    passes = 5 if args.quick else args.passes
    names = [s.strip() for s in args.cases.split(",") if s.strip()]
    for name in names:
        if name not in cases:
            raise SystemExit(f"unknown case {name!r}; expected one of {sorted(cases)}")
    doc: dict[str, Any] = {"benchmark": NAME, "machine": h.machine_info(device), "settings": settings,
                           "passes": passes, "pinn_reference": pinn_reference(args.out / f"realistic-{device.type}.json"),
                           "cases": {}, "transfers": {}}
    kept = {}
    epochs = args.epochs or (2 if args.quick else None)
    for i, name in enumerate(names):
        doc["cases"][name], run = run_case(cases[name], epochs, settings, device, passes,
                                           stitch_exponents=exponents)
        doc["cases"][name]["run_date_utc"] = doc["machine"]["date_utc"]
        if args.transfer and i < 2:
            kept[name] = run
    if args.transfer and len(names) >= 2:
        doc["transfers"][f"{names[0]}-on-{names[1]}"] = {
            "train_case": names[0], "apply_case": names[1],
            **run_transfer(kept[names[0]], kept[names[1]], device, passes),
            "run_date_utc": doc["machine"]["date_utc"]}
    h.finish_info(doc["machine"], start)
    doc["runs"] = [doc["machine"]]
    doc = merge(h.results_path(args, NAME, device), doc, fresh=args.fresh)
    h.publish(doc, args, NAME, device, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
