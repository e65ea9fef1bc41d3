"""The engine facade: training contract, repeatability, stop, precision, sharded inference."""

import logging
import math

import numpy as np
import pytest
import torch

from ptychodus_ptychopinn_torch import params
from ptychodus_ptychopinn_torch.config import ExecutionConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
from ptychodus_ptychopinn_torch.simulate import simulate_scan
from ptychodus_ptychopinn_torch.workflows import engine
from ptychodus_ptychopinn_torch.workflows.engine import TrainingCancelled, reconstruct_object, train_model

CPU = ExecutionConfig(accelerator="cpu")


@pytest.fixture(scope="module")
def scan():
    return scan_from_reconstruct_input(simulate_scan(num_positions=40, N=64, seed=5).reconstruct_input)


def tiny(gridsize=1, **kwargs):
    defaults = dict(nepochs=2, batch_size=8, n_groups=64)
    defaults.update(kwargs)
    return TrainingConfig(model=ModelConfig(N=64, gridsize=gridsize, n_filters_scale=1), **defaults)


def test_training_reports_every_epoch_and_keeps_history(scan):
    reports = []
    bundle = train_model(scan, tiny(), CPU, on_epoch=reports.append)
    assert [r.epoch for r in reports] == [1, 2] and all(r.num_epochs == 2 for r in reports)
    assert reports[-1].batches_done == reports[-1].batches_total > 0
    assert len(bundle.history["train_loss"]) == 2 and len(bundle.history["val_loss"]) == 2
    assert all(math.isfinite(v) and v > 0 for v in bundle.history["train_loss"])  # a true NLL
    assert bundle.provenance["epochs_run"] == 2 and not bundle.network.training


def test_photon_count_is_measured_and_written_to_the_legacy_view(scan):
    bundle = train_model(scan, tiny(nepochs=1), CPU)
    assert bundle.constants.nphotons == pytest.approx(scan.mean_counts)
    assert params.cfg["nphotons"] == pytest.approx(scan.mean_counts)
    assert params.cfg["intensity_scale"] == pytest.approx(math.sqrt(scan.mean_counts) / 32)


