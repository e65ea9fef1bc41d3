"""DiffractionPatterns: batch reads equal the whole-stack conversion, chunked checks, HDF5 and raw
sources, staging, and the lazy diffraction.h5 route of load_scan."""

from __future__ import annotations

import gc
import logging
import pickle

import numpy as np
import pytest

from ptychodus_ptychopinn_torch.data import patterns as patterns_module
from ptychodus_ptychopinn_torch.data.io import load_scan, scan_from_reconstruct_input
from ptychodus_ptychopinn_torch.data.patterns import (
    DiffractionPatterns,
    HDF5Patterns,
    RawPatterns,
    ScratchFile,
    stage,
    write_raw,
)
from ptychodus_ptychopinn_torch.simulate import write_scan_files


def _old_amplitudes(counts, bad=None):
    """The conversion the whole-stack code made: float64, bad pixels 0, sqrt, float32."""
    data = np.asarray(counts).astype(np.float64)
    if bad is not None:
        data[:, bad] = 0.0
    return np.sqrt(data).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.uint32, np.int32, np.int64,
                                   np.float32, np.float64])
def test_batch_amplitudes_equal_the_whole_stack_conversion_bit_for_bit(dtype):
    rng = np.random.default_rng(1)
    top = {np.uint8: 255, np.int16: 32767, np.uint16: 65535, np.int32: 2**31 - 1}.get(dtype, 4_000_000_000)
    counts = rng.integers(0, top, size=(40, 8, 8), endpoint=True).astype(dtype)
    if np.dtype(dtype).kind == "f":
        counts = counts + rng.random(counts.shape).astype(dtype)  # non-integer float counts too
    bad = np.zeros((8, 8), bool)
    bad[2, 3] = True
    stack = DiffractionPatterns(counts, holds="counts", bad_pixels=bad)
    expected = _old_amplitudes(counts, bad)
    np.testing.assert_array_equal(stack[:], expected)
    order = np.array([7, 3, 3, 39, 0, -1])
    np.testing.assert_array_equal(stack.amplitudes(order), expected[order])
    np.testing.assert_array_equal(stack[5], expected[5])
    np.testing.assert_array_equal(stack[2:30:3, 1, ::2], expected[2:30:3, 1, ::2])
    np.testing.assert_array_equal(np.asarray(stack), expected)
    assert stack.dtype == np.float32 and stack.shape == (40, 8, 8) and len(stack) == 40


def test_reading_never_modifies_the_callers_array():
    amp = np.ones((4, 8, 8), np.float32)
    bad = np.zeros((8, 8), bool)
    bad[1, 1] = True
    stack = DiffractionPatterns(amp, holds="amplitudes", bad_pixels=bad)
    out = stack.amplitudes(slice(0, 4))  # a contiguous run is a view of the array: copied
    out[:] = 7.0
    assert stack[0, 1, 1] == 0.0 and amp[0, 1, 1] == 1.0 and stack[0, 0, 0] == 1.0


def test_check_is_one_chunked_pass_with_exact_messages(monkeypatch):
    counts = np.ones((9, 4, 4))
    counts[3, 0, 0] = np.nan
    counts[7, 1, 1] = np.inf
    counts[8, 2, 2] = -3.0
    monkeypatch.setattr(patterns_module, "CHUNK_PATTERNS", 2)  # five chunks
    stack = DiffractionPatterns(counts, holds="counts")
    with pytest.raises(ValueError, match=r"^diffraction patterns contain 2 NaN or infinite values; "
                                         r"expected finite, non-negative counts"):
        stack.check()
    counts[3, 0, 0] = counts[7, 1, 1] = 1.0
    with pytest.raises(ValueError, match=r"negative counts \(minimum -3.0\)"):
        DiffractionPatterns(counts, holds="counts").check()
    with pytest.raises(ValueError, match=r"diffraction amplitudes contain negative values \(minimum -3.0\)"):
        DiffractionPatterns(counts, holds="amplitudes").check()
    bad = np.zeros((4, 4), bool)
    bad[2, 2] = True  # a bad pixel may hold anything
    stack = DiffractionPatterns(counts, holds="counts", bad_pixels=bad).check()
    assert stack.mean_total_intensity() == pytest.approx(15.0)


