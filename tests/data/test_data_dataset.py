"""Normalisation, truth-patch convention (against ptychodus simulate) and GroupedDataset."""

import numpy as np
import pytest
import torch

from ptychodus_ptychopinn_torch.data.dataset import (
    GroupedDataset,
    extract_patches,
    normalisation_factor,
    split_groups,
)
from ptychodus_ptychopinn_torch.data.grouping import group_positions
from ptychodus_ptychopinn_torch.data.io import scan_from_reconstruct_input
from ptychodus_ptychopinn_torch.data.scan import ScanData
from ptychodus_ptychopinn_torch.simulate import simulate_scan


def _far_field(patches):
    return np.abs(np.fft.fftshift(np.fft.fft2(patches), axes=(-2, -1))) ** 2


def _correlations(model, measured):
    return np.array([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(model, measured)])


def test_normalisation_exact():
    rng = np.random.default_rng(0)
    amp = np.sqrt(rng.poisson(50.0, size=(7, 16, 16))).astype(np.float32)
    kappa = normalisation_factor(amp)
    scaled = kappa * amp.astype(np.float64)
    assert np.mean(np.sum(scaled**2, axis=(1, 2))) == pytest.approx((16 / 2) ** 2, rel=1e-12)
    with pytest.raises(ValueError, match="cannot normalise"):
        normalisation_factor(np.zeros((2, 4, 4)))


def test_extract_patches_integer_and_subpixel_convention():
    n, period = 16, 8
    h, w = 40, 48
    yy, xx = np.mgrid[0:h, 0:w]
    # band-limited and periodic over N and over the N + 2 * N/4 window extract_patches shifts
    obj = np.exp(2j * np.pi * (xx / period + 2 * yy / period))
    positions = np.array([[20.5, 18.5], [20.3, 18.8], [30.0, 25.25]])
    patches = extract_patches(obj, positions, n)
    assert patches.shape == (3, n, n) and patches.dtype == np.complex64
    np.testing.assert_array_equal(patches[0], obj[11:27, 13:29].astype(np.complex64))  # plain slice
    jj, ii = np.mgrid[0:n, 0:n]
    for p, (x, y) in zip(patches, positions):
        # patch pixel (N-1)/2 sits exactly at object coordinate (x, y)
        ox, oy = x - (n - 1) / 2 + ii, y - (n - 1) / 2 + jj
        np.testing.assert_allclose(p, np.exp(2j * np.pi * (ox / period + 2 * oy / period)), atol=1e-5)


def test_extract_patches_outside_canvas_reads_zero():
    obj = np.ones((10, 10), complex)
    patch = extract_patches(obj, np.array([[0.5, 0.5]]), 8)[0]
    assert np.allclose(patch[:3], 0) and np.allclose(patch[:, :3], 0) and np.allclose(patch[3:, 3:], 1)
    far = extract_patches(obj, np.array([[100.5, -50.5]]), 8)[0]
    assert np.allclose(far, 0)


def test_extract_patches_matches_ptychodus_simulation_disk_probe():
    sim = simulate_scan(num_positions=25, N=64, probe="disk", noise=False, seed=2)
    scan = scan_from_reconstruct_input(sim.reconstruct_input)
    model = _far_field(extract_patches(scan.object_guess, scan.positions_px, scan.N) * scan.probe)
    measured = scan.amplitudes[:].astype(np.float64) ** 2
    assert _correlations(model, measured).min() > 0.999
    ratio = measured.sum(axis=(1, 2)) / model.sum(axis=(1, 2))  # one global constant
    assert ratio.std() / ratio.mean() < 1e-3


def test_extract_patches_matches_ptychodus_simulation_structured_probe(clean_scan):
    scan = scan_from_reconstruct_input(clean_scan.reconstruct_input)
    measured = scan.amplitudes[:].astype(np.float64) ** 2
    model = _far_field(extract_patches(scan.object_guess, scan.positions_px, scan.N) * scan.probe)
    corr = _correlations(model, measured)
    # Ptychodus shifts the probe, we shift the object: equal up to the band limit of the
    # product, which a broad-spectrum probe on a textured object approaches.
    assert corr.min() > 0.99 and np.median(corr) > 0.998
    # the opposite sub-pixel convention is clearly worse
    r = (scan.N - 1) / 2
    frac = scan.positions_px - (np.floor(scan.positions_px - r) + r)
    wrong = extract_patches(scan.object_guess, scan.positions_px + 2 * frac, scan.N)
    wrong_corr = _correlations(_far_field(wrong * scan.probe), measured)
    assert np.median(wrong_corr) < np.median(corr) - 0.01


