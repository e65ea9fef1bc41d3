"""The single .ckpt model file: round trip, safe loading, atomic writes, clear errors."""

import os
import pickle

import numpy as np
import pytest
import torch

from ptychodus_ptychopinn_torch import checkpoint
from ptychodus_ptychopinn_torch.checkpoint import ModelBundle, build_model, load_model, save_model
from ptychodus_ptychopinn_torch.config import ModelConfig, TrainingConfig
from ptychodus_ptychopinn_torch.model.pinn import PhysicsConstants


def make_bundle(gridsize=1, seed=0):
    torch.manual_seed(seed)
    training = TrainingConfig(model=ModelConfig(N=64, gridsize=gridsize, n_filters_scale=1), nphotons=1e5)
    yy, xx = np.mgrid[:64, :64] - 31.5
    probe = (np.hypot(xx, yy) < 12).astype(np.complex64) * np.exp(1j * 0.01 * xx**2).astype(np.complex64)
    constants = PhysicsConstants(N=64, kappa=0.1, nphotons=1e5, intensity_scale=9.88, probe_factor=0.7,
                                 amp_max=1.6, canvas_size=72)
    network = build_model(training, constants, probe)
    return ModelBundle(network, training, constants, probe, {"train_loss": [3.0, 2.0], "val_loss": [3.5, 2.5]},
                       {"torch_version": torch.__version__, "note": np.float32(1.5), "nested": {"a": (1, 2)}})


def test_round_trip_restores_weights_configs_and_outputs(tmp_path):
    bundle = make_bundle(gridsize=2)
    path = save_model(bundle, tmp_path / "model.ckpt")
    loaded = load_model(path)
    assert loaded.training_config == bundle.training_config
    assert loaded.constants == bundle.constants
    assert np.array_equal(loaded.probe, bundle.probe)
    assert loaded.history == bundle.history
    assert loaded.provenance["torch_version"] == str(torch.__version__)
    x = torch.rand(2, 4, 64, 64)
    bundle.network.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.network.predict_object(x), bundle.network.predict_object(x))


def test_file_loads_with_weights_only_and_holds_the_format(tmp_path):
    path = save_model(make_bundle(), tmp_path / "m.ckpt")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == checkpoint.FORMAT and payload["format_version"] == checkpoint.FORMAT_VERSION
    assert set(payload) >= {"training_config", "constants", "probe", "state_dict", "history", "provenance",
                            "package_version"}


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(tmp_path / "nope.ckpt")


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"bad.ckpt is not a readable PtychoPINN \(PyTorch\) model file") as info:
        load_model(path)
    assert "weights_only" not in str(info.value)


