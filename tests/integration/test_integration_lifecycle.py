"""Contract: every lifecycle hook calls update_legacy_dict(params.cfg, config) first."""

from __future__ import annotations

import dataclasses

import pytest

from ptychodus_ptychopinn_torch import params
from ptychodus_ptychopinn_torch.config import ModelConfig, TrainingConfig
from ptychodus_ptychopinn_torch.integration import child, reconstructor as reconstructor_module
from ptychodus_ptychopinn_torch.integration.protocol import TrainJob


@pytest.fixture()
def timeline(monkeypatch):
    """Record legacy-dict updates and the first data access of each hook, in order."""
    events: list[str] = []
    original = params.update_legacy_dict

    def spy(cfg, config):
        assert cfg is params.cfg
        assert dataclasses.is_dataclass(config), "update_legacy_dict needs the dataclass"
        events.append(f"legacy:{type(config).__name__}")
        spy.calls.append(config)
        original(cfg, config)

    spy.calls = []
    monkeypatch.setattr(params, "update_legacy_dict", spy)
    return events


def _mark(monkeypatch, timeline, target, name, label):
    original = getattr(target, name)

    def wrapper(*args, **kwargs):
        timeline.append(label)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)


def _assert_legacy_first(timeline, label):
    assert label in timeline, timeline
    first = timeline.index(label)
    assert first > 0 and all(e.startswith("legacy:") for e in timeline[:first]), timeline


def test_reconstruct_updates_legacy_view_first(library, tiny_scan, timeline, monkeypatch):
    import ptychodus_ptychopinn_torch.data.io as data_io

    _mark(monkeypatch, timeline, data_io, "scan_from_reconstruct_input", "data")
    library.settings.parameter("Training", "nepochs").set_value(3)
    outputs = list(library["PINN"].reconstruct(tiny_scan.reconstruct_input))

    _assert_legacy_first(timeline, "data")
    assert params.update_legacy_dict.worker_saw >= 1
    assert params.cfg["nepochs"] == 3 and params.cfg["N"] == 64
    assert [o.progress for o in outputs] == [100, 400]  # 3-epoch fit + inference = goal
    assert outputs[-1].product.object_.get_array().shape[1:] == \
        tiny_scan.product.object_.get_array().shape[1:]


def test_train_updates_legacy_view_first(library, scan_dir, tmp_path, timeline, monkeypatch):
    _mark(monkeypatch, timeline, reconstructor_module, "check_training_dir", "data")
    library.settings.parameter("Model", "gridsize").set_value(2)
    library.settings.parameter("Training", "nepochs").set_value(1)
    out = tmp_path / "out"
    outputs = list(library["PINN"].train(scan_dir, out))

    _assert_legacy_first(timeline, "data")
    assert params.update_legacy_dict.worker_saw >= 1
    assert params.cfg["gridsize"] == 2 and params.cfg["output_prefix"] == str(out)
    assert (out / "model.ckpt").is_file() and library["PINN"].is_model_loaded()
    assert outputs[-1].progress == 100  # 1 epoch x 100 steps: the goal
    assert [v.value for v in outputs[-1].training_loss] == [0.5]


def test_load_model_updates_legacy_view_first_then_from_the_model(library, tmp_path, timeline,
                                                                  monkeypatch, fakes):
    model = TrainingConfig(model=ModelConfig(N=128, gridsize=2, n_filters_scale=1), nepochs=7)
    path = fakes.write_fake_model(tmp_path / "m.ckpt", model)
    _mark(monkeypatch, timeline, reconstructor_module, "read_model_file_info", "data")
    library["PINN"].load_model_from_file(path)

    _assert_legacy_first(timeline, "data")
    assert params.cfg["N"] == 128 and params.cfg["gridsize"] == 2 and params.cfg["nepochs"] == 7
    assert params.cfg["model_path"] == str(path)


def test_save_model_updates_legacy_view_first(library, tmp_path, timeline, monkeypatch, fakes):
    path = fakes.write_fake_model(tmp_path / "m.ckpt")
    library["PINN"].load_model_from_file(path)
    timeline.clear()
    _mark(monkeypatch, timeline, reconstructor_module, "_copy_atomically", "data")
    library["PINN"].save_model(tmp_path / "copy" / "model.ckpt")

    _assert_legacy_first(timeline, "data")
    assert (tmp_path / "copy" / "model.ckpt").read_bytes() == path.read_bytes()


def test_export_training_data_updates_legacy_view_first(library, tiny_scan, tmp_path, timeline,
                                                        monkeypatch):
    import numpy

    import ptychodus_ptychopinn_torch.data.io as data_io

    _mark(monkeypatch, timeline, data_io, "scan_from_reconstruct_input", "data")
    target = tmp_path / "train_data.npz"
    library["PINN"].export_training_data(target, tiny_scan.reconstruct_input)

    _assert_legacy_first(timeline, "data")
    assert params.cfg["train_data_file_path"] == str(target)
    with numpy.load(target) as data:
        assert data["diff3d"].shape == (24, 64, 64)


def test_child_updates_legacy_view_before_touching_data(timeline, monkeypatch, tmp_path):
    import ptychodus_ptychopinn_torch.data.io as data_io
    from ptychodus_ptychopinn_torch.config import (
        ExecutionConfig,
        InferenceConfig,
        config_to_dict,
    )

    class Stop(Exception):
        pass

    def load_scan(path, *, diffraction="auto"):
        timeline.append("data")
        raise Stop

    monkeypatch.setattr(data_io, "load_scan", load_scan)
    training = TrainingConfig(model=ModelConfig(gridsize=2), nepochs=5)
    job = TrainJob(tmp_path, tmp_path / "model.ckpt", {
        "training": config_to_dict(training),
        "inference": config_to_dict(InferenceConfig(model=training.model)),
        "execution": config_to_dict(ExecutionConfig()),
    })
    with pytest.raises(Stop):
        child.run_job(job, lambda *event: None, lambda: False)

    _assert_legacy_first(timeline, "data")
    assert params.cfg["nepochs"] == 5 and params.cfg["gridsize"] == 2