def _square_scan():
    # a 2x2 group at x in {10, 20}, y in {30, 40}: centroid (15, 35)
    positions = np.array([[20.0, 30.0], [10.0, 30.0], [10.0, 40.0], [20.0, 40.0], [15.0, 35.0]])
    amp = np.arange(5 * 8 * 8, dtype=np.float32).reshape(5, 8, 8)
    obj = np.ones((60, 60), complex)
    return ScanData(amp, np.ones((8, 8), complex), positions, (60, 60), obj, None)


def test_dataset_items_and_coords_sign():
    scan = _square_scan()
    groups = np.array([[0, 1, 2, 3], [4, 0, 1, 2]])
    ds = GroupedDataset(scan, groups, kappa=0.5, with_truth=True)
    assert len(ds) == 2
    item = ds[0]
    assert item["amplitudes"].shape == (4, 8, 8) and item["amplitudes"].dtype == torch.float32
    assert item["coords_relative"].shape == (4, 2) and item["coords_relative"].dtype == torch.float32
    assert item["positions"].dtype == torch.float64 and item["index"].dtype == torch.int64
    assert item["truth"].shape == (4, 8, 8) and item["truth"].dtype == torch.complex64
    np.testing.assert_array_equal(item["amplitudes"].numpy(), 0.5 * scan.amplitudes[[0, 1, 2, 3]])
    # channel 0 is at dx=+5, dy=-5 from the centroid -> coords_relative (-5, +5)
    assert item["coords_relative"][0].tolist() == [-5.0, 5.0]
    assert item["coords_relative"][1].tolist() == [5.0, 5.0]
    assert torch.allclose(item["coords_relative"].sum(0), torch.zeros(2))
    assert item["index"].tolist() == [0, 1, 2, 3]
    assert item["positions"][2].tolist() == [10.0, 40.0]
    batch = ds.get_batch([1, 0])
    assert batch["amplitudes"].shape == (2, 4, 8, 8)
    assert torch.equal(batch["coords_relative"][1], item["coords_relative"])
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    assert next(iter(loader))["amplitudes"].shape == (2, 4, 8, 8)


def test_dataset_gridsize1_and_errors():
    scan = _square_scan()
    ds = GroupedDataset(scan, group_positions(scan.positions_px, gridsize=1), kappa=1.0)
    assert len(ds) == 5 and "truth" not in ds[0]
    assert ds[3]["coords_relative"].tolist() == [[0.0, 0.0]]
    no_truth = ScanData(scan.amplitudes, scan.probe, scan.positions_px, (60, 60))
    with pytest.raises(ValueError, match="object_guess"):
        GroupedDataset(no_truth, np.array([[0]]), kappa=1.0, with_truth=True)
    with pytest.raises(ValueError, match="outside"):
        GroupedDataset(scan, np.array([[0, 5]]), kappa=1.0)
    with pytest.raises(ValueError, match="kappa"):
        GroupedDataset(scan, np.array([[0]]), kappa=0.0)


def test_split_groups():
    groups = np.arange(20).reshape(10, 2)
    train, val = split_groups(groups, 0.2, seed=0)
    assert train.shape == (8, 2) and val.shape == (2, 2)
    assert sorted(np.concatenate([train, val])[:, 0].tolist()) == list(range(0, 20, 2))
    t2, v2 = split_groups(groups, 0.2, seed=0)
    assert np.array_equal(train, t2) and np.array_equal(val, v2)
    assert split_groups(groups[:2], 0.01, seed=0)[1].shape == (1, 2)  # at least one
    assert split_groups(groups, 0.0, seed=0)[1].shape == (0, 2)
    assert split_groups(groups[:1], 0.5, seed=0)[1].shape == (0, 2)
    with pytest.raises(ValueError, match="validation_fraction"):
        split_groups(groups, 1.0, seed=0)
