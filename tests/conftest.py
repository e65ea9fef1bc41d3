"""Shared test configuration: offscreen Qt, a clean legacy dict per test, small seeds."""

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _fresh_legacy_params():
    """Each test starts from PtychoPINN's legacy defaults in ``params.cfg``."""
    from ptychodus_ptychopinn_torch import params

    params.reset()
    yield
    params.reset()


@pytest.fixture(scope="session")
def write_untrained_model():
    """``write(simulated, directory, history=None) -> Path``: a valid model file (N = 64,
    ``n_filters_scale`` 1, seeded untrained weights) for a simulated scan, built without training."""

    def write(simulated, directory, history=None):
        import torch

        from ptychodus_ptychopinn_torch.checkpoint import ModelBundle, build_model, save_model
        from ptychodus_ptychopinn_torch.config import ModelConfig, TrainingConfig
        from ptychodus_ptychopinn_torch.data.grouping import group_positions
        from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
        from ptychodus_ptychopinn_torch.workflows.engine import derive_constants

        scan = scan_from_reconstruct_input(simulated.reconstruct_input)
        training = TrainingConfig(model=ModelConfig(N=64, n_filters_scale=1), nepochs=1)
        constants = derive_constants(scan, training, group_positions(scan.positions_px, gridsize=1))
        torch.manual_seed(0)
        bundle = ModelBundle(network=build_model(training, constants, scan.probe),
                             training_config=training, constants=constants, probe=scan.probe)
        if history is not None:
            bundle.history = history
        return save_model(bundle, directory / "model.ckpt")

    return write
