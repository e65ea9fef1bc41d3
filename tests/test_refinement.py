"""Physics refinement: the forward model is Ptychodus's, and the update lowers the likelihood.

The first test pins the convention exactly: at the true object, after the one global scale
fit, refinement's forward model reproduces Ptychodus's noise-free simulated counts. The others
check what the module promises: flat start at the right intensity, likelihood falling, truth as
a fixed point, bad pixels ignored, probe update, divergence guard and Stop.
"""

import numpy as np
import pytest
import torch

from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
from ptychodus_ptychopinn_torch.evaluation import evaluate_object
from ptychodus_ptychopinn_torch.refinement import (
    RefinementCancelled,
    RefinementOptions,
    ScanTensors,
    PositionBatch,
    fit_global_scale,
    flat_object,
    negative_log_likelihood,
    refine_object,
    step_scale,
)
from ptychodus_ptychopinn_torch.simulate import simulate_scan


@pytest.fixture(scope="module")
def clean():
    sim = simulate_scan(num_positions=100, N=64, noise=False, seed=3, overlap=0.75)
    scan = scan_from_reconstruct_input(sim.reconstruct_input)
    data = ScanTensors.from_arrays(scan.amplitudes, scan.positions_px, scan.object_shape)
    truth = torch.as_tensor(sim.product.object_.get_layer(0)).to(torch.complex64)
    return sim, scan, data, truth


def _counts(obj, probe, data):
    spectrum = torch.fft.fft2(torch.as_tensor(probe).to(torch.complex64))
    batch = PositionBatch(data, torch.arange(data.num_positions), spectrum, torch.device("cpu"))
    return batch.intensity(obj.reshape(-1)).double()


def test_forward_model_reproduces_ptychodus_counts_exactly(clean):
    _, scan, data, truth = clean
    scale = fit_global_scale(truth.reshape(-1), torch.fft.fft2(torch.as_tensor(scan.probe)), data, torch.device("cpu"))
    predicted = _counts(truth * scale, scan.probe, data)
    measured = data.counts.double()
    ratio = predicted.sum(dim=(1, 2)) / measured.sum(dim=(1, 2))
    assert float(ratio.std() / ratio.mean()) < 1e-3
    assert float(ratio.mean()) == pytest.approx(1.0, abs=2e-3)
    rel = float(torch.linalg.vector_norm(predicted - measured) / torch.linalg.vector_norm(measured))
    assert rel < 5e-3  # the sub-pixel shift and centring conventions match pixel for pixel


def test_wrong_subpixel_sign_would_not_match(clean):
    """The same check with the sub-pixel shift reversed fails: the test above can fail."""
    _, scan, data, truth = clean
    flipped = ScanTensors(counts=data.counts, lower=data.lower, frac=-data.frac, good=None, shape=data.shape)
    scale = fit_global_scale(truth.reshape(-1), torch.fft.fft2(torch.as_tensor(scan.probe)), data, torch.device("cpu"))
    predicted = _counts(truth * scale, scan.probe, flipped)
    measured = data.counts.double()
    rel = float(torch.linalg.vector_norm(predicted - measured) / torch.linalg.vector_norm(measured))
    assert rel > 2e-2


def test_flat_object_matches_mean_intensity(clean):
    _, scan, data, _ = clean
    flat = flat_object(scan.probe, data)
    predicted = _counts(flat, scan.probe, data)
    assert float(predicted.sum() / data.counts.double().sum()) == pytest.approx(1.0, rel=0.02)
    assert float(torch.angle(flat).abs().max()) == 0.0


def test_scale_fit_removes_a_global_factor(clean):
    _, scan, data, truth = clean
    s1 = fit_global_scale(truth.reshape(-1), torch.fft.fft2(torch.as_tensor(scan.probe)), data, torch.device("cpu"))
    s3 = fit_global_scale(3 * truth.reshape(-1), torch.fft.fft2(torch.as_tensor(scan.probe)), data, torch.device("cpu"))
    assert s3 == pytest.approx(s1 / 3, rel=1e-5)


