"""Fixtures of the integration tests: tiny simulated scans, a library with fake workers."""

from __future__ import annotations

from pathlib import Path

import pytest

FAKES = Path(__file__).with_name("fake_workers.py")


@pytest.fixture(scope="session")
def tiny_scan():
    """A 24-position N=64 far-field scan simulated with ptychodus.api.simulate."""
    from ptychodus_ptychopinn_torch.simulate import simulate_scan

    return simulate_scan(num_positions=24, N=64, seed=3)


@pytest.fixture()
def scan_dir(tiny_scan, tmp_path):
    """A directory holding diffraction.h5 + product.h5 (Ptychodus's batch layout)."""
    from ptychodus_ptychopinn_torch.simulate import write_scan_files

    directory = tmp_path / "scan"
    write_scan_files(tiny_scan, directory)
    return directory


@pytest.fixture()
def library():
    """A fresh library whose reconstructors run the in-process fake worker."""
    from ptychodus.api.settings import SettingsRegistry

    from ptychodus_ptychopinn_torch.integration.library import create_library

    lib = create_library(SettingsRegistry(), False)
    lib.options.in_process = True
    lib.options.entry_point = f"{FAKES}:record_legacy_calls"
    return lib


@pytest.fixture()
def fakes():
    """The fake-worker module (loaded by path, like the runner loads it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_ptychopinn_fake_workers", FAKES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def small():
    """`small_settings`, for tests that need the CI-sized settings."""
    return small_settings


def small_settings(lib, *, epochs: int = 1, subprocess: bool = False) -> None:
    """The CI-sized settings: 1-2 epochs, N from the data, gridsize 1, n_filters_scale 1."""
    settings = lib.settings
    settings.parameter("Training", "nepochs").set_value(epochs)
    settings.parameter("Training", "batch_size").set_value(8)
    settings.parameter("Model", "gridsize").set_value(1)
    settings.parameter("Model", "n_filters_scale").set_value(1)
    settings.parameter("Execution", "device").set_value("cpu")
    settings.parameter("Execution", "run_in_subprocess").set_value(subprocess)


@pytest.fixture(scope="session")
def tiny_model(tiny_scan, tmp_path_factory, write_untrained_model):
    """A valid model file for `tiny_scan` (N = 64, untrained weights), built without training."""
    return write_untrained_model(tiny_scan, tmp_path_factory.mktemp("model"),
                                 history={"train_loss": [0.7, 0.6], "val_loss": [0.8, 0.7]})


@pytest.fixture()
def engine_library(library, small):
    """The library running the real worker (`child.run_job`) in-process, CI-sized, on the CPU."""
    library.options.entry_point = "ptychodus_ptychopinn_torch.integration.child:run_job"
    small(library)
    return library
