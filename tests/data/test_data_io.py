"""load_scan / save_training_npz / scan_from_reconstruct_input."""

import dataclasses
import re

import numpy as np
import pytest

from ptychodus_ptychopinn_torch.data.io import load_scan, save_training_npz, scan_from_reconstruct_input
from ptychodus_ptychopinn_torch.simulate import write_scan_files


def _expected_positions(product):
    geometry = product.object_.get_geometry()
    return np.column_stack(
        [
            geometry.map_probe_positions_to_object_x_px(product.probe_positions),
            geometry.map_probe_positions_to_object_y_px(product.probe_positions),
        ]
    )


def test_from_reconstruct_input(small_scan):
    ri = small_scan.reconstruct_input
    scan = scan_from_reconstruct_input(ri)
    assert scan.amplitudes.shape == (25, 32, 32) and scan.amplitudes.dtype == np.float32
    np.testing.assert_allclose(scan.amplitudes[:].astype(np.float64) ** 2, ri.diffraction_patterns, rtol=1e-6)
    np.testing.assert_array_equal(scan.positions_px, _expected_positions(ri.product))
    probe = ri.product.probes.get_probe_no_opr().get_incoherent_mode(0)
    np.testing.assert_allclose(scan.probe, probe, rtol=1e-6)
    assert scan.object_shape == ri.product.object_.get_layer(0).shape
    assert scan.mean_counts == pytest.approx(ri.diffraction_patterns.sum(axis=(1, 2)).mean(), rel=1e-6)


def test_bad_pixels_zeroed_and_kept(small_scan):
    ri = small_scan.reconstruct_input
    bad = np.zeros(ri.bad_pixels.shape, bool)
    bad[0, :3] = True
    scan = scan_from_reconstruct_input(dataclasses.replace(ri, bad_pixels=bad))
    assert scan.amplitudes[:, 0, :3].max() == 0
    np.testing.assert_array_equal(scan.bad_pixels, bad)


def test_npz_round_trip_uint32_and_3d_probe(small_scan, tmp_path):
    ri = small_scan.reconstruct_input
    counts = ri.diffraction_patterns.astype(np.uint32)
    ri32 = dataclasses.replace(ri, diffraction_patterns=counts)
    written = save_training_npz(tmp_path / "train_data", ri32)
    assert written == tmp_path / "train_data.npz" and written.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp file gone
    with np.load(written) as raw:
        assert raw["diff3d"].dtype == np.uint32 and raw["probeGuess"].ndim == 3
    for source in (written, tmp_path):  # the file, and the directory holding train_data.npz
        scan = load_scan(source)
        np.testing.assert_array_equal(scan.amplitudes, np.sqrt(counts.astype(np.float64)).astype(np.float32))
        np.testing.assert_allclose(scan.positions_px, _expected_positions(ri.product))
        assert scan.object_shape == ri.product.object_.get_layer(0).shape
        assert scan.bad_pixels is not None and not scan.bad_pixels.any()


def test_npz_without_object_guess_builds_canvas(tmp_path):
    m, n = 5, 8
    x = np.array([100.0, 110.5, 120.0, 105.0, 115.25])
    y = np.array([-20.0, -10.0, 0.0, -5.0, -15.0])
    np.savez(
        tmp_path / "scan.npz",
        diff3d=np.ones((m, n, n)),
        probeGuess=np.ones((n, n), complex),
        xcoords=x,
        ycoords=y,
    )
    scan = load_scan(tmp_path / "scan.npz")
    assert scan.object_shape == (20 + n, 20 + n)
    np.testing.assert_allclose(np.diff(scan.positions_px[:, 0]), np.diff(x))  # shift only
    centre = 0.5 * (scan.positions_px.min(axis=0) + scan.positions_px.max(axis=0))
    np.testing.assert_allclose(centre, [(28 - 1) / 2, (28 - 1) / 2])
    lower = np.floor(scan.positions_px - (n - 1) / 2)
    assert lower.min() >= 0 and lower.max() + n <= 28


