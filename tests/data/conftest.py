"""Small simulated scans shared by the data tests (session-scoped: simulate once)."""

import pytest

from ptychodus_ptychopinn_torch.simulate import simulate_scan


@pytest.fixture(scope="session")
def small_scan():
    """25 positions, N=32, textured object, structured probe, Poisson noise."""
    return simulate_scan(num_positions=25, N=32, seed=3)


@pytest.fixture(scope="session")
def clean_scan():
    """36 noise-free positions at N=64 (for convention tests)."""
    return simulate_scan(num_positions=36, N=64, noise=False, seed=1)
