"""Measure reconstruction quality for the cases of tests/fixtures/quality_baseline.json.

    python benchmarks/quality.py [--device cpu|cuda] [--update-baseline]

Writes benchmarks/results/quality-<device>.json and the table between the ``quality-table``
markers of docs/performance.md (`harness.update_markdown`; the hand-written quality section
above them is left alone); a
run of some cases (``--cases``) keeps the other cases' last results, each row with its run's
date. With --update-baseline also records the measured values in the baseline fixture
(thresholds are edited by hand, a margin below the measured values).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ptychodus_ptychopinn_torch import __version__
from ptychodus_ptychopinn_torch.config import ExecutionConfig
from ptychodus_ptychopinn_torch.evaluation import json_safe_metrics
from ptychodus_ptychopinn_torch.quality import QualityCase, run_quality_case

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

BASELINE = h.REPO / "tests" / "fixtures" / "quality_baseline.json"
SECTION = "quality-table"
COLUMNS = ("amplitude_ssim", "phase_ssim", "amplitude_psnr", "phase_psnr", "frc_1_7_px",
           "flat_amplitude_ssim", "train_seconds", "inference_seconds")


def merge_results(old: dict, new: dict, order: list[str]) -> dict:
    """``new``'s cases with ``old``'s for the cases this run did not measure, in ``order``."""
    return {name: new.get(name, old.get(name)) for name in order if name in new or name in old}


def _table(results: dict, device: str) -> str:
    lines = [f"Device: {device}; torch {torch.__version__}; ptychodus-ptychopinn-torch {__version__}; "
             f"{platform.processor() or platform.machine()} (`python benchmarks/quality.py`; JSON: "
             f"`benchmarks/results/quality-{device}.json`)",
             "", "| case | run | settings | " + " | ".join(COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    for name, entry in results.items():
        s = entry["settings"]
        desc = (f"gridsize {s['gridsize']}, {s['num_positions']} positions, N={s['N']}, "
                f"{s['photons_per_pattern']:.0e} photons, nfs {s['n_filters_scale']}, "
                f"{s['nepochs']} epochs, batch {s['batch_size']}")
        cells = []
        for c in COLUMNS:
            v = entry["metrics"].get(c)
            cells.append("n/a" if v is None else f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}")
        if s.get("refine_iterations"):
            desc += f", {s['refine_iterations']} refinement passes"
        lines.append(f"| {name} | {entry.get('date_utc', '?')} | {desc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--update-baseline", action="store_true")
    parser.add_argument("--cases", nargs="*", help="subset of case names")
    args = parser.parse_args()

    baseline = json.loads(BASELINE.read_text())
    execution = ExecutionConfig(accelerator=args.device)
    results = {}
    for name, entry in baseline["cases"].items():
        if args.cases and name not in args.cases:
            continue
        metrics = json_safe_metrics(run_quality_case(QualityCase.from_dict(entry["settings"]), execution))
        results[name] = {"settings": entry["settings"], "metrics": metrics,
                         "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        print(name, json.dumps({k: metrics.get(k) for k in COLUMNS}), flush=True)
        if args.update_baseline:
            entry["measured"] = {k: metrics.get(k) for k in COLUMNS}
    out = h.RESULTS_DIR / f"quality-{args.device}.json"
    old = h.read_results(out, fresh=not args.cases)
    if old is not None:
        results = merge_results(old, results, list(baseline["cases"]))
    h.write_json(out, results)
    if args.update_baseline:
        BASELINE.write_text(json.dumps(baseline, indent=1) + "\n")
    h.update_markdown(h.DOC, SECTION, _table(results, args.device))
    print(f"wrote {out} and the {SECTION} section of {h.DOC}")


if __name__ == "__main__":
    main()
