"""Smoke tests of the benchmarks: both scripts run in their CI-sized form and write sane JSON.

No thresholds on speed: only the presence of the expected keys and positive, finite numbers.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptychodus_ptychopinn_torch.config import InferenceConfig

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"


def _numbers(value, path=""):
    """Yield (path, number) for every number in a JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{path}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def _positive(doc, *keys):
    for key in keys:
        found = [(p, v) for p, v in _numbers(doc) if p.endswith("." + key)]
        assert found, f"no {key} in the results"
        for path, value in found:
            assert math.isfinite(value) and value > 0, f"{path} = {value}"


def _run(script: str, out: Path) -> dict:
    doc_path = out / "performance.md"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--device", "cpu", "--out", str(out),
         "--doc", str(doc_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = script.replace(".py", "")
    result = json.loads((out / f"{name}-cpu.json").read_text())
    text = doc_path.read_text()
    assert f"<!-- {name}-cpu:start -->" in text and f"<!-- {name}-cpu:end -->" in text
    for path, value in _numbers(result):
        assert math.isfinite(value) and value >= 0, f"{path} = {value}"
    return result


@pytest.mark.slow
def test_benchmarks_quick(tmp_path):
    engine = _run("engine.py", tmp_path)
    assert engine["benchmark"] == "engine" and engine["quick"] is True
    assert {c["gridsize"] for c in engine["cases"]} == {1, 2}
    for case in engine["cases"]:
        assert {"lightning", "loop", "lightning_over_loop_time"} <= set(case["training"])
        assert "memory" in case["inference"]
    _positive(engine, "samples_per_s", "patterns_per_s", "seconds", "host_peak_mib", "lightning_over_loop_time")

    suite = _run("suite.py", tmp_path)
    assert suite["benchmark"] == "suite"
    assert {"machine", "peak", "flops", "inference", "training", "scaling", "ptychi"} <= set(suite)
    assert suite["inference"] and suite["training"]
    assert suite["scaling"]["network"] and suite["scaling"]["pipeline"]
    assert suite["ptychi"]["status"] == "skipped"
    _positive(suite, "matmul_fp32_gflops", "forward_gflop_per_group", "training_gflop_per_group",
              "patterns_per_s", "samples_per_s", "end_to_end_over_bare", "achieved_gflops", "fraction_of_peak",
              "us_per_pattern", "host_peak_mib")
    # The markdown sections of both runs live side by side in one file.
    text = (tmp_path / "performance.md").read_text()
    assert text.count(":start -->") == 2


def test_markdown_section_is_replaced(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import harness
    finally:
        sys.path.remove(str(BENCHMARKS))
    doc = tmp_path / "perf.md"
    doc.write_text("# P\n\nintro\n\n<!-- x:start -->\nold\n<!-- x:end -->\n\ntail\n")
    harness.update_markdown(doc, "x", "new table")
    harness.update_markdown(doc, "y", "other")
    text = doc.read_text()
    assert "old" not in text and "new table" in text and "intro" in text and "tail" in text
    assert text.index("<!-- y:start -->") > text.index("tail")
    harness.update_markdown(doc, "y", "again")
    assert doc.read_text().count("<!-- y:start -->") == 1 and "again" in doc.read_text()


def test_missing_ptychi_environment_is_reported(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import suite
    finally:
        sys.path.remove(str(BENCHMARKS))
    import torch

    plan = suite.make_plan(True, torch.device("cpu"))
    result = suite.compare_ptychi(plan, torch.device("cpu"), tmp_path / "no-such-python")
    assert result["status"] == "unavailable" and "venv" in result["reason"]


def _realistic_module():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import realistic
    finally:
        sys.path.remove(str(BENCHMARKS))
    return realistic


def test_realistic_cases_fixture():
    """The case file holds what the suite promises: photograph pairs at 10^5 photons, a weak-phase
    case, low-dose cases, 1024 positions, and pretrained entries naming existing cases."""
    realistic = _realistic_module()
    cases, transfers = realistic.load_cases(realistic.CASES_FILE, quick=False)
    photos = [c for c in cases.values() if c.obj.startswith("photo:")]
    assert len({c.obj for c in photos if c.photons_per_pattern == 1e5 and "@" not in c.obj}) >= 4
    assert any("@0.3" in c.obj for c in photos)
    assert sum(c.photons_per_pattern == 1e3 for c in cases.values()) >= 2
    for case in cases.values():
        assert case.num_positions == 1024 and case.N == 64 and case.probe == "structured"
        assert case.nepochs * case.steps_per_epoch <= case.max_steps
        assert case.match_passes in case.refine_passes
        case.training_config()  # valid TrainingConfig
    assert transfers
    chosen, chosen_transfers = realistic.select(cases, transfers, [next(iter(transfers))])
    assert len(chosen) == 2 and chosen_transfers == [next(iter(transfers))]
    quick, _ = realistic.load_cases(realistic.CASES_FILE, quick=True)
    assert all(c.num_positions == 128 and c.nepochs <= 2 for c in quick.values())


@pytest.mark.slow
def test_realistic_quick(tmp_path):
    doc_file = REPO / "docs" / "performance.md"
    before = doc_file.stat().st_mtime if doc_file.exists() else None
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "realistic.py"), "--quick", "--cases", "brick-gravel", "--no-ptychi",
         "--doc", str(tmp_path / "performance.md"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "realistic-cpu-quick.json").read_text())
    # the doc update runs too, into its own section of the file given
    section = (tmp_path / "performance.md").read_text()
    assert "<!-- realistic-cpu-quick:start -->" in section and "| brick-gravel |" in section
    assert doc["benchmark"] == "realistic" and doc["quick"] is True and doc["partial"] is False
    assert list(doc["cases"]) == ["brick-gravel"]
    case = doc["cases"]["brick-gravel"]
    assert len(case["load_average_before"]) == 3 and len(case["load_average_after"]) == 3
    training = case["network"]["training"]
    assert len(training["curve"]) == training["epochs_run"] >= 1
    excess = case["network"]["excess"]
    assert excess["units_agree"] is True, excess
    assert [r["passes"] for r in case["network_refined"]] == [r["passes"] for r in case["flat_refined"]] == [2, 5]
    assert case["ptychi"]["status"] == "skipped"
    entries = [case["network"], *case["network_refined"], *case["flat_refined"]]
    for entry in entries:
        assert math.isfinite(entry["seconds"]) and entry["seconds"] > 0
        for key in ("amplitude_ssim", "phase_ssim", "amplitude_psnr", "phase_psnr"):
            assert entry["metrics"][key] is not None and math.isfinite(entry["metrics"][key]), key
        # an FRC that never reaches its threshold is null with its flag at 0, not a number
        frc, reached = entry["metrics"]["frc_1_7_px"], entry["metrics"]["frc_1_7_reached"]
        assert (frc is None and reached == 0.0) or (math.isfinite(frc) and reached == 1.0), entry
        assert -1.0 <= entry["metrics"]["amplitude_ssim"] <= 1.0
    # refinement lowers the stitched network object's NLL
    assert case["network_refined"][-1]["excess_nll"] < case["network"]["excess_nll"]
    assert (tmp_path / "realistic-images" / "brick-gravel.png").stat().st_size > 10_000
    if before is not None:
        assert doc_file.stat().st_mtime == before  # --doc elsewhere leaves docs/performance.md alone


def test_information_bound_tiles_keep_groups_apart_and_subpixel_shifts():
    sys.path.insert(0, str(BENCHMARKS))
    import information_bound

    rng = np.random.default_rng(0)
    positions = rng.uniform(40, 200, size=(50, 2))
    groups, tiled, shape = information_bound.group_tiles(positions, 4, 64)
    assert groups.shape == (50, 4) and np.all(groups[:, 0] == np.arange(50))  # seed first
    # each group keeps its positions' sub-pixel parts and relative offsets ...
    np.testing.assert_allclose(np.mod(tiled, 1.0), np.mod(positions[groups], 1.0), atol=1e-9)
    np.testing.assert_allclose(tiled - tiled[:, :1], positions[groups] - positions[groups][:, :1], atol=1e-9)
    # ... and its windows stay inside its own tile of the canvas
    lo, hi = tiled.min(axis=1) - 31.5, tiled.max(axis=1) + 31.5
    assert lo.min() >= 0 and hi[:, 0].max() < shape[1] and hi[:, 1].max() < shape[0]
    boxes = np.concatenate([lo, hi], axis=1)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (i, j)


@pytest.mark.slow
def test_information_bound_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "information_bound.py"), "--quick", "--no-doc", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "information-bound-cpu-quick.json").read_text())
    entry = doc["cases"]["brick-gravel"]
    assert [g["group_size"] for g in entry["groups"]] == [1, 4]
    assert entry["groups"][1]["patterns_per_pass"] == 4 * entry["groups"][0]["patterns_per_pass"]
    for g in entry["groups"]:
        assert math.isfinite(g["final_nll"]) and g["final_nll"] > 0
        for key in ("amplitude_ssim", "phase_ssim"):
            assert -1.0 <= g["stitched"][key] <= 1.0 and -1.0 <= g["stitched_phase_aligned"][key] <= 1.0