def test_mean_intensity_matches_the_whole_stack_formula():
    rng = np.random.default_rng(2)
    counts = rng.poisson(30.0, size=(2500, 16, 16)).astype(np.uint32)
    stack = DiffractionPatterns(counts, holds="counts")
    amp = _old_amplitudes(counts).astype(np.float64)
    assert stack.mean_total_intensity() == pytest.approx(float(np.sum(amp * amp)) / 2500, rel=1e-12)


def _h5(path, data, chunks):
    import h5py

    with h5py.File(path, "w") as handle:
        handle.create_dataset("patterns", data=data, chunks=chunks, compression=chunks and "lzf")
    return path


@pytest.mark.parametrize("chunks", [(1, 16, 16), (50, 4, 4), None])
def test_hdf5_and_raw_sources_read_any_order_and_pickle_by_name(tmp_path, chunks):
    rng = np.random.default_rng(3)
    counts = rng.poisson(5.0, size=(200, 16, 16)).astype(np.uint16)
    source = HDF5Patterns(_h5(tmp_path / "d.h5", counts, chunks), "patterns")
    assert source.tiles_patterns == (chunks == (50, 4, 4))
    raw = write_raw(DiffractionPatterns(counts), tmp_path / "d.raw")
    rows = np.array([199, 3, 4, 5, 3, 0, 120, 121, 7])
    for src in (source, raw):
        np.testing.assert_array_equal(src.read(rows), counts[rows])
        again = pickle.loads(pickle.dumps(src))
        assert len(pickle.dumps(src)) < 1000
        np.testing.assert_array_equal(again.read(rows[::-1]), counts[rows[::-1]])
        stack = DiffractionPatterns(src, holds="counts", rows=np.arange(200)[::-1])
        np.testing.assert_array_equal(stack[:3], _old_amplitudes(counts[[199, 198, 197]]))
        src.close()
        np.testing.assert_array_equal(src.read(rows[:2]), counts[rows[:2]])  # reopens


def test_raw_source_refuses_a_short_file(tmp_path):
    (tmp_path / "short.raw").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match=r"holds 10 bytes; expected 512"):
        RawPatterns(tmp_path / "short.raw", np.uint16, (1, 16, 16))


def test_staged_copy_lives_as_long_as_its_stack(tmp_path):
    counts = np.arange(3 * 4 * 4, dtype=np.uint32).reshape(3, 4, 4)
    staged = stage(DiffractionPatterns(counts).check(), directory=tmp_path)
    path = staged.source.path
    assert staged.checked and path.parent == tmp_path and path.stat().st_size == counts.nbytes
    np.testing.assert_array_equal(staged[:], _old_amplitudes(counts))
    del staged
    gc.collect()
    assert not path.exists()
    scratch = ScratchFile("x-", directory=tmp_path)
    scratch.close()
    assert scratch.closed and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- load_scan, HDF5
def _rechunk(path, chunks):
    """Rewrite diffraction.h5's patterns with other chunks (None: contiguous), attributes kept."""
    import h5py

    with h5py.File(path, "r+") as handle:
        data, attrs = handle["patterns"][()], dict(handle["patterns"].attrs)
        del handle["patterns"]
        handle.create_dataset("patterns", data=data, chunks=chunks, compression=chunks and "lzf")
        handle["patterns"].attrs.update(attrs)


def _small_cache(monkeypatch):
    monkeypatch.setattr(patterns_module, "HDF5_CACHE_BYTES", 1024)
    monkeypatch.setattr(patterns_module, "HDF5_CACHE_MAX_BYTES", 1024)


def test_a_diffraction_h5_no_larger_than_the_chunk_cache_is_held_as_stored(small_scan, tmp_path):
    write_scan_files(small_scan, tmp_path)
    scan = load_scan(tmp_path)
    direct = scan_from_reconstruct_input(small_scan.reconstruct_input)
    source = scan.amplitudes.source
    assert isinstance(source, np.ndarray) and source.dtype == np.asarray(small_scan.diffraction.get_patterns()).dtype
    np.testing.assert_array_equal(scan.amplitudes[:], direct.amplitudes[:])
    np.testing.assert_array_equal(scan.positions_px, direct.positions_px)
    assert scan.mean_counts == direct.mean_counts


