"""``ptychopinn-torch``: train, reconstruct, a self-contained demo, and an environment check.

    ptychopinn-torch check
    ptychopinn-torch demo [--out DIR] [--epochs N] [--positions M] [--gridsize G] [--seed S]
    ptychopinn-torch train DATA --out DIR [--epochs N] [--gridsize G] [--batch-size B]
                          [--learning-rate X] [--scheduler S] [--lr-warmup-epochs N]
                          [--lr-min-ratio X] [--border-activation A] [--object-init I]
                          [--diffraction auto|counts|amplitudes] ...
    ptychopinn-torch reconstruct DATA --model MODEL --out OUT.npz [--device D] [--batch-size B]
                                [--refine-iterations N] [--refine-probe]
                                [--diffraction auto|counts|amplitudes]

DATA is a Ptychodus training-data NPZ, or a directory holding ``train_data.npz`` or
``diffraction.h5`` + ``product.h5``. Nothing heavy is imported at module level (torch and
Lightning load inside the commands), so ``--help`` is instant. Bad input prints one line to
stderr and exits with 2; an interrupt exits with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["main", "build_parser"]

PROG = "ptychopinn-torch"
MODEL_FILE_NAME = "model.ckpt"
HISTORY_FILE_NAME = "history.json"

#: Demo defaults, sized to finish in a few minutes on 2 CPU cores (N = 64).
DEMO_POSITIONS = 256
DEMO_EPOCHS = 40
DEMO_BATCH_SIZE = 4
DEMO_FILTER_SCALE = 1
DEMO_PHOTONS = 1e5
DEMO_OBJECT = "photo:brick/gravel"


# ----------------------------------------------------------------------------- plumbing
def _int_at_least(minimum: int, what: str):
    """An argparse type for integers >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "a non-negative integer")


