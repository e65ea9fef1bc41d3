"""The engine facade: train a model on a scan, reconstruct an object with a model.

This is the one place that turns a `ScanData` and explicit configs into tensors, a trained
`ModelBundle` or a stitched object. The CLI, the Ptychodus integration and the
PtychoPINN-compatible `components` all go through it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import __version__, params, physics
from ..checkpoint import ModelBundle, build_model
from ..config import ExecutionConfig, InferenceConfig, TrainingConfig
from ..data.dataset import GroupedDataset, normalisation_factor, split_groups
from ..data.grouping import group_positions
from ..data.scan import ScanData
from ..device import check_precision, lightning_accelerator, resolve_device
from ..inference import PatchStitcher
from ..model.pinn import PhysicsConstants, implied_object_amplitude
from ..refinement import (
    RefinementCancelled,
    RefinementOptions,
    ScanTensors,
    flat_object,
    negative_log_likelihood,
    refine_object,
)
from ..training import EpochReport, PtychoPINNModule, TrainingCancelled, TrainingDiverged, fit

__all__ = [
    "LABEL_ALIGNMENT",
    "stitch_subpixel",
    "EpochReport",
    "Reconstruction",
    "RefinementSummary",
    "refine_reconstruction",
    "TrainingCancelled",
    "TrainingDiverged",
    "derive_constants",
    "refined_labels",
    "train_model",
    "reconstruct_object",
    "inference_devices",
]

logger = logging.getLogger(__name__)

#: How supervised labels are cut (`data.dataset.extract_windows`), recorded in each supervised
#: model's provenance so that stitching matches what the network learned (`stitch_subpixel`).
LABEL_ALIGNMENT = "integer-window"


@dataclass(frozen=True)
class RefinementSummary:
    """What the physics refinement did, in the units of the training loss (nats per pixel).

    ``flat_loss`` is the NLL of a flat, zero-phase object of the right mean intensity; a
    reconstruction whose ``final_loss`` exceeds it fits the data worse than no reconstruction.
    """

    iterations: int  # passes asked for
    passes_run: int
    losses: list[float]  # per pass
    network_loss: float  # NLL of the stitched network object (after the scale fit)
    flat_loss: float
    final_loss: float
    seconds: float
    stopped_early: str | None
    scale: float  # amplitude factor that brought the network object into the probe's gauge


@dataclass(frozen=True)
class Reconstruction:
    """A stitched (and refined) object in the scan's object canvas, with the scan positions.

    ``object`` is the final object; with refinement, ``network_object`` is the stitched network
    output before it (in the network's own amplitude gauge) and ``refinement`` says what the
    refinement did. ``probe`` is the refined probe when the probe was refined, else None.
    """

    object: np.ndarray  # (H, W) complex64
    object_x_px: np.ndarray  # (M,) float64
    object_y_px: np.ndarray  # (M,) float64
    coverage: np.ndarray  # (H, W) float32 stitching weights (0 = not illuminated)
    seconds: float
    network_object: np.ndarray | None = None
    refinement: RefinementSummary | None = None
    probe: np.ndarray | None = None
    network_seconds: float | None = None
    warnings: tuple[str, ...] = ()

    @property
    def amplitude(self) -> np.ndarray:
        return np.abs(self.object)

    @property
    def phase(self) -> np.ndarray:
        return np.angle(self.object)


def _seed_everything(seed: int) -> None:
    import lightning as L

    L.seed_everything(seed, workers=True, verbose=False)


def derive_constants(scan: ScanData, training: TrainingConfig, groups: np.ndarray) -> PhysicsConstants:
    """Normalisation, intensity scale, probe factor, amplitude range and merge canvas."""
    model = training.model
    n = model.N
    kappa = normalisation_factor(scan.amplitudes)
    nphotons = float(training.nphotons) if training.nphotons is not None else float(scan.mean_counts)
    if not nphotons > 0:
        raise ValueError("the scan holds no photons (all patterns are zero); cannot train on it")
    probe = torch.as_tensor(scan.probe, dtype=torch.complex64)
    normalized, factor = physics.normalize_probe(probe, model.probe_scale)
    if model.model_type == "supervised":
        if scan.object_guess is None:
            raise ValueError("supervised training needs the true object (objectGuess) in the training "
                             "data, or supervised_labels='refined' to reconstruct its labels from the scan")
        amp_max = 1.25 * float(np.max(np.abs(scan.object_guess)))
    else:
        amp_max = 2.0 * implied_object_amplitude(normalized, n)
    max_offset = 0.0
    if groups.shape[1] > 1:
        pos = scan.positions_px[groups]  # (G, C, 2)
        max_offset = float(np.max(np.abs(pos - pos.mean(axis=1, keepdims=True))))
    return PhysicsConstants(
        N=n,
        kappa=float(kappa),
        nphotons=nphotons,
        intensity_scale=math.sqrt(nphotons) / (n / 2.0),
        probe_factor=float(factor),
        amp_max=float(max(amp_max, 1e-3)),
        canvas_size=physics.canvas_size(n, max_offset + 1.0),
    )


def _loader(dataset, batch_size: int, *, shuffle: bool, execution: ExecutionConfig, device, seed: int):
    # A plain DataLoader, so Lightning can swap in a DistributedSampler under DDP.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=execution.num_workers,
        pin_memory=execution.pin_memory and device.type == "cuda",
        persistent_workers=execution.num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def train_model(
    scan: ScanData,
    training: TrainingConfig,
    execution: ExecutionConfig | None = None,
    *,
    validation_scan: ScanData | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ModelBundle:
    """Train a PtychoPINN (or supervised) model on ``scan``.

    Groups are drawn per `TrainingConfig` (``n_groups``, ``neighbor_count``, seed); a
    ``validation_fraction`` of them is held out unless ``validation_scan`` is given. Raises
    `TrainingCancelled` if ``should_stop()`` becomes true and `TrainingDiverged` if no epoch ends
    with a finite loss; bad data raise ``ValueError`` before any training starts.
    """
    execution = execution or ExecutionConfig()
    model_cfg = training.model
    scan.validate(N=model_cfg.N, gridsize=model_cfg.gridsize, neighbor_count=training.neighbor_count)
    if validation_scan is not None:
        validation_scan.validate(N=model_cfg.N, gridsize=model_cfg.gridsize, neighbor_count=training.neighbor_count)
    device, reason = resolve_device(execution)
    check_precision(device, execution.precision)
    accelerator, devices = lightning_accelerator(execution)
    logger.info("training on %s", reason)
    seed = training.subsample_seed if training.subsample_seed is not None else execution.seed
    labels = None
    if model_cfg.model_type == "supervised" and training.supervised_labels == "refined":
        scan, labels = refined_labels(scan, device=device, seed=seed, should_stop=should_stop)
        if validation_scan is not None:
            validation_scan, _ = refined_labels(validation_scan, device=device, seed=seed,
                                                should_stop=should_stop)
    _seed_everything(seed)

    groups = group_positions(
        scan.positions_px, gridsize=model_cfg.gridsize, n_groups=training.n_groups,
        neighbor_count=training.neighbor_count, seed=seed, sequential=training.sequential_sampling,
        n_subsample=training.n_subsample,
    )
    constants = derive_constants(scan, training, groups)
    if training.nphotons is None:
        # Record the photon count actually used in the legacy view.
        params.update_legacy_dict(params.cfg, dataclasses.replace(training, nphotons=constants.nphotons))
    params.cfg["intensity_scale"] = constants.intensity_scale

    supervised = model_cfg.model_type == "supervised"
    if validation_scan is None:
        train_groups, val_groups = split_groups(groups, training.validation_fraction, seed)
        val_source = scan
    else:
        train_groups = groups
        val_groups = group_positions(
            validation_scan.positions_px, gridsize=model_cfg.gridsize, n_groups=None,
            neighbor_count=training.neighbor_count, seed=seed, all_positions=True,
        )
        val_source = validation_scan
    train_set = GroupedDataset(scan, train_groups, constants.kappa, with_truth=supervised)
    train_loader = _loader(train_set, training.batch_size, shuffle=True, execution=execution, device=device, seed=seed)
    val_loader = None
    if len(val_groups):
        val_kappa = constants.kappa if validation_scan is None else normalisation_factor(val_source.amplitudes)
        val_set = GroupedDataset(val_source, val_groups, val_kappa, with_truth=supervised)
        val_loader = _loader(val_set, training.batch_size, shuffle=False, execution=execution, device=device, seed=seed)

    network = build_model(training, constants, scan.probe)
    detector_mask = None
    if scan.bad_pixels is not None and scan.bad_pixels.any():
        detector_mask = torch.as_tensor(~scan.bad_pixels)
    if execution.compile:
        network.generator.compile()  # keeps state_dict keys; pays off on long runs
    module = PtychoPINNModule(network, training, detector_mask)
    logger.info(
        "training %s: N=%d gridsize=%d, %d training and %d validation groups, %d epochs, batch %d; "
        "nphotons %.4g, intensity scale %.4g, amplitude range %.3g",
        model_cfg.model_type, model_cfg.N, model_cfg.gridsize, len(train_groups), len(val_groups),
        training.nepochs, training.batch_size, constants.nphotons, constants.intensity_scale, constants.amp_max,
    )
    start = time.perf_counter()
    history = fit(
        module, train_loader, val_loader, training, execution, accelerator=accelerator, devices=devices,
        on_epoch=on_epoch, on_batch=on_batch, should_stop=should_stop,
    )
    seconds = time.perf_counter() - start
    network = module.model.to(device).eval()
    provenance = {
        "package_version": __version__,
        "torch_version": str(torch.__version__),
        "trained_on": reason,
        "precision": execution.precision,
        "seed": seed,
        "training_seconds": round(seconds, 3),
        "epochs_run": len(history["train_loss"]),
        "final_train_loss": history["train_loss"][-1] if history["train_loss"] else None,
        "final_val_loss": history["val_loss"][-1] if history["val_loss"] else None,
        "supervised_labels": labels,
        # Supervised labels are integer windows since 2026-11-30; older supervised models learned
        # Fourier-shifted patches and keep the shifted stitching (`stitch_subpixel`).
        "label_alignment": LABEL_ALIGNMENT if supervised else None,
        "dataset": {
            "num_patterns": scan.num_positions,
            "num_training_groups": int(len(train_groups)),
            "num_validation_groups": int(len(val_groups)),
            "object_shape": list(scan.object_shape),
            "mean_counts": float(scan.mean_counts),
        },
    }
    return ModelBundle(
        network=network, training_config=training, constants=constants,
        probe=np.asarray(scan.probe, dtype=np.complex64), history=history, provenance=provenance,
    )


def _refinement_inputs(scan: ScanData) -> tuple[ScanTensors, torch.Tensor, float]:
    """The refinement's view of ``scan``: its patterns and positions, and its probe times the
    host's propagator scale (so the refined object is the physical transmission of the
    product's probe; without that scale it keeps the gauge the global scale fit gives it)."""
    data = ScanTensors.from_patterns(scan.amplitudes, scan.positions_px, scan.object_shape, scan.bad_pixels)
    propagator = scan.propagator_scale or 1.0
    return data, torch.as_tensor(scan.probe, dtype=torch.complex64) * propagator, propagator


def _refine(initial, probe: torch.Tensor, data: ScanTensors, options: RefinementOptions, **kwargs):
    """`refinement.refine_object`, with a stop reported as the engine's `TrainingCancelled`."""
    try:
        return refine_object(initial, probe, data, options, **kwargs)
    except RefinementCancelled as exc:
        raise TrainingCancelled(str(exc)) from None


def refined_labels(scan: ScanData, *, device: torch.device, seed: int = 0,
                   should_stop: Callable[[], bool] | None = None) -> tuple[ScanData, dict]:
    """``scan`` with its object replaced by the refinement's reconstruction of the scan itself.

    The labels of ``supervised_labels="refined"``: the same Poisson refinement as inference
    (`RefinementOptions` defaults), from a flat object, with the scan's probe and positions. It
    sees every overlapping pattern at once, which a gridsize-1 network's loss cannot
    (docs/performance.md, "What limits the network"). Returns the new scan and a summary for
    the model's provenance. Raises `TrainingCancelled` when ``should_stop()`` turns true.
    """
    start = time.perf_counter()
    data, probe, _ = _refinement_inputs(scan)
    options = RefinementOptions(batch_size=REFINE_BATCH_SIZE, seed=seed)
    logger.info("supervised labels: refining a flat object, %d passes over %d positions",
                options.iterations, scan.num_positions)
    result = _refine(None, probe, data, options, device=device, should_stop=should_stop)
    if result.stopped_early:
        logger.warning("supervised labels: %s", result.stopped_early)
    loss = negative_log_likelihood(torch.as_tensor(result.object), probe, data, device=device)
    summary = {"source": "refined", "passes": result.passes_run, "nll": float(loss),
               "seconds": round(time.perf_counter() - start, 3)}
    logger.info("supervised labels: NLL %.4g after %d passes in %.1f s", loss, result.passes_run,
                summary["seconds"])
    return dataclasses.replace(scan, object_guess=result.object.astype(np.complex64)), summary


def _check_compatible(bundle: ModelBundle, scan: ScanData, inference: InferenceConfig) -> None:
    model = bundle.model_config
    if scan.N != model.N:
        raise ValueError(f"the model was trained for N={model.N} but the data have {scan.N}x{scan.N} patterns")
    if inference.model.gridsize != model.gridsize or inference.model.N != model.N:
        raise ValueError(
            f"InferenceConfig.model (N={inference.model.N}, gridsize={inference.model.gridsize}) does not "
            f"match the loaded model (N={model.N}, gridsize={model.gridsize})"
        )


def inference_devices(execution: ExecutionConfig) -> list[torch.device]:
    """Devices inference shards positions over: every listed GPU, else the resolved device."""
    device, _ = resolve_device(execution)
    if device.type == "cuda" and len(execution.gpu_indices) > 1:
        return [torch.device("cuda", i) for i in execution.gpu_indices]
    if device.type == "cuda" and execution.devices > 1 and not execution.gpu_indices:
        return [torch.device("cuda", i) for i in range(min(execution.devices, torch.cuda.device_count()))]
    return [device]


def stitch_subpixel(bundle: ModelBundle) -> bool:
    """Whether ``bundle``'s patches are stitched with a sub-pixel Fourier shift.

    A PINN's patches are the object seen by the unshifted probe, so they are shifted into place.
    A supervised model trained on integer-window labels (provenance ``label_alignment``) predicts
    the window at its integer pixel and is placed there unshifted; a supervised model file
    without that record learned shifted patches and keeps the shift.
    """
    return not (bundle.model_config.model_type == "supervised"
                and bundle.provenance.get("label_alignment") == LABEL_ALIGNMENT)


def _stitch_shard(network, dataset: GroupedDataset, indices: np.ndarray, shape, weight, device,
                  batch_size: int, precision: str, n: int, progress: Callable[[], None],
                  should_stop: Callable[[], bool] | None, subpixel: bool = True) -> PatchStitcher:
    """Predict and stitch one shard of groups on one device."""
    stitcher = PatchStitcher(shape, weight, device=device, subpixel=subpixel)
    pin = device.type == "cuda"
    autocast = precision == "bf16-mixed"
    with torch.inference_mode():
        for start in range(0, len(indices), batch_size):
            if should_stop is not None and should_stop():
                raise TrainingCancelled("reconstruction was stopped before it finished")
            batch = dataset.get_batch(indices[start : start + batch_size])
            x = batch["amplitudes"]
            x = (x.pin_memory() if pin else x).to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                patches = network.predict_object(x)
            stitcher.add(patches.reshape(-1, n, n), batch["positions"].reshape(-1, 2))
            progress()
    return stitcher


def reconstruct_object(
    bundle: ModelBundle,
    scan: ScanData,
    inference: InferenceConfig | None = None,
    execution: ExecutionConfig | None = None,
    *,
    on_batch: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_refine_pass: Callable[[int, int, float], None] | None = None,
) -> Reconstruction:
    """Predict every pattern's object patch, stitch them into the scan's object canvas and,
    with ``inference.refine_iterations > 0``, refine the canvas under the data (`refine_reconstruction`).

    Every position is used (for gridsize > 1, each position seeds a group with its nearest
    neighbours and every channel is stitched at its own position). Patterns stream through
    the device in batches, so device memory is the canvas plus one batch. With several GPUs
    (`inference_devices`) the positions are sharded across them and the canvases are summed.
    """
    execution = execution or ExecutionConfig()
    inference = inference or InferenceConfig(model=bundle.model_config)
    model_cfg = bundle.model_config
    _check_compatible(bundle, scan, inference)
    scan.validate(N=model_cfg.N, gridsize=model_cfg.gridsize, neighbor_count=inference.neighbor_count)
    devices = inference_devices(execution)
    logger.info("inference on %s", ", ".join(str(d) for d in devices))
    start = time.perf_counter()
    groups = group_positions(
        scan.positions_px, gridsize=model_cfg.gridsize, n_groups=inference.n_groups,
        neighbor_count=inference.neighbor_count, seed=inference.subsample_seed or 0, all_positions=True,
    )
    dataset = GroupedDataset(scan, groups, normalisation_factor(scan.amplitudes))
    default_batch = 1024 if devices[0].type == "cuda" else 64
    batch_size = execution.inference_batch_size or default_batch
    exponent = inference.stitch_exponent(model_cfg.model_type)
    logger.info("stitching weight (|P| / max |P|) ** %g%s", exponent,
                f" (automatic for a {model_cfg.model_type} model)" if inference.stitch_weight_exponent is None else "")
    weight = physics.probe_weight(torch.as_tensor(scan.probe, dtype=torch.complex64), exponent)
    subpixel = stitch_subpixel(bundle)
    logger.info("patches placed %s", "with their sub-pixel Fourier shift" if subpixel
                else "at their integer pixel (integer-window labels)")
    shards = np.array_split(np.arange(len(groups)), len(devices))
    predict_batches = sum(math.ceil(len(s) / batch_size) for s in shards)
    refine_batches = inference.refine_iterations * math.ceil(scan.num_positions / REFINE_BATCH_SIZE)
    total = predict_batches + refine_batches
    done = [0]

    def progress() -> None:
        done[0] += 1
        if on_batch is not None:
            on_batch(done[0], total)

    def run(k: int) -> PatchStitcher:
        network = bundle.network if k == 0 else copy.deepcopy(bundle.network)
        network = network.to(devices[k]).eval()
        if execution.compile:
            network.generator.compile()
        return _stitch_shard(network, dataset, shards[k], scan.object_shape, weight, devices[k],
                             batch_size, execution.precision, model_cfg.N, progress, should_stop, subpixel)

    if len(devices) == 1:
        stitchers = [run(0)]
    else:
        with ThreadPoolExecutor(max_workers=len(devices)) as pool:  # CUDA work releases the GIL
            stitchers = list(pool.map(run, range(len(devices))))
    merged = stitchers[0]
    for other in stitchers[1:]:
        merged.merge(other)
    obj = merged.result().cpu().numpy().astype(np.complex64)
    network = Reconstruction(
        object=obj,
        object_x_px=scan.positions_px[:, 0].astype(np.float64),
        object_y_px=scan.positions_px[:, 1].astype(np.float64),
        coverage=merged.coverage().cpu().numpy(),
        seconds=time.perf_counter() - start,
    )

    def refine_progress(batch_done: int, _: int) -> None:
        if on_batch is not None:
            on_batch(predict_batches + batch_done, total)

    return refine_reconstruction(
        network, scan, inference, execution, device=devices[0], on_batch=refine_progress,
        on_pass=on_refine_pass, should_stop=should_stop,
    )


#: Positions per refinement update (measured: docs/performance.md, "Convergence levers and the
#: refinement's update rule").
REFINE_BATCH_SIZE = 64


def refine_reconstruction(
    reconstruction: Reconstruction,
    scan: ScanData,
    inference: InferenceConfig,
    execution: ExecutionConfig | None = None,
    *,
    device: torch.device | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    on_pass: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Reconstruction:
    """Refine a stitched object under the Poisson likelihood of all of ``scan``'s patterns.

    Runs ``inference.refine_iterations`` passes (`refinement.refine_object`) with the scan's
    probe and positions, starting from ``reconstruction.object`` brought into the probe's gauge
    by one global scale. With 0 passes the object is returned as stitched, but its likelihood is
    still compared with a flat object's, and a worse fit is logged as a warning and listed in
    ``warnings``. Raises `TrainingCancelled` when ``should_stop()`` turns true.
    """
    execution = execution or ExecutionConfig()
    if device is None:
        device = inference_devices(execution)[0]
    start = time.perf_counter()
    data, probe, propagator = _refinement_inputs(scan)
    flat_loss = negative_log_likelihood(flat_object(probe, data), probe, data, device=device)
    options = RefinementOptions(
        iterations=inference.refine_iterations, batch_size=REFINE_BATCH_SIZE,
        refine_probe=inference.refine_probe, seed=inference.subsample_seed or 0,
    )
    if options.iterations:
        logger.info("refining the object: %d passes over %d positions%s", options.iterations,
                    scan.num_positions, " (and the probe)" if options.refine_probe else "")
    result = _refine(reconstruction.object, probe, data, options, device=device,
                     on_pass=on_pass, on_batch=on_batch, should_stop=should_stop)
    # The pass losses are measured while the object changes; score the returned object itself.
    final_loss = result.initial_loss
    if result.passes_run:
        final_loss = negative_log_likelihood(torch.as_tensor(result.object), torch.as_tensor(result.probe),
                                             data, device=device)
    summary = RefinementSummary(
        iterations=options.iterations, passes_run=result.passes_run, losses=list(result.losses),
        network_loss=result.initial_loss, flat_loss=flat_loss, final_loss=final_loss,
        seconds=time.perf_counter() - start, stopped_early=result.stopped_early, scale=result.scale,
    )
    warnings = list(reconstruction.warnings)
    if result.stopped_early:
        warnings.append(result.stopped_early)
    if final_loss > flat_loss:
        message = (
            f"the reconstruction fits the diffraction data worse than a flat object (Poisson NLL "
            f"{final_loss:.4g} vs {flat_loss:.4g} nats per pixel): the network has not converged "
            "on this scan; train longer, or raise the refinement passes"
        )
        logger.warning(message)
        warnings.append(message)
    if options.iterations:
        logger.info("refinement: NLL %.4g (network) -> %.4g after %d passes in %.1f s (flat object %.4g)",
                    result.initial_loss, final_loss, result.passes_run, summary.seconds, flat_loss)
    return dataclasses.replace(
        reconstruction,
        object=result.object if options.iterations else reconstruction.object,
        network_object=reconstruction.object,
        refinement=summary,
        probe=result.probe / propagator if options.refine_probe else None,
        seconds=reconstruction.seconds + summary.seconds,
        network_seconds=(reconstruction.network_seconds if reconstruction.network_seconds is not None
                         else reconstruction.seconds),
        warnings=tuple(warnings),
    )
