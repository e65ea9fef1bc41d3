"""Large scans without copies: the engine reads patterns a batch at a time from their stack and
gets the same numbers as from an in-memory scan (HDF5 file, raw file, counting source)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptychodus_ptychopinn_torch.checkpoint import load_model
from ptychodus_ptychopinn_torch.config import ExecutionConfig, InferenceConfig
from ptychodus_ptychopinn_torch.data.dataset import GroupedDataset, normalisation_factor
from ptychodus_ptychopinn_torch.data.grouping import group_positions
from ptychodus_ptychopinn_torch.data.io import load_scan, scan_from_reconstruct_input
from ptychodus_ptychopinn_torch.data import patterns as patterns_module
from ptychodus_ptychopinn_torch import refinement as refinement_module
from ptychodus_ptychopinn_torch.data.patterns import DiffractionPatterns, HDF5Patterns
from ptychodus_ptychopinn_torch.data.scan import ScanData
from ptychodus_ptychopinn_torch.refinement import (
    RefinementOptions,
    ScanTensors,
    flat_object,
    negative_log_likelihood,
    refine_object,
)
from ptychodus_ptychopinn_torch.simulate import simulate_scan, write_scan_files
from ptychodus_ptychopinn_torch.workflows.engine import reconstruct_object


class CountingSource:
    """A pattern source that records how many patterns each read of another source asked for."""

    def __init__(self, inner) -> None:
        self.inner, self.shape, self.dtype = inner, inner.shape, inner.dtype
        self.reads: list[int] = []

    def read(self, rows: np.ndarray) -> np.ndarray:
        self.reads.append(int(rows.size))
        return self.inner.read(rows)

    def close(self) -> None:
        self.inner.close()


def _frame_chunks(path) -> None:
    import h5py

    with h5py.File(path, "r+") as handle:
        data, attrs = handle["patterns"][()], dict(handle["patterns"].attrs)
        del handle["patterns"]
        handle.create_dataset("patterns", data=data, chunks=(1, *data.shape[1:]), compression="lzf")
        handle["patterns"].attrs.update(attrs)


@pytest.fixture(scope="module")
def simulated():
    return simulate_scan(num_positions=120, N=64, seed=5)


def _with_source(scan: ScanData, source) -> ScanData:
    patterns = DiffractionPatterns(source, holds="counts", bad_pixels=scan.bad_pixels)
    return ScanData(patterns, scan.probe, scan.positions_px, scan.object_shape, scan.object_guess,
                    scan.bad_pixels, scan.propagator_scale)


def test_reconstruct_from_hdf5_equals_in_memory_and_reads_one_batch_at_a_time(
        simulated, tmp_path, write_untrained_model, monkeypatch):
    bundle = load_model(write_untrained_model(simulated, tmp_path))
    memory = scan_from_reconstruct_input(simulated.reconstruct_input)
    write_scan_files(simulated, tmp_path / "scan")
    _frame_chunks(tmp_path / "scan" / "diffraction.h5")
    monkeypatch.setattr(patterns_module, "HDF5_CACHE_BYTES", 2**20)  # the file is larger: read in place
    # a large scan is also over the refinement's position-cache budget: sets are read when used
    monkeypatch.setattr(refinement_module, "POSITION_CACHE_BYTES", 0)
    from_file = load_scan(tmp_path / "scan")
    assert isinstance(from_file.amplitudes.source, HDF5Patterns)  # the file stays open
    counting = CountingSource(from_file.amplitudes.source)
    counted = _with_source(from_file, counting)
    checked = len(counting.reads)
    assert checked >= 1 and sum(counting.reads) == 120  # one chunked validation pass
    inference = InferenceConfig(model=bundle.model_config, refine_iterations=1)
    execution = ExecutionConfig(inference_batch_size=16)
    expected, result = (reconstruct_object(bundle, scan, inference, execution) for scan in (memory, counted))
    np.testing.assert_array_equal(result.object, expected.object)
    np.testing.assert_array_equal(result.network_object, expected.network_object)
    assert result.refinement.losses == expected.refinement.losses
    engine_reads = counting.reads[checked:]
    assert max(engine_reads) <= 256  # batches: 16 (network), 64 (refinement), 256 (likelihood)
    assert 16 in engine_reads and 64 in engine_reads


def test_lazy_refinement_data_equal_the_whole_scan_tensor(simulated):
    scan = scan_from_reconstruct_input(simulated.reconstruct_input)
    bad = np.zeros((64, 64), bool)
    bad[5:9, 30:40] = True
    scan = ScanData(scan.amplitudes, scan.probe, scan.positions_px, scan.object_shape, bad_pixels=bad)
    eager = ScanTensors.from_arrays(scan.amplitudes[:], scan.positions_px, scan.object_shape, bad)
    lazy = ScanTensors.from_patterns(scan.amplitudes, scan.positions_px, scan.object_shape, bad)
    index = torch.tensor([7, 3, 100, 3])
    assert torch.equal(lazy.counts[index], eager.counts[index])
    assert (lazy.n, lazy.num_positions) == (eager.n, eager.num_positions)
    assert torch.equal(lazy.pattern_totals(batch_size=50), eager.pattern_totals())
    probe = torch.as_tensor(scan.probe)
    assert torch.equal(flat_object(probe, lazy), flat_object(probe, eager))
    assert negative_log_likelihood(flat_object(probe, lazy), probe, lazy) == \
        negative_log_likelihood(flat_object(probe, eager), probe, eager)
    options = RefinementOptions(iterations=2)
    a, b = refine_object(None, probe, lazy, options), refine_object(None, probe, eager, options)
    np.testing.assert_array_equal(a.object, b.object)
    assert a.losses == b.losses


def test_training_loader_reads_batches_from_the_file_in_worker_processes(simulated, tmp_path, monkeypatch):
    write_scan_files(simulated, tmp_path)
    _frame_chunks(tmp_path / "diffraction.h5")
    monkeypatch.setattr(patterns_module, "HDF5_CACHE_BYTES", 2**20)
    scan = load_scan(tmp_path)
    assert isinstance(scan.amplitudes.source, HDF5Patterns)
    memory = scan_from_reconstruct_input(simulated.reconstruct_input)
    groups = group_positions(scan.positions_px, gridsize=2, neighbor_count=4, seed=0)
    kappa = normalisation_factor(scan.amplitudes)
    assert kappa == normalisation_factor(memory.amplitudes)
    on_disk, in_memory = GroupedDataset(scan, groups, kappa), GroupedDataset(memory, groups, kappa)
    assert torch.equal(on_disk[3]["amplitudes"], in_memory[3]["amplitudes"])
    assert torch.equal(on_disk.get_batch([9, 2, 9])["amplitudes"], in_memory.get_batch([9, 2, 9])["amplitudes"])
    loader = torch.utils.data.DataLoader(on_disk, batch_size=8, num_workers=2, shuffle=False)
    batches = torch.cat([batch["amplitudes"] for batch in loader])
    assert torch.equal(batches, in_memory.get_batch(np.arange(len(in_memory)))["amplitudes"])
