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
def untrained_model(simulated32, tmp_path_factory, write_untrained_model):
    """A valid model file (untrained weights) for N = 64, built without training."""
    return write_untrained_model(simulated32, tmp_path_factory.mktemp("model"))