def test_refined_labels_runs_merge_only_with_equal_settings(tmp_path):
    """A subset run adds its cases to earlier results of the same settings (a case run again
    replaces its entry, and a run no case comes from any more is dropped); other settings start over."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import refined_labels
    finally:
        sys.path.remove(str(BENCHMARKS))

    def doc(date, cases, settings=None):
        machine = {"date_utc": date, "device": "cpu"}
        return {"benchmark": "refined-labels", "settings": settings or {"n_filters_scale": 2}, "passes": 200,
                "machine": machine, "runs": [machine], "transfers": {},
                "cases": {c: {"run_date_utc": date, "score": f"{c}@{date}"} for c in cases}}

    path = tmp_path / "refined-labels-cpu.json"
    path.write_text(json.dumps(doc("A", ["a", "b"])))
    merged = refined_labels.merge(path, doc("B", ["b", "c"]))
    assert {c: e["score"] for c, e in merged["cases"].items()} == {"a": "a@A", "b": "b@B", "c": "c@B"}
    assert [r["date_utc"] for r in merged["runs"]] == ["A", "B"]
    path.write_text(json.dumps(merged))
    again = refined_labels.merge(path, doc("C", ["a"]))
    assert [r["date_utc"] for r in again["runs"]] == ["B", "C"] and again["cases"]["a"]["score"] == "a@C"
    other = doc("D", ["a"], settings={"n_filters_scale": 1})
    assert refined_labels.merge(path, other) is other
    assert refined_labels.merge(path, doc("E", ["a"]), fresh=True)["runs"][0]["date_utc"] == "E"


@pytest.mark.slow
def test_refined_labels_quick(tmp_path):
    """The supervised-on-refined-labels benchmark runs end to end (CI size) and records what the
    performance table quotes: label refinement, training steps, network-alone scores, transfer."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "refined_labels.py"), "--quick", "--no-doc", "--out", str(tmp_path),
         "--cases", "brick-gravel,text-grass", "--transfer"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "refined-labels-cpu-quick.json").read_text())
    assert list(doc["cases"]) == ["brick-gravel", "text-grass"]
    for entry in doc["cases"].values():
        t = entry["training"]
        assert t["label_passes"] > 0 and 0 < t["label_seconds"] < t["seconds"]
        batch = doc["settings"]["batch_size"]
        assert t["epochs"] == 2 and t["batch_size"] == batch and t["steps"] == 2 * -(-128 // batch)
        # labels from the refinement fit the data far better than a flat object
        assert t["label_excess_nll"] < 0.5 * entry["flat"]["excess_nll"]
        for key in ("network", "network_refined"):
            assert -1.0 <= entry[key]["metrics"]["amplitude_ssim"] <= 1.0
        # the same network scored with the PINN's stitching weight (--stitch-exponents, default 2)
        assert entry["network_by_stitch_exponent"]["2"]["metrics"] != entry["network"]["metrics"]
        # the main column is stitched with the automatic weight of a supervised model
        assert doc["settings"]["stitch_weight_exponent"] == InferenceConfig().stitch_exponent("supervised") == 3.0
    transfer = doc["transfers"]["brick-gravel-on-text-grass"]
    assert transfer["train_case"] == "brick-gravel" and math.isfinite(transfer["network"]["excess_nll"])


def test_quality_subset_run_keeps_the_other_cases_last_results():
    """`benchmarks/quality.py --cases X` replaces X's row and keeps the others, in the fixture's order."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality_benchmark", BENCHMARKS / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    old = {"gridsize1": {"m": 1}, "photo": {"m": 2}}
    merged = quality.merge_results(old, {"photo": {"m": 3}}, ["gridsize1", "gridsize2", "photo"])
    assert merged == {"gridsize1": {"m": 1}, "photo": {"m": 3}}
    assert list(quality.merge_results({}, {"photo": 1, "gridsize1": 2}, ["gridsize1", "photo"])) == ["gridsize1", "photo"]


def test_time_inference_times_the_network_path_only():
    """The inference rate is the network path's: no refinement batches among the timed ones."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import harness
    finally:
        sys.path.remove(str(BENCHMARKS))
    scan = harness.synthetic_scan(16, 64, seed=0)
    bundle = harness.untrained_bundle(scan, harness.training_config(64, 1, n_filters_scale=1))
    result = harness.time_inference(bundle, scan, harness.execution_config("cpu", inference_batch_size=8))
    assert result["batches"] == 2  # 16 positions in batches of 8; 200 refinement passes would add 200


@pytest.mark.slow
def test_device_realistic_export_run_score(tmp_path):
    """The three steps of the device benchmark chain on CPU, CI-sized: scans exported with the
    true object, a run without Ptychodus (self-fit and a capacity fit), objects scored here."""
    script = [sys.executable, str(BENCHMARKS / "device_realistic.py")]
    scans, objects = tmp_path / "scans", tmp_path / "objects"

    def run(*args: str) -> str:
        proc = subprocess.run([*script, *args], capture_output=True, text=True, timeout=600, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    run("export", "--quick", "--cases", "brick-gravel", "--scans", str(scans))
    run("run", "--quick", "--cases", "brick-gravel", "--scans", str(scans), "--device", "cpu", "--out",
        str(objects), "--no-ptychi", "--capacity-seconds", "0.1")
    with np.load(objects / "device-objects-brick-gravel.npz") as data:
        assert set(data.files) == {"network", "refined", "capacity", "capacity-e2"}
    run("score", "--scans", str(scans), "--objects", str(objects), "--results", str(tmp_path),
        "--doc", str(tmp_path / "performance.md"))
    doc = json.loads((tmp_path / "device-realistic-cpu-quick.json").read_text())
    case = doc["cases"]["brick-gravel"]
    assert case["capacity"]["epochs"] == 6 and case["refine_passes"] == 5
    for entry in case["scores"].values():
        assert math.isfinite(entry["metrics"]["amplitude_ssim"]) and math.isfinite(entry["excess_nll"])
    # refinement lowers the network object's NLL, on this path as in the suite
    assert case["scores"]["refined"]["excess_nll"] < case["scores"]["network"]["excess_nll"]
    assert "| brick-gravel |" in (tmp_path / "performance.md").read_text()
    # a scan exported with other settings is refused, not silently reconstructed
    proc = subprocess.run([*script, "run", "--cases", "brick-gravel", "--scans", str(scans), "--device", "cpu",
                           "--out", str(tmp_path / "other"), "--no-ptychi"], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode != 0 and "same --quick" in proc.stderr
