"""Small simulated scans on disk (NPZ and diffraction.h5 + product.h5) and model files."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def simulated32():
    """32 positions at N = 64: a few seconds to simulate."""
    from ptychodus_ptychopinn_torch.simulate import simulate_scan

    return simulate_scan(num_positions=32, N=64, seed=0)


@pytest.fixture(scope="session")
def npz_path(simulated32, tmp_path_factory):
    from ptychodus_ptychopinn_torch.data.io import save_training_npz

    return save_training_npz(tmp_path_factory.mktemp("npz") / "train_data.npz",
                             simulated32.reconstruct_input)


@pytest.fixture(scope="session")
def h5_dir(simulated32, tmp_path_factory):
    from ptychodus_ptychopinn_torch.simulate import write_scan_files

    directory = tmp_path_factory.mktemp("h5")
    write_scan_files(simulated32, directory)
    return directory


@pytest.fixture(scope="session")
def untrained_model(simulated32, tmp_path_factory):
    """A valid model file (untrained weights) for N = 64, built without training."""
    import torch

    from ptychodus_ptychopinn_torch.checkpoint import ModelBundle, build_model, save_model
    from ptychodus_ptychopinn_torch.config import ModelConfig, TrainingConfig
    from ptychodus_ptychopinn_torch.data.grouping import group_positions
    from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
    from ptychodus_ptychopinn_torch.workflows.engine import derive_constants

    scan = scan_from_reconstruct_input(simulated32.reconstruct_input)
    training = TrainingConfig(model=ModelConfig(N=64, n_filters_scale=1), nepochs=1)
    constants = derive_constants(scan, training, group_positions(scan.positions_px, gridsize=1))
    torch.manual_seed(0)
    bundle = ModelBundle(network=build_model(training, constants, scan.probe),
                         training_config=training, constants=constants, probe=scan.probe)
    return save_model(bundle, tmp_path_factory.mktemp("model") / "model.ckpt")