@pytest.mark.parametrize("chunks", [(1, 32, 32), None])
def test_larger_frame_chunked_or_contiguous_files_are_read_in_place(small_scan, tmp_path, monkeypatch, chunks):
    write_scan_files(small_scan, tmp_path)
    _rechunk(tmp_path / "diffraction.h5", chunks)
    _small_cache(monkeypatch)
    scan = load_scan(tmp_path)
    assert isinstance(scan.amplitudes.source, HDF5Patterns)  # the file stays open, nothing loaded
    direct = scan_from_reconstruct_input(small_scan.reconstruct_input)
    np.testing.assert_array_equal(scan.amplitudes.amplitudes([20, 1, 1]), direct.amplitudes.amplitudes([20, 1, 1]))
    assert scan.mean_counts == direct.mean_counts


def test_patterns_are_paired_with_positions_by_index_as_ptychodus_does(small_scan, tmp_path):
    """diffraction.h5 in another order than the positions, one pattern with no position."""
    import h5py
    from ptychodus.api.io import load_diffraction_data, load_product
    from ptychodus.api.reconstruct import prepare_reconstruct_input

    write_scan_files(small_scan, tmp_path)
    with h5py.File(tmp_path / "diffraction.h5", "r+") as handle:
        indexes, patterns = handle["indexes"][()], handle["patterns"][()]
        order = np.random.default_rng(4).permutation(indexes.size)
        shuffled = indexes[order]
        shuffled[3] = 10_000  # beyond the positions' indexes: Ptychodus drops the pattern
        for name, data in (("indexes", shuffled), ("patterns", patterns[order])):
            attrs = dict(handle[name].attrs)
            del handle[name]
            handle.create_dataset(name, data=data)
            handle[name].attrs.update(attrs)
    scan = load_scan(tmp_path)
    ri = prepare_reconstruct_input(load_diffraction_data(tmp_path / "diffraction.h5"),
                                   load_product(tmp_path / "product.h5"))
    reference = scan_from_reconstruct_input(ri)
    assert scan.num_positions == reference.num_positions == indexes.size - 1
    np.testing.assert_array_equal(scan.amplitudes[:], reference.amplitudes[:])
    np.testing.assert_array_equal(scan.positions_px, reference.positions_px)


def test_tiled_files_larger_than_the_cache_are_staged_once(small_scan, tmp_path, monkeypatch, caplog):
    import h5py

    write_scan_files(small_scan, tmp_path / "scan")
    with h5py.File(tmp_path / "scan" / "diffraction.h5", "r+") as handle:
        assert handle["patterns"].chunks[0] > 1  # Ptychodus's writer: h5py's automatic tiles
    _small_cache(monkeypatch)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    caplog.set_level(logging.INFO, logger="ptychodus_ptychopinn_torch.data.io")
    scan = load_scan(tmp_path / "scan")
    assert isinstance(scan.amplitudes.source, RawPatterns)
    assert "chunked in tiles of" in caplog.text
    direct = scan_from_reconstruct_input(small_scan.reconstruct_input)
    np.testing.assert_array_equal(scan.amplitudes[:], direct.amplitudes[:])
    staged = scan.amplitudes.source.path
    assert staged.parent == tmp_path and staged.exists()
    del scan
    gc.collect()
    assert not staged.exists()


def test_unreadable_pattern_blocks_name_the_file(small_scan, tmp_path, monkeypatch):
    import h5py

    write_scan_files(small_scan, tmp_path)
    _small_cache(monkeypatch)  # read in place, where a damaged block is found by the check
    with h5py.File(tmp_path / "diffraction.h5", "r+") as handle:
        offset = handle["patterns"].id.get_offset()
        chunked = handle["patterns"].chunks is not None
    data = bytearray((tmp_path / "diffraction.h5").read_bytes())
    if chunked:  # corrupt the compressed chunks: the b-tree stays readable, the data does not
        info_path = tmp_path / "diffraction.h5"
        with h5py.File(info_path, "r") as handle:
            chunk = handle["patterns"].id.get_chunk_info(0)
        data[chunk.byte_offset : chunk.byte_offset + chunk.size] = b"\xff" * chunk.size
    else:
        data[offset : offset + 64] = b"\xff" * 64
    (tmp_path / "diffraction.h5").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"diffraction.h5: the diffraction patterns cannot be read"):
        load_scan(tmp_path)
