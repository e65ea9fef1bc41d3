"""Reconstruction quality on a simulated scan with known truth: one definition for the test,
the benchmark and the docs.

A case simulates a scan with ``ptychodus.api.simulate`` (structured probe, a textured or a
photograph object, Poisson noise), fits the PINN to it, stitches the object, optionally refines
it under the data (``refine_iterations``), and scores it against the truth with
``ptychodus.api.metrics`` (`evaluation.evaluate_object`). The final object's metrics keep their
plain names; the network's stitched output before refinement is scored too, under ``network_``
names. The gate compares those metrics with thresholds kept in
``tests/fixtures/quality_baseline.json`` and fails on a collapsed (flat) reconstruction however
low its loss.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from .config import ExecutionConfig, ModelConfig, TrainingConfig

__all__ = ["QualityCase", "run_quality_case", "quality_failures"]


@dataclass(frozen=True)
class QualityCase:
    """A simulated scan and the training settings used on it."""

    gridsize: int = 1
    num_positions: int = 256
    N: int = 64  # noqa: N815 - PtychoPINN's name
    photons_per_pattern: float = 1e5
    seed: int = 0
    n_filters_scale: int = 1
    nepochs: int = 60
    batch_size: int = 4
    learning_rate: float = 1e-3
    obj: str = "textured"  # simulate_scan's object: textured, or photo:AMPLITUDE/PHASE[@MAX]
    refine_iterations: int = 0

    def training_config(self) -> TrainingConfig:
        return TrainingConfig(
            model=ModelConfig(N=self.N, gridsize=self.gridsize, n_filters_scale=self.n_filters_scale),
            nepochs=self.nepochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            n_groups=self.num_positions,
            early_stop_patience=max(10, self.nepochs),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QualityCase":
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_quality_case(case: QualityCase, execution: ExecutionConfig | None = None) -> dict[str, Any]:
    """Simulate, train, reconstruct and score; returns the metrics plus timings."""
    from .data.io import scan_from_reconstruct_input
    from .evaluation import evaluate_object
    from .simulate import simulate_scan
    from .config import InferenceConfig
    from .workflows.engine import reconstruct_object, train_model

    execution = execution or ExecutionConfig()
    sim = simulate_scan(num_positions=case.num_positions, N=case.N,
                        photons_per_pattern=case.photons_per_pattern, seed=case.seed, obj=case.obj)
    scan = scan_from_reconstruct_input(sim.reconstruct_input)
    start = time.perf_counter()
    bundle = train_model(scan, case.training_config(), execution)
    train_seconds = time.perf_counter() - start
    inference = InferenceConfig(model=bundle.model_config, refine_iterations=case.refine_iterations)
    reconstruction = reconstruct_object(bundle, scan, inference, execution=execution)
    metrics = dict(evaluate_object(reconstruction.object, sim.product))
    if case.refine_iterations and reconstruction.network_object is not None:
        network = evaluate_object(reconstruction.network_object, sim.product)
        metrics.update({f"network_{k}": v for k, v in network.items() if not k.startswith("flat_")})
    summary = reconstruction.refinement
    metrics.update(
        train_seconds=train_seconds,
        inference_seconds=reconstruction.seconds,
        refinement_seconds=summary.seconds if summary is not None else 0.0,
        epochs_run=len(bundle.history["train_loss"]),
        final_train_loss=bundle.history["train_loss"][-1],
        final_nll=summary.final_loss if summary is not None else float("nan"),
        flat_nll=summary.flat_loss if summary is not None else float("nan"),
    )
    return metrics


def quality_failures(metrics: Mapping[str, float], thresholds: Mapping[str, float]) -> list[str]:
    """Which metrics fall below their thresholds (``*_min``) or above (``*_max``).

    Always also requires the amplitude to beat a flat object clearly (``flat_margin``, default
    0.15 SSIM) so a collapsed reconstruction can never pass.
    """
    failures = []
    for key, limit in thresholds.items():
        if key == "flat_margin":
            continue
        name, _, kind = key.rpartition("_")
        value = metrics.get(name)
        if value is None or value != value:  # missing or NaN
            failures.append(f"{name} is missing")
        elif kind == "min" and value < limit:
            failures.append(f"{name} = {value:.4f} < {limit}")
        elif kind == "max" and value > limit:
            failures.append(f"{name} = {value:.4f} > {limit}")
    margin = float(thresholds.get("flat_margin", 0.15))
    amp, flat = metrics.get("amplitude_ssim"), metrics.get("flat_amplitude_ssim")
    if amp is None or flat is None or not amp >= flat + margin:
        failures.append(f"amplitude SSIM {amp} does not beat a flat object's {flat} by {margin}")
    return failures