def _float_in(test, what: str):
    """An argparse type for finite floats that pass ``test``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_float = _float_in(lambda v: v > 0, "a positive number")
_unit_fraction = _float_in(lambda v: 0.0 <= v <= 1.0, "a number from 0 to 1")
_stitch_exponent_number = _float_in(lambda v: 0.0 < v <= 16.0, "'auto' or a number in (0, 16]")


def _stitch_exponent(text: str) -> float | None:
    """``auto`` (None: by the model's type) or an exponent in (0, 16]."""
    return None if text.strip().lower() == "auto" else _stitch_exponent_number(text)


@contextlib.contextmanager
def _console_logging(verbose: bool) -> Iterator[None]:
    """Package INFO logs with ``-v``, else warnings only; no Lightning chatter.

    Restores the previous logging and warning state afterwards, so calling `main` from a script
    or a test leaves the process as it was.
    """
    level = logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    package = logging.getLogger("ptychodus_ptychopinn_torch")
    # Lightning sets its package loggers to INFO when it is imported (later, inside a command),
    # so the levels go on the child loggers its "GPU available" / "Tip" lines come from. The
    # device warning is dropped too: every command prints the device and the reason itself.
    noisy = [logging.getLogger(name) for name in (
        "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
        "pytorch_lightning.utilities.rank_zero", "ptychodus_ptychopinn_torch.device",
    )]
    # The commands print each epoch and the training summary themselves (`_EpochPrinter`,
    # `_training_summary`); the engine's own epoch lines would repeat them under -v.
    printed_here = logging.getLogger("ptychodus_ptychopinn_torch.training")
    saved = (package.level, package.propagate, [lg.level for lg in noisy], printed_here.level)
    package.addHandler(handler)
    package.setLevel(level)
    package.propagate = False
    for lg in noisy:
        lg.setLevel(logging.INFO if verbose else logging.ERROR)
    printed_here.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            if not verbose:
                warnings.filterwarnings("ignore", module=r"lightning(\..*)?")
                warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
            yield
    finally:
        package.removeHandler(handler)
        package.setLevel(saved[0])
        package.propagate = saved[1]
        for lg, old in zip(noisy, saved[2]):
            lg.setLevel(old)
        printed_here.setLevel(saved[3])


#: Loggers whose warnings end up in `Reconstruction.warnings` (printed in the summary line).
_REFINEMENT_LOGGERS = ("ptychodus_ptychopinn_torch.workflows.engine",
                       "ptychodus_ptychopinn_torch.refinement")


class _HeldWarnings(logging.Filter):
    """Holds back the WARNING records of a logger while a reconstruction runs.

    The engine both logs its warnings and returns them in ``Reconstruction.warnings``; the
    commands print them once, in the refinement summary line, and re-log only the others.
    """

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING:
            self.held.append(record)
            return False
        return True


@contextlib.contextmanager
def _refinement_warnings_held(printed: list[str]) -> Iterator[None]:
    """Hold back engine warnings; on exit re-log those not in ``printed`` (filled by the caller)."""
    filters = [(logging.getLogger(name), _HeldWarnings()) for name in _REFINEMENT_LOGGERS]
    for lg, flt in filters:
        lg.addFilter(flt)
    try:
        yield
    finally:
        for lg, flt in filters:
            lg.removeFilter(flt)
        for lg, flt in filters:
            for record in flt.held:
                if record.getMessage() not in printed:
                    lg.handle(record)


class _Collected(logging.Handler):
    """Keeps the messages of one logger for the command to print."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _load_scan(data: str | Path, diffraction: str) -> Any:
    """`load_scan`, printing which reading of an NPZ's ``diff3d`` (counts or amplitudes) it used.

    The line goes to stdout with the command's other progress lines, not through the log, so
    bad input stays one line on stderr.
    """
    from .data.io import load_scan

    io_logger = logging.getLogger("ptychodus_ptychopinn_torch.data.io")
    collected = _Collected()
    saved = (io_logger.level, io_logger.propagate)
    io_logger.setLevel(logging.INFO)
    io_logger.propagate = False
    io_logger.addHandler(collected)
    try:
        scan = load_scan(data, diffraction=diffraction)
    finally:
        io_logger.removeHandler(collected)
        io_logger.setLevel(saved[0])
        io_logger.propagate = saved[1]
    for message in collected.messages:
        print(message, flush=True)
    return scan


def _write_json(path: Path, data: Any) -> None:
    """Write strict JSON (non-finite floats become null) via a temporary file."""
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(clean(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _fmt_loss(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.6g}"


class _EpochPrinter:
    """Prints one line per epoch and keeps each epoch's wall time for history.json."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.epoch_seconds: list[float] = []

    def __call__(self, report: Any) -> None:
        elapsed = time.perf_counter() - self.start
        self.epoch_seconds.append(round(elapsed - sum(self.epoch_seconds), 3))
        width = len(str(report.num_epochs))
        print(
            f"epoch {report.epoch:>{width}}/{report.num_epochs}  "
            f"train loss {_fmt_loss(report.train_loss)}  val loss {_fmt_loss(report.val_loss)}  "
            f"({elapsed:.1f} s)",
            flush=True,
        )


def _training_summary(bundle: Any, seconds: float) -> str:
    """One line after training: epochs, time, last losses and the epoch whose weights were kept
    (the lowest validation loss, or training loss without validation, as the engine keeps)."""
    train = [float(v) for v in bundle.history.get("train_loss", [])]
    val = [float(v) for v in bundle.history.get("val_loss", [])]
    planned = bundle.training_config.nepochs
    line = f"trained {len(train)} of {planned} epochs in {seconds:.1f} s"
    if len(train) < planned:
        line += " (stopped early: the validation loss stopped improving)"
    scores, name = (val, "val loss") if val else (train, "train loss")
    finite = [(v, i) for i, v in enumerate(scores) if math.isfinite(v)]
    if finite:
        best, index = min(finite)
        line += f"; kept the weights of epoch {index + 1} ({name} {_fmt_loss(best)})"
    return line


def _history_document(bundle: Any, printer: _EpochPrinter, seconds: float) -> dict[str, Any]:
    train = [float(v) for v in bundle.history.get("train_loss", [])]
    val = [float(v) for v in bundle.history.get("val_loss", [])]
    return {
        "epochs": list(range(1, len(train) + 1)),
        "train_loss": train,
        "val_loss": val,
        "epoch_seconds": printer.epoch_seconds,
        "training_seconds": round(seconds, 3),
    }


def _execution(device: str, *, seed: int = 42, precision: str = "32-true",
               inference_batch_size: int | None = None) -> Any:
    from .config import ExecutionConfig

    return ExecutionConfig(accelerator=device, seed=seed, precision=precision,
                           inference_batch_size=inference_batch_size)


def _describe_device(execution: Any) -> str:
    """Which device the engine will use and why (the CLI prints this instead of a warning)."""
    from .device import resolve_device

    device_logger = logging.getLogger("ptychodus_ptychopinn_torch.device")
    level = device_logger.level
    device_logger.setLevel(logging.ERROR)
    try:
        device, reason = resolve_device(execution)
    finally:
        device_logger.setLevel(level)
    if device.type == "cpu" and execution.accelerator == "auto":
        reason += " -- WARNING: CPU only, much slower than a GPU"
    return reason


# ----------------------------------------------------------------------------- check
def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def _cmd_check(args: argparse.Namespace) -> int:
    from . import __version__

    print(f"ptychodus-ptychopinn-torch {__version__}")
    print(f"python     {sys.version.split()[0]} ({sys.executable})")
    for name in ("numpy", "ptychodus", "lightning"):
        print(f"{name:<10} {_version(name)}")
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - report any broken install
        print(f"torch      not importable: {exc}")
        return 1
    print(f"torch      {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})")
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    print(f"CUDA       {'available' if available else 'not available'}, {count} device(s)")
    for index in range(count):
        props = torch.cuda.get_device_properties(index)
        print(f"  cuda:{index}  {props.name}, {props.total_memory / 2**30:.1f} GiB, "
              f"compute capability {props.major}.{props.minor}")
    print(f"threads    {torch.get_num_threads()} CPU threads for torch")
    try:
        reason = _describe_device(_execution(args.device))
    except (RuntimeError, ValueError) as exc:
        print(f"device     --device {args.device} would fail: {exc}")
        return 1
    print(f"device     --device {args.device} -> {reason}")
    return 0


# ----------------------------------------------------------------------------- train
def _schedule_options(args: argparse.Namespace) -> dict[str, Any]:
    """The learning-rate options of ``train`` as TrainingConfig fields.

    ``--lr-warmup-epochs`` and ``--lr-min-ratio`` shape only the WarmupCosine schedule; given
    with another scheduler they would be ignored, so that is an error. Options left out keep
    the dataclass defaults.
    """
    given = [flag for flag, value in (("--lr-warmup-epochs", args.lr_warmup_epochs),
                                      ("--lr-min-ratio", args.lr_min_ratio)) if value is not None]
    if given and args.scheduler != "WarmupCosine":
        raise ValueError(f"{' and '.join(given)} only apply with --scheduler WarmupCosine "
                         f"(got --scheduler {args.scheduler})")
    options: dict[str, Any] = {"learning_rate": args.learning_rate, "scheduler": args.scheduler}
    if args.lr_warmup_epochs is not None:
        options["lr_warmup_epochs"] = args.lr_warmup_epochs
    if args.lr_min_ratio is not None:
        options["lr_min_ratio"] = args.lr_min_ratio
    return options


def _train_configs(args: argparse.Namespace, N: int, data: Path | None = None,  # noqa: N803
                   out: Path | None = None) -> tuple[Any, Any]:
    """``(ModelConfig, TrainingConfig)`` of a ``train`` command line, for patterns of size N."""
    from .config import ModelConfig, TrainingConfig

    model = ModelConfig(N=N, gridsize=args.gridsize, n_filters_scale=args.n_filters_scale,
                        model_type=args.mode, border_activation=args.border_activation,
                        object_init=args.object_init, normalization=args.normalization)
    extra = {"output_dir": out} if out is not None else {}
    training = TrainingConfig(model=model, train_data_file=data, nepochs=args.epochs,
                              batch_size=args.batch_size, n_groups=args.n_groups,
                              supervised_labels=args.supervised_labels,
                              **_schedule_options(args), **extra)
    return model, training


def _cmd_train(args: argparse.Namespace) -> int:
    data = Path(args.data)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    _schedule_options(args)  # a misplaced option fails before the data are read
    scan = _load_scan(data, args.diffraction)
    model, training = _train_configs(args, scan.N, data, out)
    execution = _execution(args.device, seed=args.seed, precision=args.precision)
    scan.validate(N=model.N, gridsize=model.gridsize, neighbor_count=training.neighbor_count)
    reason = _describe_device(execution)

    from .checkpoint import save_model
    from .workflows.engine import train_model

    print(f"training {args.mode} on {scan.num_positions} patterns of {scan.N}x{scan.N} from "
          f"{data}: gridsize {args.gridsize}, {args.epochs} epochs, batch {args.batch_size}, "
          f"learning rate {training.learning_rate:g} ({training.scheduler}); {reason}",
          flush=True)
    printer = _EpochPrinter()
    bundle = train_model(scan, training, execution, on_epoch=printer)
    seconds = time.perf_counter() - printer.start
    print(_training_summary(bundle, seconds), flush=True)
    model_path = save_model(bundle, out / MODEL_FILE_NAME)
    history_path = out / HISTORY_FILE_NAME
    _write_json(history_path, _history_document(bundle, printer, seconds))
    print(f"wrote {model_path} and {history_path} ({seconds:.1f} s)")
    return 0


# ----------------------------------------------------------------------------- reconstruct
def _cmd_reconstruct(args: argparse.Namespace) -> int:
    import numpy as np

    from .checkpoint import load_model
    from .config import InferenceConfig

    out = Path(args.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out must name an .npz file, got {out}")
    model_path = Path(args.model)
    if model_path.is_dir():
        model_path = model_path / MODEL_FILE_NAME
    bundle = load_model(model_path)
    scan = _load_scan(args.data, args.diffraction)
    model = bundle.model_config
    if scan.N != model.N:
        raise ValueError(
            f"{model_path} was trained on {model.N}x{model.N} patterns but {args.data} has "
            f"{scan.N}x{scan.N} patterns; use a model trained for N={scan.N}"
        )
    inference = InferenceConfig(model=model, model_path=model_path, test_data_file=Path(args.data),
                                neighbor_count=bundle.training_config.neighbor_count,
                                refine_iterations=args.refine_iterations,
                                refine_probe=args.refine_probe,
                                stitch_weight_exponent=args.stitch_weight_exponent)
    try:
        scan.validate(N=model.N, gridsize=model.gridsize, neighbor_count=inference.neighbor_count)
    except ValueError as exc:
        raise ValueError(f"{args.data} does not suit {model_path} (gridsize "
                         f"{model.gridsize}): {exc}") from None
    execution = _execution(args.device, inference_batch_size=args.batch_size)
    reason = _describe_device(execution)

    from .workflows.engine import reconstruct_object

    refine = (f", then {inference.refine_iterations} refinement passes"
              f"{' (object and probe)' if inference.refine_probe else ''}"
              if inference.refine_iterations else ", network only")
    print(f"reconstructing {scan.num_positions} patterns with {model_path}{refine}; {reason}",
          flush=True)
    printed: list[str] = []
    with _refinement_warnings_held(printed):
        result = reconstruct_object(bundle, scan, inference, execution)
        printed.extend(result.warnings)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **_reconstruction_arrays(result))
    os.replace(tmp, out)
    print(_refinement_line(result))
    height, width = result.object.shape
    print(f"wrote {out}: object {height}x{width} complex64 ({result.seconds:.1f} s)")
    return 0


def _reconstruction_arrays(result: Any) -> dict[str, Any]:
    """The arrays of the reconstruct NPZ (see specs/workflow-contract.md, section 4).

    ``network_object`` is the stitched network output before refinement (the same array as
    ``object`` with 0 passes); ``refinement_losses`` the Poisson NLL of each pass (empty with
    0 passes); ``probe`` is written only when the probe was refined.
    """
    import numpy as np

    network = result.network_object if result.network_object is not None else result.object
    losses = result.refinement.losses if result.refinement is not None else []
    arrays = {
        "object": np.asarray(result.object, dtype=np.complex64),
        "object_x_px": np.asarray(result.object_x_px, dtype=np.float64),
        "object_y_px": np.asarray(result.object_y_px, dtype=np.float64),
        "coverage": np.asarray(result.coverage, dtype=np.float32),
        "network_object": np.asarray(network, dtype=np.complex64),
        "refinement_losses": np.asarray(losses, dtype=np.float64).reshape(-1),
    }
    if result.probe is not None:
        arrays["probe"] = np.asarray(result.probe, dtype=np.complex64)
    return arrays


def _refinement_line(result: Any) -> str:
    """One line: the Poisson NLL before and after refinement, passes, seconds, warnings."""
    summary = result.refinement
    if summary is None:
        line = "refinement: none"
    elif summary.iterations == 0:
        line = (f"refinement: off (--refine-iterations 0); Poisson NLL "
                f"{_fmt_loss(summary.final_loss)} (flat object {_fmt_loss(summary.flat_loss)})")
    else:
        line = (f"refinement: Poisson NLL {_fmt_loss(summary.network_loss)} (network) -> "
                f"{_fmt_loss(summary.final_loss)} after {summary.passes_run}/{summary.iterations} "
                f"passes in {summary.seconds:.1f} s (flat object {_fmt_loss(summary.flat_loss)})")
    if result.warnings:
        line += "; WARNING: " + "; WARNING: ".join(result.warnings)
    return line


# ----------------------------------------------------------------------------- demo
def _display_standardized(obj: Any, truth: Any, coverage: Any) -> Any:
    """The reconstruction with its global complex scale fitted to the truth (display only).

    The scale is fitted where the scan overlaps well (coverage at least half its maximum), and
    pixels the scan barely touched are blanked, so the faint rim cannot skew the colours.
    """
    import numpy as np

    peak = float(np.max(coverage)) if np.size(coverage) else 0.0
    fit = coverage >= 0.5 * peak
    shown_mask = coverage >= 0.1 * peak
    denominator = np.sum(np.abs(truth[fit]) ** 2)
    scale = np.sum(obj[fit] * np.conj(truth[fit])) / denominator if denominator else 1.0
    shown = obj / scale if abs(scale) > 0 else obj
    return np.where(shown_mask, shown, np.nan)


def _plot_demo(path: Path, truth: Any, reconstruction: Any, bundle: Any, metrics: dict,
               network_metrics: dict) -> None:
    """Truth, network output and refined object side by side (amplitude and phase rows), the
    loss curves (training epochs, then refinement passes) and both sets of scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    network = reconstruction.network_object if reconstruction.network_object is not None \
        else reconstruction.object
    refined = _display_standardized(reconstruction.object, truth, reconstruction.coverage)
    net_shown = np.where(np.isfinite(refined), _display_standardized(network, truth, reconstruction.coverage),
                         np.nan)
    truth_shown = np.where(np.isfinite(refined), truth, np.nan)  # the same (scanned) area
    amp_range = (float(np.min(np.abs(truth))), float(np.max(np.abs(truth))))
    phase_range = (float(np.min(np.angle(truth))), float(np.max(np.angle(truth))))
    passes = reconstruction.refinement.passes_run if reconstruction.refinement is not None else 0
    fig, axes = plt.subplots(2, 4, figsize=(18, 8), constrained_layout=True)
    columns = [
        (truth_shown, "truth", None),
        (net_shown, "network", network_metrics),
        (refined, f"network + {passes} refinement passes", metrics),
    ]
    for col, (image, name, scores) in enumerate(columns):
        for row, (part, label, (lo, hi), cmap, key) in enumerate((
                (np.abs, "amplitude", amp_range, "gray", "amplitude_ssim"),
                (np.angle, "phase (rad)", phase_range, "twilight", "phase_ssim"))):
            ax = axes[row, col]
            handle = ax.imshow(part(image), vmin=lo, vmax=hi, cmap=cmap)
            title = f"{name}: {label}"
            if scores is not None:
                title += f"\nSSIM {scores[key]:.3f}"
            ax.set_title(title)
            ax.set_axis_off()
            fig.colorbar(handle, ax=ax, shrink=0.8)

    ax = axes[0, 3]
    train = bundle.history.get("train_loss", [])
    val = bundle.history.get("val_loss", [])
    if train:
        ax.plot(range(1, len(train) + 1), train, "o-", label="training (per epoch)")
    if val:
        ax.plot(range(1, len(val) + 1), val, "s--", label="validation")
    if reconstruction.refinement is not None and reconstruction.refinement.losses:
        losses = reconstruction.refinement.losses
        x0 = len(train) + 1
        ax.plot(np.linspace(x0, x0 + 2, len(losses)), losses, "-", label=f"refinement ({len(losses)} passes)")
        ax.axhline(reconstruction.refinement.flat_loss, color="gray", ls=":", label="flat object")
    ax.set_yscale("log")
    ax.set_xlabel("epoch (refinement passes squeezed after the last epoch)")
    ax.set_ylabel("Poisson NLL per pixel")
    ax.set_title("losses")
    ax.legend(fontsize=8)

    ax = axes[1, 3]
    ax.set_axis_off()

    def row(name: str, key: str, fmt: str) -> str:
        return f"{name:<16}{network_metrics[key]:{fmt}}   {metrics[key]:{fmt}}"

    lines = [
        f"{'':<16}{'network':>7}   {'refined':>7}",
        row("amplitude SSIM", "amplitude_ssim", "7.3f"),
        row("phase SSIM", "phase_ssim", "7.3f"),
        row("amplitude PSNR", "amplitude_psnr", "7.2f"),
        row("phase PSNR", "phase_psnr", "7.2f"),
        row("FRC AUC", "frc_auc", "7.3f"),
        f"flat object: amplitude SSIM {metrics['flat_amplitude_ssim']:.3f}, "
        f"phase {metrics['flat_phase_ssim']:.3f}",
        "",
        "scored: scanned area only, after removing",
        "scale, phase offset/ramp and sub-pixel shift;",
        "shown: global scale and phase offset removed",
    ]
    ax.text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _verdict(metrics: dict) -> str:
    margin = metrics["amplitude_ssim"] - metrics["flat_amplitude_ssim"]
    if margin < 0.05:
        return ("amplitude NOT reconstructed: its SSIM is at the flat-object level; train longer "
                "(more --epochs) or on a GPU")
    return f"amplitude SSIM is {margin:.2f} above the flat-object level"


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import __version__
    from .config import ModelConfig, TrainingConfig
    from .evaluation import evaluate_object, format_metrics

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    execution = _execution(args.device, seed=args.seed)
    reason = _describe_device(execution)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    from .data.io import scan_from_reconstruct_input
    from .simulate import simulate_scan

    print(f"simulating {args.positions} positions (N=64, {DEMO_PHOTONS:.0e} photons per "
          f"pattern, object {args.object}, seed {args.seed})", flush=True)
    simulated = simulate_scan(num_positions=args.positions, N=64, seed=args.seed,
                              photons_per_pattern=DEMO_PHOTONS, obj=args.object)
    scan = scan_from_reconstruct_input(simulated.reconstruct_input)
    timings["simulate"] = time.perf_counter() - start

    # A narrow network and small batches: on a CPU, quality comes from optimisation steps
    # (docs/performance.md), and these settings reach a recognisable object in minutes.
    model = ModelConfig(N=64, gridsize=args.gridsize, n_filters_scale=DEMO_FILTER_SCALE)
    training = TrainingConfig(model=model, nepochs=args.epochs, n_groups=args.positions,
                              batch_size=DEMO_BATCH_SIZE, output_dir=out, subsample_seed=args.seed)
    scan.validate(N=64, gridsize=args.gridsize, neighbor_count=training.neighbor_count)

    from .checkpoint import save_model
    from .workflows.engine import reconstruct_object, train_model

    print(f"training for {args.epochs} epochs (gridsize {args.gridsize}); {reason}", flush=True)
    printer = _EpochPrinter()
    bundle = train_model(scan, training, execution, on_epoch=printer)
    timings["train"] = time.perf_counter() - printer.start
    print(_training_summary(bundle, timings["train"]), flush=True)

    from .config import InferenceConfig

    tic = time.perf_counter()
    printed: list[str] = []
    inference = InferenceConfig(model=bundle.model_config, refine_iterations=args.refine_iterations)
    with _refinement_warnings_held(printed):
        reconstruction = reconstruct_object(bundle, scan, inference, execution)
        printed.extend(reconstruction.warnings)
    timings["reconstruct"] = time.perf_counter() - tic
    if reconstruction.network_seconds is not None:
        timings["network_inference"] = reconstruction.network_seconds
    if reconstruction.refinement is not None:
        timings["refinement"] = reconstruction.refinement.seconds
    print(_refinement_line(reconstruction), flush=True)

    tic = time.perf_counter()
    metrics = evaluate_object(reconstruction.object, simulated.product,
                              positions_px=scan.positions_px)
    network = reconstruction.network_object if reconstruction.network_object is not None \
        else reconstruction.object
    network_metrics = evaluate_object(network, simulated.product, positions_px=scan.positions_px)
    timings["evaluate"] = time.perf_counter() - tic

    out.mkdir(parents=True, exist_ok=True)
    truth = simulated.product.object_.get_layers_flattened()
    _plot_demo(out / "demo.png", truth, reconstruction, bundle, metrics, network_metrics)
    save_model(bundle, out / MODEL_FILE_NAME)
    _write_json(out / HISTORY_FILE_NAME, _history_document(bundle, printer, timings["train"]))
    timings["total"] = time.perf_counter() - start
    verdict = _verdict(metrics)
    summary = reconstruction.refinement
    _write_json(out / "metrics.json", {
        "metrics": metrics,
        "network_metrics": network_metrics,
        "verdict": verdict,
        "refinement": None if summary is None else {
            "passes": summary.passes_run, "network_nll": summary.network_loss,
            "final_nll": summary.final_loss, "flat_nll": summary.flat_loss,
            "losses": summary.losses, "stopped_early": summary.stopped_early},
        "warnings": list(reconstruction.warnings),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "settings": {
            "positions": args.positions, "epochs": args.epochs, "gridsize": args.gridsize,
            "seed": args.seed, "N": 64, "photons_per_pattern": DEMO_PHOTONS, "object": args.object,
            "refine_iterations": args.refine_iterations,
            "n_filters_scale": model.n_filters_scale, "batch_size": training.batch_size,
            "border_activation": model.border_activation, "object_init": model.object_init,
            "normalization": model.normalization,
            "learning_rate": training.learning_rate, "scheduler": training.scheduler,
            "device": reason,
        },
        "history": {"train_loss": bundle.history.get("train_loss", []),
                    "val_loss": bundle.history.get("val_loss", [])},
        "package_version": __version__,
    })
    print()
    print("network alone:")
    print(format_metrics(network_metrics))
    print(f"network + {summary.passes_run if summary else 0} refinement passes:")
    print(format_metrics(metrics, describe=True))
    print(verdict)
    print(f"wrote {out / 'demo.png'}, {out / 'metrics.json'}, {out / MODEL_FILE_NAME} "
          f"({timings['total']:.0f} s in all)")
    return 0


# ----------------------------------------------------------------------------- parser
def _config_default(config_name: str, field_name: str) -> Any:
    """The default of ``<config_name>.<field_name>`` in config.py (which imports no torch)."""
    import dataclasses

    from . import config

    cls = getattr(config, config_name)
    return next(f.default for f in dataclasses.fields(cls) if f.name == field_name)


def _auto_stitch_rule() -> str:
    from .config import AUTO_STITCH_WEIGHT_RULE

    return AUTO_STITCH_WEIGHT_RULE


def _inference_default(field_name: str) -> Any:
    """InferenceConfig's default of ``field_name``."""
    return _config_default("InferenceConfig", field_name)


def _add_learning_options(train: argparse.ArgumentParser) -> None:
    """``train``'s learning-rate and network-start options (choices and defaults: config.py)."""
    from .config import BORDER_ACTIVATIONS, NORMALIZATIONS, OBJECT_INITS, SCHEDULERS, SUPERVISED_LABELS

    def default(name: str, config: str = "TrainingConfig") -> Any:
        return _config_default(config, name)

    train.add_argument("--learning-rate", type=_positive_float, metavar="X",
                       default=default("learning_rate"),
                       help=f"optimiser learning rate (default: {default('learning_rate'):g})")
    def choice(flag: str, choices: tuple[str, ...], name: str, config: str, text: str) -> None:
        """A choice option for config field ``name``; its help ends with the dataclass default."""
        train.add_argument(flag, choices=choices, dest=name, default=default(name, config),
                           help=f"{text} (default: {default(name, config)})")

    choice("--scheduler", SCHEDULERS, "scheduler", "TrainingConfig",
           "learning-rate schedule: Default = constant, Exponential = x0.95 per epoch, "
           "WarmupCosine = linear warm-up then cosine decay, ReduceLROnPlateau = reduce when the "
           "validation loss stalls")
    train.add_argument("--lr-warmup-epochs", type=_non_negative_int, default=None, metavar="N",
                       help="WarmupCosine only: epochs of linear warm-up to the learning rate "
                            f"(default: {default('lr_warmup_epochs')})")
    train.add_argument("--lr-min-ratio", type=_unit_fraction, default=None, metavar="X",
                       help="WarmupCosine only: final learning rate as a fraction of "
                            f"--learning-rate, 0 to 1 (default: {default('lr_min_ratio')})")
    choice("--border-activation", BORDER_ACTIVATIONS, "border_activation", "ModelConfig",
           "activation of the border path outside the central N/2 square: head = the central "
           "path's own, swish = PtychoPINN's SiLU")
    choice("--object-init", OBJECT_INITS, "object_init", "ModelConfig",
           "the untrained network's prediction: flat = uniform object, zero phase; random = "
           "Glorot-initialised output layers as PtychoPINN")
    choice("--labels", SUPERVISED_LABELS, "supervised_labels", "TrainingConfig",
           "--mode supervised's labels: object = the object in DATA (the true object); refined = "
           "the object the physics refinement reconstructs from DATA (200 passes from a flat "
           "start), no true object needed")
    choice("--normalization", NORMALIZATIONS, "normalization", "ModelConfig",
           "layer after every hidden convolution: batch = BatchNorm (fits supervised labels "
           "faster with --batch-size 16), none = PtychoPINN's network")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="PtychoPINN (PyTorch) for Ptychodus: train, reconstruct, demo, check.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show progress logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def device_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="compute device; auto uses CUDA when available (default: auto)")

    def diffraction_option(p: argparse.ArgumentParser) -> None:
        from .data.io import DIFFRACTION_CONVENTIONS

        p.add_argument("--diffraction", choices=DIFFRACTION_CONVENTIONS, default="auto",
                       help="what 'diff3d' of an NPZ holds: counts (Ptychodus's Export Training "
                            "Data) or amplitudes, their square roots (PtychoPINN's datasets); "
                            "auto decides from the values and stops when they cannot "
                            "(diffraction.h5 always holds counts; default: auto)")

    check = sub.add_parser("check", help="print versions, CUDA devices and the device to be used")
    device_option(check)
    check.set_defaults(func=_cmd_check)

    train = sub.add_parser("train", help="train a model on a scan; writes DIR/model.ckpt")
    train.add_argument("data", metavar="DATA",
                       help="training-data NPZ, or a directory with train_data.npz or "
                            "diffraction.h5 + product.h5")
    train.add_argument("--out", required=True, metavar="DIR",
                       help="output directory for model.ckpt and history.json")
    train.add_argument("--epochs", type=_positive_int, default=50, help="default: 50")
    train.add_argument("--gridsize", type=_positive_int, default=1,
                       help="patterns per group = gridsize**2 (default: 1)")
    train.add_argument("--batch-size", type=_positive_int, default=16, help="default: 16")
    train.add_argument("--n-groups", type=_positive_int, default=None, metavar="K",
                       help="number of training groups (default: one per scan position)")
    device_option(train)
    diffraction_option(train)
    train.add_argument("--seed", type=_non_negative_int, default=42, help="default: 42")
    train.add_argument("--mode", choices=("pinn", "supervised"), default="pinn",
                       help="pinn: unsupervised physics loss; supervised: fits labels, the "
                            "object in DATA or, with --labels refined, the refinement's "
                            "reconstruction of DATA (default: pinn)")
    train.add_argument("--n-filters-scale", type=_positive_int, default=2, metavar="F",
                       help="network width multiplier (default: 2)")
    train.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true",
                       help="bf16-mixed: bfloat16 autocast, on a GPU or on a CPU with AVX-512 BF16 "
                            "or AMX (about twice as fast there); default: 32-true")
    _add_learning_options(train)
    train.set_defaults(func=_cmd_train)

    rec = sub.add_parser("reconstruct", help="reconstruct the object of a scan with a model")
    rec.add_argument("data", metavar="DATA", help="scan data (as for train)")
    rec.add_argument("--model", required=True, metavar="MODEL",
                     help="model.ckpt, or the directory holding it")
    rec.add_argument("--out", required=True, metavar="OUT.npz",
                     help="output NPZ: object, object_x_px, object_y_px, coverage, "
                          "network_object, refinement_losses (and probe with --refine-probe)")
    device_option(rec)
    diffraction_option(rec)
    rec.add_argument("--batch-size", type=_positive_int, default=None,
                     help="inference batch size (default: automatic)")
    rec.add_argument("--refine-iterations", type=_non_negative_int,
                     default=_inference_default("refine_iterations"), metavar="N",
                     help="passes of physics refinement of the stitched object under the "
                          "Poisson likelihood of all patterns; 0 = network only (default: "
                          f"{_inference_default('refine_iterations')})")
    rec.add_argument("--refine-probe", action="store_true",
                     help="also refine the probe during the refinement passes; OUT.npz then "
                          "holds it as 'probe'")
    rec.add_argument("--stitch-weight-exponent", type=_stitch_exponent,
                     default=_inference_default("stitch_weight_exponent"), metavar="E",
                     help="average overlapping patches with weight (|probe| / max |probe|)**E; 2 = "
                          f"probe intensity, 3 sharper for supervised models; auto = {_auto_stitch_rule()} "
                          "(default: auto)")
    rec.set_defaults(func=_cmd_reconstruct)

    demo = sub.add_parser("demo", help="simulate a scan, train, reconstruct, score and plot")
    demo.add_argument("--out", default="ptychopinn-demo", metavar="DIR",
                      help="output directory (default: ./ptychopinn-demo)")
    demo.add_argument("--epochs", type=_positive_int, default=DEMO_EPOCHS,
                      help=f"default: {DEMO_EPOCHS}")
    demo.add_argument("--positions", type=_positive_int, default=DEMO_POSITIONS,
                      help=f"number of scan positions (default: {DEMO_POSITIONS})")
    demo.add_argument("--gridsize", type=_positive_int, default=1, help="default: 1")
    demo.add_argument("--seed", type=_non_negative_int, default=0, help="default: 0")
    demo.add_argument("--object", default=DEMO_OBJECT, metavar="KIND",
                      help="simulated object: 'textured', or 'photo:AMPLITUDE/PHASE[@MAX_RAD]' from "
                           f"scikit-image's sample photographs (default: {DEMO_OBJECT})")
    demo.add_argument("--refine-iterations", type=_non_negative_int,
                      default=_inference_default("refine_iterations"),
                      help="physics refinement passes after the network, 0 = network only "
                           f"(default: {_inference_default('refine_iterations')})")
    device_option(demo)
    demo.set_defaults(func=_cmd_demo)
    return parser


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split("\n")[0].split()) if isinstance(exc, RuntimeError) else text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input, 130 if interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error (argparse already printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        with _console_logging(args.verbose):
            return int(args.func(args))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        if args.verbose:
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if args.verbose:
            raise
        print(f"{PROG}: error: {_one_line(exc)} (run with --verbose for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
