"""What a gridsize-C training loss can identify: each group's own small ptychography, solved alone.

    python benchmarks/information_bound.py                              # brick-gravel, C = 1 and 4
    python benchmarks/information_bound.py --cases chelsea-coffee --group-sizes 1,4,9
    python benchmarks/information_bound.py --quick --no-doc --out /tmp/b   # CI-sized

The PINN's unsupervised loss sees one group of C patterns at a time (C = gridsize**2: one pattern
at gridsize 1, a seed and its C - 1 nearest neighbours otherwise). Whatever network is trained,
its loss is lowest for objects that explain *each group's* patterns. This benchmark asks what
those objects look like, without any network: every group of a realistic suite scan
(`benchmarks/cases/realistic.json`) is reconstructed on its own small canvas by the engine's
physics refinement (known probe and positions, flat start, `refinement.refine_object`), all
groups at once on one large canvas of separate tiles; then each group's patch at its seed
position is stitched exactly as the network's patches are stitched (`inference.stitch_patches`)
and scored against the truth (`evaluation.evaluate_object`). Reported per group size: the mean
NLL the groups reach (engine units, mean nats per pixel with ``log k!``) next to the true object's
NLL, and the stitched SSIM, raw and with each patch's constant phase aligned to the truth (an
oracle: a group fixes its object only up to such a constant).

If a group size fits the data better than the truth while its stitched object is poor, that
training loss cannot make the network converge to the object, whatever the architecture or the
optimiser: the measured ambiguity, not capacity, bounds it.
"""

from __future__ import annotations

import argparse
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

NAME = "information-bound"