def test_truth_is_a_fixed_point(clean):
    _, scan, data, truth = clean
    result = refine_object(truth.numpy(), scan.probe, data, RefinementOptions(iterations=3))
    start = truth.numpy() * result.scale
    change = np.linalg.norm(result.object - start) / np.linalg.norm(start)
    assert change < 1e-2
    assert max(result.losses) <= result.initial_loss + 1e-3


def test_refinement_from_flat_lowers_the_likelihood_and_finds_the_object(clean):
    sim, scan, data, _ = clean
    passes = []
    result = refine_object(None, scan.probe, data, RefinementOptions(iterations=20),
                           on_pass=lambda i, n, loss: passes.append((i, n, loss)))
    assert [p[0] for p in passes] == list(range(1, 21)) and passes[0][1] == 20
    assert result.losses[-1] < 0.2 * result.initial_loss
    assert result.losses[-1] <= min(result.losses[:5])
    metrics = evaluate_object(result.object, sim.product)
    assert metrics["amplitude_ssim"] > 0.8
    assert metrics["phase_ssim"] > 0.8
    assert metrics["amplitude_ssim"] > metrics["flat_amplitude_ssim"] + 0.3


def test_bad_pixels_are_ignored(clean):
    _, scan, _, truth = clean
    bad = np.zeros((64, 64), dtype=bool)
    bad[10:14, 40:50] = True
    garbage = scan.amplitudes[:]  # the stack reads as a new float32 array
    garbage[:, bad] = 1e3
    masked = ScanTensors.from_arrays(garbage, scan.positions_px, scan.object_shape, bad)
    clean_masked = ScanTensors.from_arrays(scan.amplitudes, scan.positions_px, scan.object_shape, bad)
    options = RefinementOptions(iterations=3)
    a = refine_object(None, scan.probe, masked, options)
    b = refine_object(None, scan.probe, clean_masked, options)
    np.testing.assert_allclose(a.object, b.object, rtol=1e-4, atol=1e-6)


def test_probe_refinement_improves_a_wrong_probe(clean):
    _, scan, data, _ = clean
    n = scan.N
    blur = np.exp(-((np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n)[None, :] ** 2) / (2 * 0.15**2)))
    wrong = np.fft.ifft2(np.fft.fft2(scan.probe) * blur).astype(np.complex64)
    fixed = refine_object(None, wrong, data, RefinementOptions(iterations=12))
    refined = refine_object(None, wrong, data, RefinementOptions(iterations=12, refine_probe=True))
    assert refined.losses[-1] < 0.8 * fixed.losses[-1]
    assert not np.allclose(refined.probe, wrong)
    np.testing.assert_array_equal(fixed.probe, wrong)


def test_non_finite_data_stop_with_the_last_good_object(clean, caplog):
    _, scan, data, truth = clean
    counts = data.counts.clone()
    counts[5, 3, 3] = float("nan")
    broken = ScanTensors(counts=counts, lower=data.lower, frac=data.frac, good=None, shape=data.shape)
    with caplog.at_level("WARNING"):
        result = refine_object(truth.numpy(), scan.probe, broken, RefinementOptions(iterations=5))
    assert result.stopped_early and "diverged" in result.stopped_early
    assert np.all(np.isfinite(result.object))
    np.testing.assert_allclose(result.object, truth.numpy() * result.scale, rtol=1e-5, atol=1e-7)
    assert any("diverged" in r.message for r in caplog.records)


def test_stop_request_cancels(clean):
    _, scan, data, _ = clean
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(RefinementCancelled):
        refine_object(None, scan.probe, data, RefinementOptions(iterations=5, batch_size=16), should_stop=stop)


def test_step_scale_is_one_then_falls_linearly_to_the_final_step():
    assert [step_scale(p, 0.2, 0.25) for p in (0.0, 0.5, 0.8)] == [1.0, 1.0, 1.0]
    assert step_scale(0.9, 0.2, 0.25) == pytest.approx(0.625)
    assert step_scale(1.0, 0.2, 0.25) == pytest.approx(0.25)
    assert step_scale(0.99, 0.0, 0.25) == 1.0  # no annealing: the fixed step


