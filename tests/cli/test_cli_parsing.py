"""Argument parsing, the lazy-import promise and the check command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ptychodus_ptychopinn_torch import cli


def test_module_import_does_not_load_torch():
    code = ("import sys, ptychodus_ptychopinn_torch.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_train_defaults_and_options():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "data.npz", "--out", "run"])
    assert (args.command, args.data, args.out) == ("train", "data.npz", "run")
    assert (args.epochs, args.gridsize, args.batch_size, args.n_groups) == (50, 1, 16, None)
    assert (args.device, args.seed, args.mode, args.n_filters_scale, args.precision) == (
        "auto", 42, "pinn", 2, "32-true")
    args = parser.parse_args([
        "train", "d", "--out", "o", "--epochs", "3", "--gridsize", "2", "--batch-size", "8",
        "--n-groups", "100", "--device", "cpu", "--seed", "7", "--mode", "supervised",
        "--n-filters-scale", "1", "--precision", "bf16-mixed",
    ])
    assert (args.epochs, args.gridsize, args.batch_size, args.n_groups, args.device) == (
        3, 2, 8, 100, "cpu")
    assert (args.seed, args.mode, args.n_filters_scale, args.precision) == (
        7, "supervised", 1, "bf16-mixed")


def test_reconstruct_and_demo_options():
    parser = cli.build_parser()
    args = parser.parse_args(["reconstruct", "d", "--model", "m.ckpt", "--out", "o.npz",
                              "--device", "cpu", "--batch-size", "32"])
    assert (args.model, args.out, args.device, args.batch_size) == ("m.ckpt", "o.npz", "cpu", 32)
    from ptychodus_ptychopinn_torch.config import InferenceConfig

    assert (args.refine_iterations, args.refine_probe) == (
        InferenceConfig().refine_iterations, False)
    args = parser.parse_args(["reconstruct", "d", "--model", "m", "--out", "o.npz",
                              "--refine-iterations", "0"])
    assert (args.refine_iterations, args.refine_probe) == (0, False)
    args = parser.parse_args(["reconstruct", "d", "--model", "m", "--out", "o.npz",
                              "--refine-iterations", "7", "--refine-probe"])
    assert (args.refine_iterations, args.refine_probe) == (7, True)
    args = parser.parse_args(["demo"])
    assert (args.epochs, args.positions, args.gridsize, args.seed) == (
        cli.DEMO_EPOCHS, cli.DEMO_POSITIONS, 1, 0)
    args = parser.parse_args(["demo", "--out", "x", "--epochs", "2", "--positions", "64",
                              "--gridsize", "2", "--seed", "3"])
    assert (args.out, args.epochs, args.positions, args.gridsize, args.seed) == ("x", 2, 64, 2, 3)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["train", "d"],  # --out missing
        ["train", "d", "--out", "o", "--epochs", "0"],
        ["train", "d", "--out", "o", "--device", "tpu"],
        ["train", "d", "--out", "o", "--mode", "magic"],
        ["reconstruct", "d", "--out", "o.npz"],  # --model missing
        ["demo", "--positions", "-3"],
        ["reconstruct", "d", "--model", "m", "--out", "o.npz", "--refine-iterations", "-1"],
        ["reconstruct", "d", "--model", "m", "--out", "o.npz", "--refine-iterations", "many"],
        ["reconstruct", "d", "--model", "m", "--out", "o.npz", "--refine-probe", "yes"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert cli.main(["--help"]) == 0
    assert "reconstruct" in capsys.readouterr().out


def test_check_runs(capsys):
    assert cli.main(["check", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for word in ("ptychodus-ptychopinn-torch", "python", "torch", "lightning", "ptychodus",
                 "numpy", "CUDA", "device"):
        assert word in out
    assert "CPU requested" in out


def test_check_auto_says_which_device_and_why(capsys):
    import torch

    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("device"))
    assert ("CUDA device" in line) if torch.cuda.is_available() else ("CPU fallback" in line)


def test_check_cuda_without_gpu_fails_clearly(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is available here")
    assert cli.main(["check", "--device", "cuda"]) == 1
    assert "would fail" in capsys.readouterr().out