def _write(path, **arrays):
    base = dict(
        diff3d=np.ones((3, 8, 8)),
        probeGuess=np.ones((8, 8), complex),
        xcoords=np.array([10.0, 12.0, 14.0]),
        ycoords=np.array([10.0, 11.0, 12.0]),
        objectGuess=np.ones((30, 30), complex),
    )
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(diff3d=None), r"missing key 'diff3d' \(expected \(M, N, N\)"),
        (dict(probeGuess=None), r"missing key 'probeGuess'"),
        (dict(xcoords=None), r"missing key 'xcoords'"),
        (dict(diff3d=np.ones((3, 64))), r"'diff3d' must have shape \(M, N, N\); got \(3, 64\)"),
        (dict(probeGuess=np.ones((1, 1, 8, 8), complex)), r"'probeGuess' must have shape \(N, N\) or \(modes, N, N\)"),
        (dict(probeGuess=np.ones((16, 16), complex)), r"probe shape \(16, 16\) does not match"),
        (dict(xcoords=np.array([1.0, 2.0])), r"'xcoords' and 'ycoords' must be 1-D arrays of equal length"),
        (dict(xcoords=np.ones(4), ycoords=np.ones(4)), r"3 patterns but 'xcoords'/'ycoords' hold 4"),
        (dict(bad_pixels=np.zeros((4, 4), bool)), r"'bad_pixels' must have the pattern shape \(8, 8\)"),
        (dict(objectGuess=np.ones((2, 30, 30), complex)), r"'objectGuess' must have shape \(H, W\)"),
        (dict(xcoords=np.array([10.0, 12.0, 40.0])), r"outside the object canvas"),
        (dict(diff3d=-np.ones((3, 8, 8))), r"negative counts"),
        (dict(diff3d=np.ones((3, 8, 6))), r"must be square"),
    ],
)
def test_npz_errors(tmp_path, overrides, message):
    path = _write(tmp_path / "bad.npz", **overrides)
    with pytest.raises(ValueError, match=message):
        load_scan(path)


def test_npz_2d_probe_and_bad_pixels(tmp_path):
    bad = np.zeros((8, 8), bool)
    bad[4, 4] = True
    counts = np.full((3, 8, 8), 4.0)
    counts[:, 4, 4] = np.nan  # a bad pixel may hold anything
    scan = load_scan(_write(tmp_path / "ok.npz", diff3d=counts, bad_pixels=bad))
    assert scan.probe.shape == (8, 8) and scan.amplitudes[0, 4, 4] == 0
    assert scan.amplitudes[0, 0, 0] == 2.0 and scan.bad_pixels[4, 4]


def test_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_scan(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"looked for train_data.npz, or for diffraction.h5 \+ product.h5"):
        load_scan(tmp_path)
    (tmp_path / "diffraction.h5").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"missing: product.h5"):
        load_scan(tmp_path)
    other = tmp_path / "data.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="expected a Ptychodus training-data .npz file"):
        load_scan(other)


def test_hdf5_directory(small_scan, tmp_path):
    write_scan_files(small_scan, tmp_path / "batch")
    scan = load_scan(tmp_path / "batch")
    direct = scan_from_reconstruct_input(small_scan.reconstruct_input)
    np.testing.assert_array_equal(scan.amplitudes, direct.amplitudes)
    np.testing.assert_allclose(scan.positions_px, direct.positions_px, atol=1e-9)
    np.testing.assert_allclose(scan.probe, direct.probe)
    np.testing.assert_allclose(scan.object_guess, direct.object_guess)


# ----------------------------------------------------------------------------- diff3d conventions
def _counts(seed=0, shape=(3, 8, 8)):
    """Poisson counts with plenty of values that are not perfect squares."""
    return np.random.default_rng(seed).poisson(40.0, size=shape).astype(np.int64)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.float64])
def test_integer_valued_diff3d_is_read_as_counts(tmp_path, caplog, dtype):
    counts = _counts()
    caplog.set_level("INFO", logger="ptychodus_ptychopinn_torch.data.io")
    scan = load_scan(_write(tmp_path / "c.npz", diff3d=counts.astype(dtype)))
    np.testing.assert_allclose(scan.amplitudes, np.sqrt(counts), rtol=1e-6)
    assert "reading 'diff3d' as raw counts (detected:" in caplog.text


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_square_roots_of_counts_are_read_as_amplitudes(tmp_path, caplog, dtype):
    counts = _counts(1)
    amplitudes = np.sqrt(counts).astype(dtype)
    caplog.set_level("INFO", logger="ptychodus_ptychopinn_torch.data.io")
    scan = load_scan(_write(tmp_path / "a.npz", diff3d=amplitudes))
    np.testing.assert_allclose(scan.amplitudes, amplitudes, rtol=1e-6)  # not counts**(1/4)
    assert scan.mean_counts == pytest.approx(counts.sum(axis=(1, 2)).mean(), rel=1e-5)
    assert ("reading 'diff3d' as amplitudes (square roots of counts) (detected: the values are "
            "not integers but their squares are") in caplog.text