def test_annealing_changes_only_the_last_passes(clean):
    """The step shrinks only over the last ``anneal_fraction`` of the sets: until then the passes
    are the fixed-step passes exactly (its effect on realistic scans is measured in
    docs/performance.md, "Refinement step annealing")."""
    _, scan, data, _ = clean
    fixed, annealed = (refine_object(None, scan.probe, data, RefinementOptions(iterations=10, anneal_fraction=f))
                       for f in (0.0, 0.3))
    # 100 positions = 2 sets per pass; the shrinking starts with pass 8's second set, and a
    # pass's loss is taken before each set's update, so it first shows in pass 9's loss
    assert fixed.losses[:8] == annealed.losses[:8]
    assert all(a != b for a, b in zip(fixed.losses[8:], annealed.losses[8:]))
    assert not np.array_equal(fixed.object, annealed.object)


@pytest.mark.parametrize("bad", [{"iterations": -1}, {"batch_size": 0}, {"step": 0.0}, {"alpha": 1.5},
                                 {"noise_model": "gauss"}, {"anneal_fraction": 1.5}, {"final_step": 0.0},
                                 {"momentum": 1.0}, {"momentum": -0.1}])
def test_bad_options_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        RefinementOptions(**bad)


def test_bad_initial_object_is_rejected(clean):
    _, scan, data, _ = clean
    with pytest.raises(ValueError, match="shape"):
        refine_object(np.ones((10, 10), np.complex64), scan.probe, data, RefinementOptions(iterations=1))
    nan = np.full(data.shape, np.nan, np.complex64)
    with pytest.raises(ValueError, match="NaN"):
        refine_object(nan, scan.probe, data, RefinementOptions(iterations=1))


def test_likelihood_units_match_the_poisson_loss(clean):
    """negative_log_likelihood is physics.poisson_nll (nats per pixel, log k! included)."""
    from ptychodus_ptychopinn_torch import physics

    _, scan, data, truth = clean
    obj = flat_object(scan.probe, data)
    lam = _counts(obj, scan.probe, data).float()
    expected = float(physics.poisson_nll(torch.sqrt(lam), torch.sqrt(data.counts)))
    assert negative_log_likelihood(obj, torch.as_tensor(scan.probe), data) == pytest.approx(expected, rel=1e-4)


def test_fresnel_scale_is_the_hosts_propagator_factor(clean):
    """Ptychodus's far-field propagator is the orthonormal FFT times N dx^2 / (lambda z): the
    global factor the true object needs is exactly that, so refined objects come out as the
    physical transmission of the product's probe."""
    from ptychodus_ptychopinn_torch.data.io import fresnel_scale

    sim, scan, data, truth = clean
    fitted = fit_global_scale(truth.reshape(-1), torch.fft.fft2(torch.as_tensor(scan.probe)), data, torch.device("cpu"))
    assert scan.propagator_scale == pytest.approx(fresnel_scale(sim.product, 64))
    assert scan.propagator_scale == pytest.approx(fitted, rel=1e-3)


def test_engine_refinement_returns_the_physical_transmission(clean):
    from ptychodus_ptychopinn_torch.config import InferenceConfig, ModelConfig
    from ptychodus_ptychopinn_torch.workflows.engine import Reconstruction, refine_reconstruction

    sim, scan, data, truth = clean
    start = Reconstruction(object=np.full(scan.object_shape, 123.0, np.complex64),
                           object_x_px=scan.positions_px[:, 0], object_y_px=scan.positions_px[:, 1],
                           coverage=np.ones(scan.object_shape, np.float32), seconds=0.0)
    result = refine_reconstruction(start, scan, InferenceConfig(model=ModelConfig(N=64), refine_iterations=15))
    metrics = evaluate_object(result.object, sim.product)
    assert metrics["object_scale_factor"] == pytest.approx(1.0, abs=0.05)
    assert result.refinement.final_loss < result.refinement.network_loss
    assert result.refinement.final_loss < result.refinement.flat_loss
    np.testing.assert_array_equal(result.network_object, start.object)