def test_truncated_file_is_rejected(tmp_path):
    path = save_model(make_bundle(), tmp_path / "m.ckpt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable"):
        load_model(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickled_code_is_never_executed(tmp_path, capfd, writer):
    path = tmp_path / "evil.ckpt"
    payload = {"format": checkpoint.FORMAT, "x": _Evil()}
    if writer == "pickle":
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    else:
        torch.save(payload, path)
    with pytest.raises(ValueError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a PtychoPINN (PyTorch) model file")
    assert "loading it would run code from it" in message
    assert "weights_only" not in message and "trusted source" not in message
    assert info.value.__cause__ is None  # torch's advice is not chained into the traceback
    if writer == "torch.save":
        assert "(it refers to posix.system)" in message or "(it refers to nt.system)" in message
    assert "pwned" not in capfd.readouterr().out


def test_foreign_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6"}, path)
    with pytest.raises(ValueError, match="is not a PtychoPINN \\(PyTorch\\) model file"):
        load_model(path)


def test_newer_format_version_asks_for_an_upgrade(tmp_path):
    path = save_model(make_bundle(), tmp_path / "m.ckpt")
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = checkpoint.FORMAT_VERSION + 1
    torch.save(payload, path)
    with pytest.raises(ValueError, match="upgrade"):
        load_model(path)


def test_mismatched_weights_are_an_incompatible_file(tmp_path):
    path = save_model(make_bundle(), tmp_path / "m.ckpt")
    payload = torch.load(path, weights_only=True)
    payload["training_config"]["model"]["n_filters_scale"] = 2
    torch.save(payload, path)
    with pytest.raises(ValueError, match="incompatible or damaged"):
        load_model(path)


def test_failed_write_keeps_the_previous_model(tmp_path, monkeypatch):
    path = save_model(make_bundle(seed=0), tmp_path / "model.ckpt")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(make_bundle(seed=1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]  # no temporary left behind


def test_read_model_configs_without_building_the_network(tmp_path):
    path = save_model(make_bundle(gridsize=2), tmp_path / "m.ckpt")
    training, constants = checkpoint.read_model_configs(path)
    assert training.model.gridsize == 2 and constants["N"] == 64


def test_files_from_before_the_convergence_fields_keep_their_swish_borders(tmp_path):
    """A model saved before border_activation/object_init existed was trained with PtychoPINN's
    swish border path; loading it must rebuild that network, not today's default."""
    torch.manual_seed(0)
    training = TrainingConfig(model=ModelConfig(N=64, n_filters_scale=1, border_activation="swish",
                                                object_init="random"))
    constants = PhysicsConstants(N=64, kappa=1.0, nphotons=1e4, intensity_scale=1.0, probe_factor=1.0,
                                 amp_max=2.0, canvas_size=64)
    probe = np.ones((64, 64), np.complex64)
    bundle = ModelBundle(network=build_model(training, constants, probe), training_config=training,
                         constants=constants, probe=probe, history={}, provenance={})
    path = save_model(bundle, tmp_path / "old.ckpt")
    payload = torch.load(path, weights_only=True)
    for name in ("border_activation", "object_init", "normalization"):
        del payload["training_config"]["model"][name]
    torch.save(payload, path)
    loaded = load_model(path)
    assert loaded.model_config.border_activation == "swish"
    assert loaded.model_config.normalization == "none"
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.network.predict_object(x), bundle.network.predict_object(x))


def test_batch_normalised_network_round_trips_with_its_running_statistics(tmp_path):
    """``normalization="batch"`` adds BatchNorm running statistics to the network; the model
    file must carry them, and inference (eval mode) must use them, not the batch's own."""
    torch.manual_seed(0)
    training = TrainingConfig(model=ModelConfig(N=64, n_filters_scale=1, normalization="batch"))
    constants = PhysicsConstants(N=64, kappa=1.0, nphotons=1e4, intensity_scale=1.0, probe_factor=1.0,
                                 amp_max=2.0, canvas_size=64)
    probe = np.ones((64, 64), np.complex64)
    network = build_model(training, constants, probe)
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 2 * (3 + 2 * 2 + 2)  # two per block: encoder 3, decoders 2 x 2, borders 2
    network.train()
    with torch.no_grad():
        network.predict_object(torch.rand(8, 1, 64, 64) * 3.0)  # moves the running statistics
    network.eval()
    bundle = ModelBundle(network=network, training_config=training, constants=constants, probe=probe,
                         history={}, provenance={})
    loaded = load_model(save_model(bundle, tmp_path / "bn.ckpt"))
    assert loaded.model_config.normalization == "batch"
    loaded_norms = [m for m in loaded.network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert torch.equal(loaded_norms[0].running_mean, norms[0].running_mean)
    assert not torch.equal(norms[0].running_mean, torch.zeros_like(norms[0].running_mean))
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        one = loaded.network.predict_object(x)
        # eval mode: each pattern's output does not depend on the others in its batch
        torch.testing.assert_close(one[0], loaded.network.predict_object(torch.cat([x, 5 * x]))[0])
        assert torch.allclose(one, bundle.network.predict_object(x))