def test_same_seed_same_model(scan):
    a = train_model(scan, tiny(nepochs=1), CPU)
    b = train_model(scan, tiny(nepochs=1), CPU)
    assert a.history == b.history
    for (name, pa), pb in zip(a.network.state_dict().items(), b.network.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_stop_cancels_before_the_next_batch(scan):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(TrainingCancelled):
        train_model(scan, tiny(), CPU, should_stop=should_stop)
    assert len(calls) == 3  # polled before each batch; the third poll stopped it


def _loss_turns_nan(monkeypatch, from_epoch: int) -> None:
    """Make the training loss NaN from ``from_epoch`` (0-based) on, gradients included."""
    from ptychodus_ptychopinn_torch.training import PtychoPINNModule

    original = PtychoPINNModule.compute_loss

    def compute_loss(self, batch):
        loss = original(self, batch)
        return loss * math.nan if self.current_epoch >= from_epoch else loss

    monkeypatch.setattr(PtychoPINNModule, "compute_loss", compute_loss)


def test_training_that_never_has_a_finite_loss_raises_and_returns_no_model(scan, monkeypatch):
    _loss_turns_nan(monkeypatch, 0)
    with pytest.raises(engine.TrainingDiverged, match="diverged.*train_loss was not finite in any of the 2 epochs"):
        train_model(scan, tiny(validation_fraction=0.0), CPU)


def test_loss_turning_nan_keeps_the_last_finite_epochs_weights(scan, monkeypatch, caplog):
    _loss_turns_nan(monkeypatch, 1)
    bundle = train_model(scan, tiny(validation_fraction=0.0), CPU)
    losses = bundle.history["train_loss"]
    assert math.isfinite(losses[0]) and math.isnan(losses[1])
    assert all(torch.isfinite(v).all() for v in bundle.network.state_dict().values() if v.is_floating_point())
    assert "became non-finite (epoch 2: nan); kept the weights of epoch 1" in caplog.text


def test_bad_input_fails_before_training(scan):
    polled = []
    with pytest.raises(ValueError, match="64"):
        train_model(scan, TrainingConfig(model=ModelConfig(N=128, n_filters_scale=1)), CPU,
                    should_stop=lambda: polled.append(1) or False)
    assert not polled


def test_model_and_data_mismatch_is_rejected_at_inference(scan):
    bundle = train_model(scan, tiny(nepochs=1), CPU)
    with pytest.raises(ValueError, match="gridsize"):
        reconstruct_object(bundle, scan, InferenceConfig(model=ModelConfig(N=64, gridsize=2)), CPU)


def test_gridsize_two_trains_and_reconstructs_every_position(scan):
    bundle = train_model(scan, tiny(gridsize=2, nepochs=1), CPU)
    rec = reconstruct_object(bundle, scan, execution=CPU)
    assert rec.object.shape == scan.object_shape and rec.object.dtype == np.complex64
    assert np.array_equal(rec.object_x_px, scan.positions_px[:, 0])
    assert np.isfinite(rec.object).all() and np.abs(rec.object).max() > 0


def test_supervised_mode_lowers_its_loss(scan):
    training = TrainingConfig(model=ModelConfig(N=64, n_filters_scale=1, model_type="supervised"),
                              nepochs=3, batch_size=8, validation_fraction=0.0)
    bundle = train_model(scan, training, CPU)
    losses = bundle.history["train_loss"]
    assert losses[-1] < losses[0]


def test_bf16_autocast_on_cpu_trains_and_matches_fp32_inference(scan):
    bundle = train_model(scan, tiny(nepochs=1), ExecutionConfig(accelerator="cpu", precision="bf16-mixed"))
    assert all(math.isfinite(v) for v in bundle.history["train_loss"])
    fp32 = reconstruct_object(bundle, scan, execution=CPU).object
    bf16 = reconstruct_object(bundle, scan, execution=ExecutionConfig(accelerator="cpu", precision="bf16-mixed")).object
    covered = np.abs(fp32) > 0
    corr = np.corrcoef(np.abs(fp32[covered]), np.abs(bf16[covered]))[0, 1]
    assert corr > 0.98
    assert np.median(np.abs(bf16[covered] - fp32[covered])) < 0.05 * np.median(np.abs(fp32[covered]))


def test_sharded_inference_equals_single_device(scan, monkeypatch):
    bundle = train_model(scan, tiny(nepochs=1), CPU)
    single = reconstruct_object(bundle, scan, execution=CPU)
    monkeypatch.setattr(engine, "inference_devices", lambda execution: [torch.device("cpu")] * 3)
    batches = []
    sharded = reconstruct_object(bundle, scan, execution=ExecutionConfig(accelerator="cpu", inference_batch_size=8),
                                 on_batch=lambda done, total: batches.append((done, total)))
    assert np.allclose(sharded.object, single.object, atol=1e-5)
    assert sorted(d for d, _ in batches) == list(range(1, len(batches) + 1)) and batches[-1][1] == len(batches)


def test_inference_stop_is_honoured(scan):
    bundle = train_model(scan, tiny(nepochs=1), CPU)
    with pytest.raises(TrainingCancelled):
        reconstruct_object(bundle, scan, execution=CPU, should_stop=lambda: True)


def test_explicit_cuda_without_gpu_is_an_error(scan):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CUDA was requested"):
        train_model(scan, tiny(nepochs=1), ExecutionConfig(accelerator="cuda"))


def test_half_precision_on_cpu_is_an_error_naming_the_alternatives(scan):
    with pytest.raises(ValueError, match="'16-mixed' needs a CUDA GPU.*'bf16-mixed'"):
        train_model(scan, tiny(nepochs=1), ExecutionConfig(accelerator="cpu", precision="16-mixed"))


def test_bf16_on_a_cpu_without_native_bfloat16_warns(monkeypatch, caplog):
    from ptychodus_ptychopinn_torch import device as device_module

    cpu = torch.device("cpu")
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger=device_module.__name__):
        device_module.check_precision(cpu, "bf16-mixed")
        device_module.check_precision(cpu, "32-true")
    assert [r.getMessage() for r in caplog.records] == [
        "precision 'bf16-mixed' on a CPU without native bfloat16 instructions is emulated: "
        "expect no speed-up over '32-true'"]
    caplog.clear()
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: True)
    device_module.check_precision(cpu, "bf16-mixed")
    assert not caplog.records


def _supervised(**kwargs):
    return TrainingConfig(model=ModelConfig(N=64, n_filters_scale=1, model_type="supervised"),
                          nepochs=1, batch_size=8, validation_fraction=0.0, **kwargs)


def test_supervised_without_a_true_object_says_how_to_get_labels(scan):
    import dataclasses

    with pytest.raises(ValueError, match="supervised_labels='refined'"):
        train_model(dataclasses.replace(scan, object_guess=None), _supervised(), CPU)


