"""train -> reconstruct through the command line on tiny scans (NPZ and HDF5 pair), and the
demo. Slow: each trains a small network for one epoch on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ptychodus_ptychopinn_torch import cli

pytestmark = pytest.mark.slow

TINY = ["--epochs", "1", "--n-filters-scale", "1", "--batch-size", "16", "--device", "cpu",
        "--seed", "0"]


def _train_and_reconstruct(data, tmp_path, capsys, expected_shape):
    out = tmp_path / "run"
    assert cli.main(["train", str(data), "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1" in printed and "train loss" in printed and "val loss" in printed
    assert (out / "model.ckpt").is_file()
    history = json.loads((out / "history.json").read_text())
    assert history["epochs"] == [1]
    assert len(history["train_loss"]) == 1 and len(history["val_loss"]) == 1
    assert all(np.isfinite(history["train_loss"] + history["val_loss"]))

    result = tmp_path / "recon" / "object.npz"
    argv = ["reconstruct", str(data), "--model", str(out / "model.ckpt"), "--out", str(result),
            "--device", "cpu", "--batch-size", "8"]
    assert cli.main(argv) == 0
    assert str(result) in capsys.readouterr().out
    with np.load(result) as npz:
        obj = npz["object"]
        assert obj.dtype == np.complex64 and obj.shape == expected_shape
        assert np.all(np.isfinite(obj)) and np.any(obj != 0)
        assert npz["object_x_px"].shape == npz["object_y_px"].shape == (32,)
    # a directory holding model.ckpt works as --model too
    assert cli.main([*argv[:2], "--model", str(out), "--out", str(result)]) == 0


def test_train_then_reconstruct_npz(npz_path, simulated32, tmp_path, capsys):
    shape = simulated32.product.object_.get_array().shape[-2:]
    _train_and_reconstruct(npz_path, tmp_path, capsys, shape)


def test_train_then_reconstruct_hdf5_pair(h5_dir, simulated32, tmp_path, capsys):
    shape = simulated32.product.object_.get_array().shape[-2:]
    _train_and_reconstruct(h5_dir, tmp_path, capsys, shape)


def test_supervised_training_on_refined_labels(npz_path, tmp_path, capsys):
    """``train --mode supervised --labels refined``: trains, and the model file says where its
    labels came from."""
    from ptychodus_ptychopinn_torch.checkpoint import load_model

    out = tmp_path / "run"
    assert cli.main(["train", str(npz_path), "--out", str(out), *TINY, "--mode", "supervised",
                     "--labels", "refined"]) == 0
    assert "epoch 1/1" in capsys.readouterr().out
    bundle = load_model(out / "model.ckpt")
    assert bundle.training_config.supervised_labels == "refined"
    assert bundle.provenance["supervised_labels"]["source"] == "refined"


def test_demo_writes_figure_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--epochs", "1", "--positions", "32", "--device", "cpu"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "amplitude_ssim" in printed and "flat_amplitude_ssim" in printed
    assert (out / "demo.png").stat().st_size > 10_000
    assert (out / "model.ckpt").is_file()
    document = json.loads((out / "metrics.json").read_text())
    metrics = document["metrics"]
    for key in ("amplitude_ssim", "phase_ssim", "amplitude_psnr", "phase_psnr",
                "frc_half_bit_px", "frc_1_7_px", "flat_amplitude_ssim"):
        assert key in metrics
    assert -1.0 <= metrics["amplitude_ssim"] <= 1.0
    assert set(document["timings_s"]) >= {"simulate", "train", "reconstruct", "evaluate", "total"}
    assert document["settings"]["positions"] == 32 and document["settings"]["epochs"] == 1
    assert len(document["history"]["train_loss"]) == 1
