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


def test_train_learning_and_network_start_options_map_to_config_fields():
    from ptychodus_ptychopinn_torch.config import (
        BORDER_ACTIVATIONS,
        NORMALIZATIONS,
        OBJECT_INITS,
        SUPERVISED_LABELS,
        ModelConfig,
        TrainingConfig,
    )

    parser = cli.build_parser()
    args = parser.parse_args(["train", "d", "--out", "o"])
    model, training = cli._train_configs(args, 64)
    default_model, default_training = ModelConfig(), TrainingConfig()
    for name in ("border_activation", "object_init", "normalization"):
        assert getattr(model, name) == getattr(default_model, name), name
    for name in ("learning_rate", "scheduler", "lr_warmup_epochs", "lr_min_ratio", "supervised_labels"):
        assert getattr(training, name) == getattr(default_training, name), name
    assert training.model is model and (model.N, training.nepochs) == (64, 50)

    border = next(c for c in BORDER_ACTIVATIONS if c != default_model.border_activation)
    init = next(c for c in OBJECT_INITS if c != default_model.object_init)
    norm = next(c for c in NORMALIZATIONS if c != default_model.normalization)
    labels = next(c for c in SUPERVISED_LABELS if c != default_training.supervised_labels)
    args = parser.parse_args([
        "train", "d", "--out", "o", "--learning-rate", "2e-4", "--scheduler", "WarmupCosine",
        "--lr-warmup-epochs", "3", "--lr-min-ratio", "0.05", "--border-activation", border,
        "--object-init", init, "--normalization", norm, "--labels", labels,
    ])
    model, training = cli._train_configs(args, 128)
    assert (model.N, model.border_activation, model.object_init, model.normalization) == (
        128, border, init, norm)
    assert (training.learning_rate, training.scheduler, training.lr_warmup_epochs,
            training.lr_min_ratio) == (2e-4, "WarmupCosine", 3, 0.05)
    assert training.supervised_labels == labels
    for scheduler in ("Default", "Exponential", "ReduceLROnPlateau"):
        args = parser.parse_args(["train", "d", "--out", "o", "--scheduler", scheduler])
        assert cli._train_configs(args, 64)[1].scheduler == scheduler


def test_train_help_names_the_choices_and_dataclass_defaults(capsys):
    from ptychodus_ptychopinn_torch.config import SCHEDULERS, ModelConfig, TrainingConfig

    assert cli.main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--learning-rate", "--scheduler", "--lr-warmup-epochs", "--lr-min-ratio",
                 "--border-activation", "--object-init", "--normalization", "--labels"):
        assert flag in text
    assert "{" + ",".join(SCHEDULERS) + "}" in text
    assert f"(default: {TrainingConfig().scheduler})" in text
    assert f"(default: {ModelConfig().border_activation})" in text
    assert f"(default: {ModelConfig().object_init})" in text
    assert f"(default: {ModelConfig().normalization})" in text
    assert f"(default: {TrainingConfig().supervised_labels})" in text


@pytest.mark.parametrize(("flags", "wrong"), [
    (["--lr-warmup-epochs", "2"], "--lr-warmup-epochs"),
    (["--lr-min-ratio", "0.5", "--scheduler", "Exponential"], "--lr-min-ratio"),
])
def test_warmup_cosine_options_without_that_scheduler_are_an_error(flags, wrong, tmp_path,
                                                                    capsys):
    missing = tmp_path / "no-such-data.npz"  # the check comes before the data are read
    assert cli.main(["train", str(missing), "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    assert wrong in err and "--scheduler WarmupCosine" in err and "no-such-data" not in err


def test_reconstruct_and_demo_options(capsys):
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
    assert args.stitch_weight_exponent == InferenceConfig().stitch_weight_exponent
    args = parser.parse_args(["reconstruct", "d", "--model", "m", "--out", "o.npz",
                              "--stitch-weight-exponent", "3"])
    assert args.stitch_weight_exponent == 3.0
    args = parser.parse_args(["reconstruct", "d", "--model", "m", "--out", "o.npz",
                              "--stitch-weight-exponent", "AUTO"])
    assert args.stitch_weight_exponent is None
    for bad in ("0", "-2", "17", "sharp"):
        with pytest.raises(SystemExit):
            parser.parse_args(["reconstruct", "d", "--model", "m", "--out", "o.npz",
                               "--stitch-weight-exponent", bad])
    assert "'auto' or a number in (0, 16]" in capsys.readouterr().err
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


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--border-activation", "tanh"], "invalid choice: 'tanh'"),
        (["--object-init", "zeros"], "invalid choice: 'zeros'"),
        (["--scheduler", "Cosine"], "invalid choice: 'Cosine'"),
        (["--learning-rate", "0"], "expected a positive number, got '0'"),
        (["--learning-rate", "fast"], "expected a positive number, got 'fast'"),
        (["--learning-rate", "nan"], "expected a positive number, got 'nan'"),
        (["--lr-warmup-epochs", "-1"], "expected a non-negative integer, got '-1'"),
        (["--lr-warmup-epochs", "1.5"], "expected a non-negative integer, got '1.5'"),
        (["--lr-min-ratio", "1.5"], "expected a number from 0 to 1, got '1.5'"),
        (["--lr-min-ratio", "-0.1"], "expected a number from 0 to 1, got '-0.1'"),
    ],
)
def test_bad_train_option_values_are_usage_errors(flags, message, capsys):
    assert cli.main(["train", "d", "--out", "o", *flags]) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and flags[0] in err and message in err


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


@pytest.mark.parametrize("command", [["train", "d", "--out", "o"],
                                     ["reconstruct", "d", "--model", "m", "--out", "r.npz"]])
def test_diffraction_option(command, capsys):
    parser = cli.build_parser()
    assert parser.parse_args(command).diffraction == "auto"
    for value in ("counts", "amplitudes"):
        assert parser.parse_args([*command, "--diffraction", value]).diffraction == value
    assert cli.main([*command, "--diffraction", "intensity"]) == 2
    assert "invalid choice: 'intensity'" in capsys.readouterr().err
