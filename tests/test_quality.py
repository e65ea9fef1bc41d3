"""Reconstruction quality gate on simulated scans with known truth (slow; runs in CI).

The settings and thresholds live in ``tests/fixtures/quality_baseline.json``; the thresholds
were set from measured runs (``python benchmarks/quality.py``), a margin below the measured
values, and are far above what a flat (collapsed) object scores.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from ptychodus_ptychopinn_torch.config import ExecutionConfig
from ptychodus_ptychopinn_torch.evaluation import evaluate_object
from ptychodus_ptychopinn_torch.quality import QualityCase, quality_failures, run_quality_case
from ptychodus_ptychopinn_torch.simulate import simulate_scan

BASELINE = json.loads((Path(__file__).parent / "fixtures" / "quality_baseline.json").read_text())


def test_the_gate_fails_a_flat_reconstruction():
    case = QualityCase.from_dict(BASELINE["cases"]["gridsize1"]["settings"])
    sim = simulate_scan(num_positions=case.num_positions, N=case.N, seed=case.seed,
                        photons_per_pattern=case.photons_per_pattern)
    truth = sim.product.object_.get_layer(0)
    thresholds = BASELINE["cases"]["gridsize1"]["thresholds"]
    flat = evaluate_object(np.full(truth.shape, 0.8 + 0j), sim.product)
    assert quality_failures(flat, thresholds)
    perfect = evaluate_object(truth, sim.product)
    assert quality_failures(perfect, thresholds) == []


def _half_right(truth: np.ndarray, axis: int) -> np.ndarray:
    """The truth over half the field and a flat object (its mean amplitude) over the other."""
    out = truth.copy()
    index = [slice(None), slice(None)]
    index[axis] = slice(truth.shape[axis] // 2, None)
    out[tuple(index)] = np.mean(np.abs(truth))
    return out


@pytest.mark.parametrize("name", [n for n in sorted(BASELINE["cases"]) if "obj" in BASELINE["cases"][n]["settings"]])
def test_the_photograph_gate_fails_flat_and_half_right_objects(name):
    """A photograph case must reject a flat object and one that is right over only half the field."""
    entry = BASELINE["cases"][name]
    case = QualityCase.from_dict(entry["settings"])
    sim = simulate_scan(num_positions=case.num_positions, N=case.N, seed=case.seed,
                        photons_per_pattern=case.photons_per_pattern, obj=case.obj)
    truth = sim.product.object_.get_layer(0)
    # the final object's thresholds (the network_ ones score the network output of a real run)
    thresholds = {k: v for k, v in entry["thresholds"].items() if not k.startswith("network_")}
    assert quality_failures(evaluate_object(np.full(truth.shape, 0.75 + 0j), sim.product), thresholds)
    for axis in (0, 1):
        half = evaluate_object(_half_right(truth, axis), sim.product)
        assert quality_failures(half, thresholds), f"half-right object (axis {axis}) passes: {half}"
    assert quality_failures(evaluate_object(truth, sim.product), thresholds) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BASELINE["cases"]))
def test_reconstruction_quality(name):
    entry = BASELINE["cases"][name]
    metrics = run_quality_case(QualityCase.from_dict(entry["settings"]), ExecutionConfig(accelerator="cpu"))
    failures = quality_failures(metrics, entry["thresholds"])
    assert not failures, f"{name}: {failures}; measured {metrics}"