def test_refined_labels_need_no_true_object_and_fit_the_data_better_than_flat(scan):
    """``supervised_labels="refined"``: the labels are the refinement's reconstruction of the
    scan (no object_guess needed), recorded in the provenance; they fit the patterns far better
    than a flat object and resemble the truth where the probe reaches."""
    import dataclasses

    from ptychodus_ptychopinn_torch.refinement import ScanTensors, flat_object, negative_log_likelihood

    blind = dataclasses.replace(scan, object_guess=None)
    labelled, summary = engine.refined_labels(blind, device=torch.device("cpu"))
    data = ScanTensors.from_patterns(scan.amplitudes, scan.positions_px, scan.object_shape)
    probe = torch.as_tensor(scan.probe, dtype=torch.complex64) * (scan.propagator_scale or 1.0)
    flat = negative_log_likelihood(flat_object(probe, data), probe, data)
    truth = negative_log_likelihood(torch.as_tensor(scan.object_guess), probe, data)
    assert summary["source"] == "refined" and summary["passes"] > 0
    assert summary["nll"] < truth + 0.1 * (flat - truth)
    covered = np.abs(labelled.object_guess) > 0
    corr = np.corrcoef(np.abs(labelled.object_guess[covered]), np.abs(scan.object_guess[covered]))[0, 1]
    assert corr > 0.5

    bundle = train_model(blind, _supervised(supervised_labels="refined"), CPU)
    assert bundle.provenance["supervised_labels"]["source"] == "refined"
    assert math.isfinite(bundle.history["train_loss"][-1])
    assert train_model(scan, _supervised(), CPU).provenance["supervised_labels"] is None


def test_stop_during_label_refinement_cancels_training(scan):
    with pytest.raises(TrainingCancelled):
        train_model(scan, _supervised(supervised_labels="refined"), CPU, should_stop=lambda: True)


@pytest.mark.parametrize(("model_type", "automatic"), [("pinn", 2.0), ("supervised", 3.0)])
def test_stitch_weight_exponent_is_chosen_by_the_trained_models_type(scan, model_type, automatic, caplog):
    """The default (None) stitches as the explicit exponent of the bundle's model type does, not
    by the type in the InferenceConfig's own (default) model."""
    from ptychodus_ptychopinn_torch.checkpoint import ModelBundle, build_model
    from ptychodus_ptychopinn_torch.data.grouping import group_positions

    training = TrainingConfig(model=ModelConfig(N=64, n_filters_scale=1, model_type=model_type), nepochs=1)
    constants = engine.derive_constants(scan, training, group_positions(scan.positions_px, gridsize=1))
    torch.manual_seed(0)
    bundle = ModelBundle(network=build_model(training, constants, scan.probe), training_config=training,
                         constants=constants, probe=scan.probe)

    def stitched(exponent):
        inference = InferenceConfig(refine_iterations=0, stitch_weight_exponent=exponent)  # model: the default pinn
        return reconstruct_object(bundle, scan, inference, CPU).object

    with caplog.at_level(logging.INFO, logger=engine.logger.name):
        auto = stitched(None)
    assert f"** {automatic:g} (automatic for a {model_type} model)" in caplog.text
    other = 5.0 - automatic
    assert np.array_equal(auto, stitched(automatic))
    assert not np.allclose(auto, stitched(other))


def test_supervised_models_are_stitched_as_their_labels_were_cut(scan, caplog):
    """A supervised model trained now records integer-window labels and is stitched unshifted; a
    supervised model file without that record (trained on shifted patches) keeps the Fourier
    shift, and so does every PINN."""
    import dataclasses as dc

    bundle = train_model(scan, _supervised(), CPU)
    assert bundle.provenance["label_alignment"] == engine.LABEL_ALIGNMENT
    assert engine.stitch_subpixel(bundle) is False
    older = dc.replace(bundle, provenance={k: v for k, v in bundle.provenance.items() if k != "label_alignment"})
    assert engine.stitch_subpixel(older) is True
    inference = InferenceConfig(refine_iterations=0)
    with caplog.at_level(logging.INFO, logger=engine.logger.name):
        now = reconstruct_object(bundle, scan, inference, CPU).object
    assert "at their integer pixel" in caplog.text
    assert not np.allclose(now, reconstruct_object(older, scan, inference, CPU).object)
    pinn = train_model(scan, tiny(nepochs=1), CPU)
    assert pinn.provenance["label_alignment"] is None and engine.stitch_subpixel(pinn) is True