def group_tiles(positions: np.ndarray, c: int, n: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """``(groups (M, C), positions on the tiled canvas (M, C, 2), canvas shape)``.

    Group ``j`` is position ``j`` and its ``c - 1`` nearest neighbours; each group gets its own
    square tile of the canvas (integer offsets keep every sub-pixel shift as it was).
    """
    from scipy.spatial import cKDTree

    m = len(positions)
    _, idx = cKDTree(positions).query(positions, k=c)
    groups = np.asarray(idx, dtype=np.int64).reshape(m, c)
    gp = positions[groups]
    half = (n - 1) / 2.0
    corner = np.floor(gp.min(axis=1) - half) - 2.0
    side = int(np.ceil((gp.max(axis=1) - gp.min(axis=1)).max())) + n + 6
    per_row = int(math.ceil(math.sqrt(m)))
    tile = np.stack([np.arange(m) % per_row, np.arange(m) // per_row], axis=1) * side
    tiled = gp - corner[:, None, :] + tile[:, None, :]
    return groups, tiled, (per_row * side, per_row * side)


def run_group_size(sim: Any, scan: Any, c: int, passes: int, alpha: float | None,
                   device: torch.device) -> dict[str, Any]:
    from ptychodus_ptychopinn_torch.data.dataset import extract_patches
    from ptychodus_ptychopinn_torch.inference import stitch_patches
    from ptychodus_ptychopinn_torch.refinement import RefinementOptions, ScanTensors, refine_object

    n = scan.N
    positions = scan.positions_px
    amplitudes = np.asarray(scan.amplitudes[:], dtype=np.float32)
    groups, tiled, shape = group_tiles(positions, c, n)
    data = ScanTensors.from_arrays(amplitudes[groups.ravel()], tiled.reshape(-1, 2), shape)
    options = RefinementOptions(iterations=passes) if alpha is None else RefinementOptions(iterations=passes, alpha=alpha)
    probe = scan.probe * (scan.propagator_scale or 1.0)
    t0 = time.perf_counter()
    result = refine_object(None, probe, data, options, device=device)
    seconds = time.perf_counter() - t0

    seeds = extract_patches(result.object, tiled[:, 0, :], n)  # each group's patch at its seed
    truth = extract_patches(scan.object_guess, positions, n)
    weight = np.abs(scan.probe) ** 2
    offset = np.angle(np.sum(weight * seeds * np.conj(truth), axis=(1, 2)))
    aligned = seeds * np.exp(-1j * offset)[:, None, None]

    def stitched(patches: np.ndarray) -> dict[str, float]:
        obj = stitch_patches([(torch.from_numpy(patches.astype(np.complex64)), torch.from_numpy(positions))],
                             scan.object_shape, torch.from_numpy(scan.probe)).numpy()
        return realistic.score(obj, sim.product)

    raw, oracle = stitched(seeds), stitched(aligned)
    return {"group_size": c, "passes": passes, "alpha": options.alpha, "seconds": seconds,
            "patterns_per_pass": int(groups.size), "final_nll": result.losses[-1] if result.losses else None,
            "stitched": {k: raw[k] for k in ("amplitude_ssim", "phase_ssim", "amplitude_psnr", "phase_psnr")},
            "stitched_phase_aligned": {k: oracle[k] for k in ("amplitude_ssim", "phase_ssim")},
            "patch_phase_offset_std_rad": float(np.std(offset))}


def markdown(doc: dict[str, Any]) -> str:
    rows = []
    for name, entry in doc["cases"].items():
        for r in entry["groups"]:
            rows.append([name, r["group_size"], r["passes"], r["alpha"], round(r["seconds"], 1),
                         r["final_nll"], entry["truth_nll"], entry["flat_amplitude_ssim"],
                         r["stitched"]["amplitude_ssim"], r["stitched"]["phase_ssim"],
                         r["stitched_phase_aligned"]["amplitude_ssim"], r["stitched_phase_aligned"]["phase_ssim"]])
    headers = ["case", "group size C", "passes", "alpha", "seconds", "groups' NLL", "truth NLL", "flat amp SSIM",
               "amp SSIM", "phase SSIM", "amp SSIM (phase-aligned)", "phase SSIM (phase-aligned)"]
    return (f"{h.machine_line(doc['machine'])}\n\n" + h.table(headers, rows) +
            "\n\nRegenerate: `python benchmarks/information_bound.py` (JSON: "
            "`benchmarks/results/information-bound-cpu.json`).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="brick-gravel", help="comma-separated realistic case names")
    parser.add_argument("--group-sizes", default="1,4", help="comma-separated C (patterns per group)")
    parser.add_argument("--passes", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=None, help="refinement alpha (default: the engine's)")
    h.add_common_arguments(parser, NAME, quick_help="CI-sized: 128 positions, 5 passes", precision=False)
    args = parser.parse_args(argv)

    from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
    from ptychodus_ptychopinn_torch.simulate import simulate_scan

    h.quiet_third_party_logs()
    start = time.perf_counter()
    device = h.torch_device(args.device)
    cases, _ = realistic.load_cases(realistic.CASES_FILE, quick=args.quick)
    passes = 5 if args.quick else args.passes
    sizes = [int(s) for s in args.group_sizes.split(",") if s.strip()]
    doc: dict[str, Any] = {"benchmark": NAME, "machine": h.machine_info(device), "cases": {}}
    for name in [s.strip() for s in args.cases.split(",") if s.strip()]:
        if name not in cases:
            raise SystemExit(f"unknown case {name!r}; expected one of {sorted(cases)}")
        case = cases[name]
        sim = simulate_scan(**case.simulate_kwargs())
        scan = scan_from_reconstruct_input(sim.reconstruct_input)
        truth = np.asarray(sim.product.object_.get_layers_flattened(), dtype=np.complex64)
        lik = realistic.Likelihood(scan, device)
        flat = realistic.score(np.ones(scan.object_shape, np.complex64), sim.product)
        entry = {"settings": case.simulate_kwargs(), "truth_nll": lik.nll(truth)[0],
                 "flat_amplitude_ssim": flat["amplitude_ssim"], "groups": []}
        for c in sizes:
            r = run_group_size(sim, scan, c, passes, args.alpha, device)
            print(name, r, flush=True)
            entry["groups"].append(r)
        doc["cases"][name] = entry
    h.finish_info(doc["machine"], start)
    h.publish(doc, args, NAME, device, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