def test_undecidable_diff3d_is_refused_with_the_way_out(tmp_path):
    scaled = _counts(2) * 0.37  # e.g. flat-field corrected intensities
    path = _write(tmp_path / "s.npz", diff3d=scaled)
    with pytest.raises(ValueError) as info:
        load_scan(path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot tell whether 'diff3d' holds raw counts")
    assert "neither integers (counts) nor square roots of integers (amplitudes)" in message
    assert "--diffraction counts|amplitudes" in message
    assert "[PtychoPINNPyTorchTraining] diffraction" in message


def test_override_reads_what_it_is_told(tmp_path, caplog):
    scaled = _counts(3) * 0.37
    path = _write(tmp_path / "s.npz", diff3d=scaled)
    caplog.set_level("INFO", logger="ptychodus_ptychopinn_torch.data.io")
    as_counts = load_scan(path, diffraction="counts")
    np.testing.assert_allclose(as_counts.amplitudes, np.sqrt(scaled), rtol=1e-6)
    assert "reading 'diff3d' as raw counts (given)" in caplog.text
    as_amplitudes = load_scan(path, diffraction="amplitudes")
    np.testing.assert_allclose(as_amplitudes.amplitudes, scaled, rtol=1e-6)
    # an integer file read as amplitudes when the user says so
    counts = _counts(4)
    told = load_scan(_write(tmp_path / "c.npz", diff3d=counts), diffraction="amplitudes")
    np.testing.assert_array_equal(told.amplitudes, counts.astype(np.float32))


def test_bad_pixels_do_not_decide_and_are_zeroed(tmp_path):
    amplitudes = np.sqrt(_counts(5)).astype(np.float32)
    bad = np.zeros((8, 8), bool)
    bad[2, 3] = True
    amplitudes[:, 2, 3] = np.nan  # a bad pixel may hold anything, even in an amplitude file
    scan = load_scan(_write(tmp_path / "a.npz", diff3d=amplitudes, bad_pixels=bad))
    assert scan.amplitudes[:, 2, 3].max() == 0.0
    np.testing.assert_allclose(scan.amplitudes[:, 0, 0], amplitudes[:, 0, 0])


def test_negative_or_invalid_amplitudes_and_options(tmp_path):
    amplitudes = np.sqrt(_counts(6)).astype(np.float32)
    amplitudes[0, 0, 0] = -1.5
    with pytest.raises(ValueError, match=r"a.npz: diffraction amplitudes contain negative values"):
        load_scan(_write(tmp_path / "a.npz", diff3d=amplitudes), diffraction="amplitudes")
    with pytest.raises(ValueError, match=r"diffraction='sqrt' is invalid; expected one of "
                                         r"'auto', 'counts', 'amplitudes'"):
        load_scan(tmp_path / "a.npz", diffraction="sqrt")
    with pytest.raises(ValueError, match=r"'diff3d' must hold real numbers .* complex128"):
        load_scan(_write(tmp_path / "z.npz", diff3d=np.ones((3, 8, 8), complex)))


def test_detection_knows_when_the_precision_cannot_tell():
    from ptychodus_ptychopinn_torch.data.io import detect_diffraction

    bright = np.sqrt(np.arange(10**7, 10**7 + 64, dtype=np.float64)).reshape(1, 8, 8)
    convention, reason = detect_diffraction(bright.astype(np.float32))
    assert convention is None and "too large for their precision" in reason
    assert detect_diffraction(bright)[0] == "amplitudes"  # float64 still tells
    assert detect_diffraction(np.zeros((2, 4, 4)))[0] == "counts"  # both readings agree
    assert detect_diffraction(np.ones((2, 4, 4), np.uint8))[1] == "integer dtype uint8"


def test_hdf5_pair_always_holds_counts(small_scan, tmp_path, caplog):
    write_scan_files(small_scan, tmp_path / "batch")
    scan = load_scan(tmp_path / "batch", diffraction="amplitudes")
    direct = scan_from_reconstruct_input(small_scan.reconstruct_input)
    np.testing.assert_array_equal(scan.amplitudes, direct.amplitudes)
    assert "applies to training-data NPZ files only" in caplog.text


# ----------------------------------------------------------------------------- bad HDF5 pairs
def _pair(scan, directory):
    write_scan_files(scan, directory)
    return directory / "diffraction.h5", directory / "product.h5"


def _replace_dataset(path, name, data):
    import h5py

    with h5py.File(path, "r+") as handle:
        attrs = dict(handle[name].attrs) if name in handle else {}
        if name in handle:
            del handle[name]
        if data is not None:
            handle.create_dataset(name, data=data)
            handle[name].attrs.update(attrs)


def _one_error(directory):
    with pytest.raises(ValueError) as info:
        load_scan(directory)
    return str(info.value)


def test_truncated_or_foreign_hdf5_files_name_the_file(small_scan, tmp_path):
    diffraction, product = _pair(small_scan, tmp_path / "a")
    data = diffraction.read_bytes()
    diffraction.write_bytes(data[: len(data) // 2])
    message = _one_error(tmp_path / "a")
    assert message.startswith(f"{diffraction}: not a readable HDF5 file (")
    assert "expected Ptychodus's diffraction.h5 with datasets 'patterns'" in message

    diffraction, product = _pair(small_scan, tmp_path / "b")
    product.write_bytes(b"this is not HDF5 at all")
    assert _one_error(tmp_path / "b").startswith(f"{product}: not a readable HDF5 file (")


@pytest.mark.parametrize("name, data, message", [
    ("patterns", np.ones((25, 32)), r"dataset 'patterns' has shape \(25, 32\); expected a stack "
                                    r"of diffraction patterns \(M, N, N\)"),
    ("patterns", np.ones((25, 32, 32), np.complex64), r"dataset 'patterns' has dtype complex64; "
                                                      r"expected integer or floating-point counts"),
    ("patterns", None, r"dataset 'patterns' is missing; expected \(M, N, N\) diffraction counts"),
    ("indexes", np.arange(20), r"dataset 'indexes' holds 20 scan indexes but 'patterns' holds 25 "
                               r"patterns; expected one index per pattern"),
    ("indexes", np.linspace(0, 1, 25), r"dataset 'indexes' has shape \(25,\) and dtype float64"),
    ("bad_pixels", np.zeros((16, 16), bool), r"dataset 'bad_pixels' has shape \(16, 16\); "
                                             r"expected the pattern shape \(32, 32\)"),
])
def test_bad_diffraction_datasets_name_file_and_dataset(small_scan, tmp_path, name, data, message):
    diffraction, _ = _pair(small_scan, tmp_path / "scan")
    _replace_dataset(diffraction, name, data)
    text = _one_error(tmp_path / "scan")
    assert text.startswith(f"{diffraction}: dataset '{name}'"), text
    assert re.search(message, text), text


def test_bad_product_datasets_name_file_and_dataset(small_scan, tmp_path):
    _, product = _pair(small_scan, tmp_path / "scan")
    _replace_dataset(product, "probe_position_x_m", np.zeros((25, 2)))
    text = _one_error(tmp_path / "scan")
    assert text.startswith(f"{product}: dataset 'probe_position_x_m' has shape (25, 2)"), text
    _, product = _pair(small_scan, tmp_path / "other")
    _replace_dataset(product, "probe", None)
    assert _one_error(tmp_path / "other").startswith(f"{product}: dataset 'probe' is missing")


def test_pattern_count_must_match_the_positions(small_scan, tmp_path):
    from ptychodus_ptychopinn_torch.simulate import simulate_scan

    diffraction, _ = _pair(small_scan, tmp_path / "scan")
    _, other_product = _pair(simulate_scan(num_positions=16, N=32, seed=4), tmp_path / "other")
    (tmp_path / "scan" / "product.h5").write_bytes(other_product.read_bytes())
    text = _one_error(tmp_path / "scan")
    assert text == (f"{diffraction} dataset 'patterns' holds 25 patterns but "
                    f"{tmp_path / 'scan' / 'product.h5'} dataset 'probe_position_indexes' holds "
                    "16 positions; expected one position per pattern (are both files from the "
                    "same scan?)")
