"""PtychoPINN-compatible entry points: the CONFIG-001 parity spies (update_legacy_dict is
called with params.cfg and the dataclass itself, first), argument checks, and one real run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ptychodus_ptychopinn_torch import params
from ptychodus_ptychopinn_torch.config import ExecutionConfig, ModelConfig, TrainingConfig


@pytest.fixture(scope="module")
def tiny_scan():
    """32 simulated positions at N = 64 (a few seconds to build)."""
    from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
    from ptychodus_ptychopinn_torch.simulate import simulate_scan

    return scan_from_reconstruct_input(simulate_scan(num_positions=32, N=64, seed=0).reconstruct_input)


def _config(tmp_path, **overrides) -> TrainingConfig:
    base = dict(
        model=ModelConfig(N=64, gridsize=1, n_filters_scale=1, model_type="pinn"),
        nepochs=1, batch_size=16, n_groups=None, output_dir=tmp_path / "out",
    )
    base.update(overrides)
    return TrainingConfig(**base)


CPU = ExecutionConfig(accelerator="cpu")


def _fake_train_model(scan, training, execution=None, *, validation_scan=None, **_):
    """An untrained bundle built the engine's way, so the spies need no training time."""
    from ptychodus_ptychopinn_torch.checkpoint import ModelBundle, build_model
    from ptychodus_ptychopinn_torch.data.grouping import group_positions
    from ptychodus_ptychopinn_torch.workflows.engine import derive_constants

    import torch

    groups = group_positions(scan.positions_px, gridsize=training.model.gridsize, seed=0)
    constants = derive_constants(scan, training, groups)
    torch.manual_seed(0)  # the same untrained weights every call
    network = build_model(training, constants, scan.probe)
    return ModelBundle(network=network, training_config=training, constants=constants,
                       probe=scan.probe, history={"train_loss": [2.0], "val_loss": [1.5]})


@pytest.fixture
def fake_engine(monkeypatch):
    from ptychodus_ptychopinn_torch.workflows import engine

    monkeypatch.setattr(engine, "train_model", _fake_train_model)


@pytest.fixture
def spy(monkeypatch):
    """Record every update_legacy_dict call (and still perform it)."""
    calls: list[tuple[object, object]] = []
    real = params.update_legacy_dict

    def recording(cfg, config):
        calls.append((cfg, config))
        return real(cfg, config)

    monkeypatch.setattr(params, "update_legacy_dict", recording)
    return calls


def _assert_first_call(calls, config):
    assert calls, "update_legacy_dict was never called"
    cfg, first = calls[0]
    assert cfg is params.cfg
    assert isinstance(first, TrainingConfig) and not isinstance(first, dict)
    assert first is config
    assert params.cfg["N"] == config.model.N
    assert params.cfg["gridsize"] == config.model.gridsize
    assert params.cfg["model_type"] == config.model.model_type
    assert params.cfg["n_filters_scale"] == config.model.n_filters_scale
    assert params.cfg["nepochs"] == config.nepochs
    assert params.cfg["batch_size"] == config.batch_size
    assert params.cfg["output_prefix"] == str(config.output_dir)


def test_train_cdi_model_calls_update_legacy_dict(spy, fake_engine, tiny_scan, tmp_path):
    from ptychodus_ptychopinn_torch.workflows.components import train_cdi_model_torch

    config = _config(tmp_path, nepochs=7, batch_size=8)
    results = train_cdi_model_torch(tiny_scan, None, config, CPU)
    _assert_first_call(spy, config)
    assert set(results) >= {"history", "models", "bundle", "intensity_scale"}
    assert results["history"] == {"train_loss": [2.0], "val_loss": [1.5]}
    assert results["models"]["diffraction_to_obj"] is results["bundle"].network
    assert params.cfg["intensity_scale"] == pytest.approx(results["intensity_scale"])
    assert results["intensity_scale"] == pytest.approx(results["bundle"].constants.intensity_scale)


def test_run_cdi_example_calls_update_legacy_dict(spy, fake_engine, tiny_scan, tmp_path):
    from ptychodus_ptychopinn_torch.workflows.components import run_cdi_example_torch

    config = _config(tmp_path, nepochs=3)
    amp, phase, results = run_cdi_example_torch(tiny_scan, tiny_scan, config, do_stitching=True,
                                                execution_config=CPU)
    _assert_first_call(spy, config)
    assert amp.dtype == np.float32 and phase.dtype == np.float32
    assert amp.shape == phase.shape == tiny_scan.object_shape
    assert np.allclose(amp * np.exp(1j * phase), results["stitched_obj"], atol=1e-5)
    assert (tmp_path / "out" / "model.ckpt").is_file()
    assert results["model_path"] == tmp_path / "out" / "model.ckpt"