def test_object_step_sparse_and_dense_agree_bit_for_bit():
    """The per-set object update touches only the set's pixels on large canvases (sparse) and
    sweeps the canvas on small ones (dense); both must give the same values and leave the
    buffers zero."""
    from ptychodus_ptychopinn_torch.refinement import _object_step

    g = torch.Generator().manual_seed(3)
    size, n, sets = 5000, 16, 6
    flat = torch.randint(0, size - n * n, (sets, 1), generator=g) + torch.arange(n * n).view(1, -1)
    flat = flat.reshape(-1)  # overlapping windows: many pixels appear several times
    numerator = torch.complex(torch.randn(flat.numel(), generator=g), torch.randn(flat.numel(), generator=g))
    weight = torch.rand(flat.numel(), generator=g)
    start = torch.complex(torch.randn(size, generator=g), torch.randn(size, generator=g))
    results = []
    for sparse in (False, True):
        canvas = start.clone()
        num_buf, den_buf = torch.zeros_like(canvas), torch.zeros(size)
        _object_step(canvas, num_buf, den_buf, flat, numerator, weight, 0.5, 1.0, sparse)
        assert not num_buf.any() and not den_buf.any()
        results.append(canvas)
    assert torch.equal(results[0], results[1])
    untouched = torch.ones(size, dtype=torch.bool)
    untouched[flat] = False
    assert torch.equal(results[1][untouched], start[untouched])
    assert not torch.equal(results[1][flat], start[flat])


def test_position_cache_gives_the_same_refinement_bit_for_bit(clean, monkeypatch):
    """With a fixed probe every position's shifted probe, intensity and counts are built once
    (`PositionCache`) instead of per set; the refined object must not change by a bit, and a scan
    over the memory budget (or a refined probe, or no pass at all) keeps the per-set path."""
    import ptychodus_ptychopinn_torch.refinement as refinement

    _, scan, _, _ = clean
    lazy = ScanTensors.from_patterns(scan.amplitudes, scan.positions_px, scan.object_shape)
    built = []
    original = refinement.PositionCache.__init__

    def counting_init(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(refinement.PositionCache, "__init__", counting_init)
    options = RefinementOptions(iterations=4)
    cached = refine_object(None, scan.probe, lazy, options)
    assert built == [1]
    monkeypatch.setattr(refinement, "POSITION_CACHE_BYTES", refinement.PositionCache.nbytes(lazy) - 1)
    uncached = refine_object(None, scan.probe, lazy, options)
    assert built == [1]
    np.testing.assert_array_equal(cached.object, uncached.object)
    # the cache sums log k! once per position: the same losses up to float rounding
    np.testing.assert_allclose(cached.losses, uncached.losses, rtol=1e-6)
    monkeypatch.setattr(refinement, "POSITION_CACHE_BYTES", 2**40)
    refine_object(None, scan.probe, lazy, RefinementOptions(iterations=3, refine_probe=True, probe_start=1))
    refine_object(None, scan.probe, lazy, RefinementOptions(iterations=0))  # no pass: nothing to cache
    assert built == [1]


def test_momentum_accelerates_and_leaves_the_first_pass_and_the_annealing_alone(clean):
    """The momentum extrapolates after a pass: the first pass is the plain step's exactly, later
    ones reach a lower likelihood in the same passes; from where the step anneals on it is off,
    so a run whose whole length anneals is the plain rule (its effect on realistic scans is in
    docs/performance.md, "Refinement momentum")."""
    _, scan, data, _ = clean
    plain, fast = (refine_object(None, scan.probe, data, RefinementOptions(iterations=12, momentum=m,
                                                                           anneal_fraction=0.0))
                   for m in (0.0, 0.5))
    assert plain.losses[0] == fast.losses[0]
    assert fast.losses[-1] < plain.losses[-1]
    assert sum(fast.losses[2:]) < sum(plain.losses[2:])
    off = [refine_object(None, scan.probe, data, RefinementOptions(iterations=4, momentum=m, anneal_fraction=1.0))
           for m in (0.0, 0.5)]
    assert off[0].losses == off[1].losses
    assert np.array_equal(off[0].object, off[1].object)
