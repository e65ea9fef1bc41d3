"""The units chain from raw counts to the model's predicted counts (findings.md, item 1).

At the true object, the forward model must reproduce the measured counts up to one global
object scale, and that scale must fit inside the amplitude head's range; otherwise the network
cannot represent the truth and training collapses towards a flat object.
"""

import numpy as np
import pytest
import torch

from ptychodus_ptychopinn_torch import physics
from ptychodus_ptychopinn_torch.checkpoint import build_model
from ptychodus_ptychopinn_torch.config import ModelConfig, TrainingConfig
from ptychodus_ptychopinn_torch.data.dataset import extract_patches
from ptychodus_ptychopinn_torch.data.grouping import group_positions
from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
from ptychodus_ptychopinn_torch.simulate import simulate_scan
from ptychodus_ptychopinn_torch.workflows.engine import derive_constants


@pytest.fixture(scope="module", params=["structured", "disk"])
def setup(request):
    sim = simulate_scan(num_positions=36, N=64, noise=False, seed=4, probe=request.param)
    scan = scan_from_reconstruct_input(sim.reconstruct_input)
    training = TrainingConfig(model=ModelConfig(N=64, n_filters_scale=1))
    groups = group_positions(scan.positions_px, gridsize=1, all_positions=True)
    constants = derive_constants(scan, training, groups)
    model = build_model(training, constants, scan.probe)
    truth = extract_patches(sim.product.object_.get_layer(0), scan.positions_px, 64)
    return sim, scan, constants, model, truth


def _predicted_counts(model, patches):
    psi = model.illuminate(torch.as_tensor(patches)[:, None], torch.zeros(len(patches), 1, 2))
    amp = physics.diffract(psi) * torch.exp(model.log_scale)
    return (amp[:, 0].double() ** 2).detach().numpy()


def test_measured_photons_and_scale(setup):
    _, scan, constants, _, _ = setup
    assert constants.nphotons == pytest.approx(scan.mean_counts)
    assert constants.intensity_scale == pytest.approx(np.sqrt(scan.mean_counts) / 32)
    # normalised input times the scale gives back the counts
    x = scan.amplitudes[:] * constants.kappa
    assert np.allclose((x * constants.intensity_scale) ** 2, scan.amplitudes[:].astype(np.float64) ** 2, rtol=1e-4)
    assert np.mean(np.sum(x.astype(np.float64) ** 2, axis=(1, 2))) == pytest.approx(32**2, rel=1e-5)


def test_true_object_reproduces_counts_up_to_one_scale(setup):
    _, scan, constants, model, truth = setup
    predicted = _predicted_counts(model, truth)
    measured = scan.amplitudes[:].astype(np.float64) ** 2
    ratio = predicted.sum(axis=(1, 2)) / measured.sum(axis=(1, 2))
    assert ratio.std() / ratio.mean() < 0.003  # one global scale for every pattern
    scale = np.sqrt(1.0 / ratio.mean())  # object amplitude in the model's gauge = scale * truth
    fitted = _predicted_counts(model, truth * scale)
    assert fitted.sum() / measured.sum() == pytest.approx(1.0, rel=1e-3)
    corr = [np.corrcoef(f.ravel(), m.ravel())[0, 1] for f, m in zip(fitted, measured)]
    assert min(corr) > 0.99
    # the amplitude head can represent the true object in this gauge
    assert scale * np.abs(truth).max() < constants.amp_max
    # and a flat object starts near the data's mean intensity
    flat = np.full_like(truth, constants.amp_max / 2)
    assert _predicted_counts(model, flat).sum() / measured.sum() == pytest.approx(1.0, rel=0.35)