def test_load_inference_bundle_calls_update_legacy_dict(monkeypatch, tiny_scan, tmp_path):
    from ptychodus_ptychopinn_torch.checkpoint import save_model
    from ptychodus_ptychopinn_torch.workflows.components import load_inference_bundle_torch

    config = _config(tmp_path, nepochs=9, model=ModelConfig(N=64, n_filters_scale=1,
                                                             model_type="supervised"))
    bundle = _fake_train_model(tiny_scan, config)
    save_model(bundle, tmp_path / "model" / "model.ckpt")
    params.reset()  # the legacy view must come back from the file, not from the test

    calls: list[tuple[object, object]] = []
    real = params.update_legacy_dict
    monkeypatch.setattr(params, "update_legacy_dict",
                        lambda cfg, c: (calls.append((cfg, c)), real(cfg, c))[1])
    for path in (tmp_path / "model", tmp_path / "model" / "model.ckpt"):
        calls.clear()
        network, legacy = load_inference_bundle_torch(path)
        cfg, first = calls[0]
        assert cfg is params.cfg and isinstance(first, TrainingConfig)
        assert dataclasses.replace(first, nphotons=None) == dataclasses.replace(config, nphotons=None)
        assert legacy["N"] == 64 and legacy["gridsize"] == 1
        assert legacy["model_type"] == "supervised" and legacy["nepochs"] == 9
        assert legacy["intensity_scale"] == pytest.approx(bundle.constants.intensity_scale)
        assert legacy["nphotons"] == pytest.approx(bundle.constants.nphotons)
        assert legacy == params.cfg and legacy is not params.cfg
        assert not network.training


@pytest.mark.parametrize("name", ["run", "train"])
def test_dict_config_raises_type_error(name, tiny_scan):
    from ptychodus_ptychopinn_torch.workflows import components

    legacy_before = dict(params.cfg)
    with pytest.raises(TypeError, match="TrainingConfig"):
        if name == "run":
            components.run_cdi_example_torch(tiny_scan, None, {"N": 64, "gridsize": 1})
        else:
            components.train_cdi_model_torch(tiny_scan, None, {"N": 64, "gridsize": 1})
    assert params.cfg == legacy_before


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(M=0), "M must be a positive integer"),
        (dict(M=2.5), "M must be a positive integer"),
        (dict(flip_x=True), "need do_stitching=True"),
        (dict(transpose=True), "need do_stitching=True"),
        (dict(flip_y="yes", do_stitching=True), "flip_y must be True or False"),
        (dict(do_stitching=True), "needs test_data"),
    ],
)
def test_run_cdi_example_rejects_unusable_arguments(kwargs, match, fake_engine, tiny_scan, tmp_path):
    from ptychodus_ptychopinn_torch.workflows.components import run_cdi_example_torch

    with pytest.raises(ValueError, match=match):
        run_cdi_example_torch(tiny_scan, None, _config(tmp_path), **kwargs)
    assert not (tmp_path / "out").exists()


def test_orientation_is_applied_to_the_stitched_canvas(fake_engine, tiny_scan, tmp_path):
    from ptychodus_ptychopinn_torch.workflows.components import run_cdi_example_torch

    config = _config(tmp_path)
    plain, _, _ = run_cdi_example_torch(tiny_scan, tiny_scan, config, do_stitching=True,
                                        execution_config=CPU)
    turned, _, _ = run_cdi_example_torch(tiny_scan, tiny_scan, config, do_stitching=True,
                                         transpose=True, flip_x=True, flip_y=True,
                                         execution_config=CPU)
    np.testing.assert_allclose(turned, plain.T[::-1, ::-1])


def test_bad_data_and_missing_model(tmp_path):
    from ptychodus_ptychopinn_torch.workflows.components import (
        load_inference_bundle_torch,
        train_cdi_model_torch,
    )

    with pytest.raises(TypeError, match="ScanData or a path"):
        train_cdi_model_torch(42, None, _config(tmp_path))
    with pytest.raises(FileNotFoundError):
        train_cdi_model_torch(tmp_path / "missing.npz", None, _config(tmp_path))
    with pytest.raises(FileNotFoundError, match="model.ckpt"):
        load_inference_bundle_torch(tmp_path)
    with pytest.raises(ValueError, match="model_name"):
        load_inference_bundle_torch(tmp_path, model_name="autoencoder")
    (tmp_path / "junk.ckpt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.ckpt"):
        load_inference_bundle_torch(tmp_path / "junk.ckpt")


def test_run_cdi_example_trains_stitches_and_reloads(tiny_scan, tmp_path):
    """One real (tiny) run through the engine: train, stitch, save, reload."""
    from ptychodus_ptychopinn_torch.workflows.components import (
        load_inference_bundle_torch,
        run_cdi_example_torch,
    )

    config = _config(tmp_path)
    amp, phase, results = run_cdi_example_torch(tiny_scan, tiny_scan, config, do_stitching=True,
                                                execution_config=CPU)
    assert amp.shape == tiny_scan.object_shape and np.all(np.isfinite(amp))
    history = results["history"]
    assert len(history["train_loss"]) == 1 and len(history["val_loss"]) == 1
    assert np.isfinite(history["train_loss"][0])
    network, legacy = load_inference_bundle_torch(tmp_path / "out")
    assert legacy["N"] == 64 and legacy["nepochs"] == 1
    trained = results["models"]["diffraction_to_obj"].state_dict()
    for key, value in network.state_dict().items():
        np.testing.assert_allclose(value.cpu().numpy(), trained[key].cpu().numpy())
