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
