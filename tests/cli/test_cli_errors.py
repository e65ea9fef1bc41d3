"""Bad input: one clear line on stderr, exit status 2, no traceback; interrupts exit 130."""

from __future__ import annotations

import argparse

import pytest

from ptychodus_ptychopinn_torch import cli


def _one_clear_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ptychopinn-torch: error: ")
    return err


def test_train_missing_data_file(tmp_path, capsys):
    assert cli.main(["train", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.npz" in _one_clear_line(capsys)
    assert not (tmp_path / "o").exists()


def test_reconstruct_missing_model(npz_path, tmp_path, capsys):
    argv = ["reconstruct", str(npz_path), "--model", str(tmp_path / "nope.ckpt"),
            "--out", str(tmp_path / "r.npz")]
    assert cli.main(argv) == 2
    assert "nope.ckpt" in _one_clear_line(capsys)


def test_reconstruct_bad_model(npz_path, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"definitely not a model")
    argv = ["reconstruct", str(npz_path), "--model", str(bad), "--out", str(tmp_path / "r.npz")]
    assert cli.main(argv) == 2
    assert "bad.ckpt" in _one_clear_line(capsys)
    assert not (tmp_path / "r.npz").exists()


def test_reconstruct_out_must_be_npz(npz_path, untrained_model, tmp_path, capsys):
    argv = ["reconstruct", str(npz_path), "--model", str(untrained_model),
            "--out", str(tmp_path / "r.txt")]
    assert cli.main(argv) == 2
    assert ".npz" in _one_clear_line(capsys)


def test_reconstruct_pattern_size_mismatch(untrained_model, tmp_path, capsys):
    from ptychodus_ptychopinn_torch.data.io import save_training_npz
    from ptychodus_ptychopinn_torch.simulate import simulate_scan

    data = save_training_npz(tmp_path / "n128.npz",
                             simulate_scan(num_positions=4, N=128, seed=1).reconstruct_input)
    argv = ["reconstruct", str(data), "--model", str(untrained_model),
            "--out", str(tmp_path / "r.npz")]
    assert cli.main(argv) == 2
    line = _one_clear_line(capsys)
    assert "64x64" in line and "128x128" in line


def test_train_data_not_a_scan(tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an npz")
    assert cli.main(["train", str(junk), "--out", str(tmp_path / "o")]) == 2
    assert "junk.npz" in _one_clear_line(capsys)


def test_train_gridsize_too_large_for_the_scan(npz_path, tmp_path, capsys):
    assert cli.main(["train", str(npz_path), "--out", str(tmp_path / "o"), "--gridsize", "5"]) == 2
    assert "gridsize" in _one_clear_line(capsys)


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_check", interrupted)
    assert cli.main(["check"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_verbose_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        cli.main(["-v", "train", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o")])


def test_train_refuses_an_npz_whose_diffraction_cannot_be_told(npz_path, tmp_path, capsys):
    import numpy as np

    with np.load(npz_path) as data:
        arrays = dict(data)
    arrays["diff3d"] = arrays["diff3d"] * 0.37  # scaled intensities: neither counts nor amplitudes
    scaled = tmp_path / "scaled.npz"
    np.savez(scaled, **arrays)
    out = tmp_path / "o"
    assert cli.main(["train", str(scaled), "--out", str(out)]) == 2
    line = _one_clear_line(capsys)
    assert "scaled.npz: cannot tell whether 'diff3d' holds raw counts" in line
    assert "--diffraction counts|amplitudes" in line
    assert not out.exists()
