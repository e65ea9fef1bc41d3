"""The Ptychodus `TrainableReconstructor` of PtychoPINN (PyTorch): ``PINN`` and ``Supervised``.

Runs in the Ptychodus process and never imports torch: each hook builds the config dataclasses
from the live settings (or from the loaded model), calls
``update_legacy_dict(params.cfg, config)`` first, then hands the heavy work to a worker
(`runner.JobRunner`, a spawned child by default). Failures are logged under the library logger
before they are re-raised, because the GUI shows no dialog for background failures.

Progress is counted in hundredths of an epoch (`STEPS_PER_EPOCH`), so the goal is positive,
the GUI shows a progress bar and a Stop button, and Ptychodus's numbered checkpoint files
(``product.000100.h5`` ...) sort in run order with the result last.

The result product's losses are the self-fit's epochs followed by the physics-refinement passes
(a pretrained model: the refinement passes, or its training history when refinement is off);
with ``refine_probe`` it holds the refined probe. The engine's warnings (e.g. a reconstruction
that fits the data worse than a flat object) reach the Ptychodus log exactly once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from contextlib import closing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy

from ptychodus.api.object import Object
from ptychodus.api.probe import ProbeSequence
from ptychodus.api.product import LossValue, Product
from ptychodus.api.reconstruct import (
    ReconstructInput,
    ReconstructOutput,
    TrainableReconstructor,
    TrainOutput,
)

from .. import params
from ..config import InferenceConfig, config_to_dict
from .inputs import DIFFRACTION_H5, TRAINING_NPZ, check_training_dir, pattern_size
from .modelfile import ModelFileInfo, read_model_file_info
from .protocol import TAG_EPOCH, TAG_PROGRESS, TAG_RESULT, TAG_STOPPED, ReconstructJob, TrainJob
from .runner import DEFAULT_ENTRY_POINT, LIBRARY_LOGGER, JobRunner
from .settings import Configs, PluginSettings, build_configs

__all__ = ["MODEL_FILE_NAME", "STEPS_PER_EPOCH", "PtychoPINNTorchReconstructor", "RunOptions"]

STEPS_PER_EPOCH = 100
MODEL_EXTENSION = ".ckpt"
MODEL_FILE_NAME = "model" + MODEL_EXTENSION
DEFAULT_N = 64


@dataclass
class RunOptions:
    """How the library's reconstructors run workers; shared and mutable.

    ``stop_requested`` is bound by `install()` to Ptychodus's task monitor so Stop reaches the
    worker within one batch. ``in_process`` None follows the ``run_in_subprocess`` setting.
    """

    stop_requested: Callable[[], bool] | None = None
    in_process: bool | None = None
    entry_point: str = DEFAULT_ENTRY_POINT
    stop_grace_s: float = 30.0


def _square_pattern_size(patterns: Any) -> int:
    shape = numpy.shape(patterns)

    if len(shape) != 3 or shape[0] == 0:
        raise ValueError(f"expected a stack of diffraction patterns (M, N, N); got shape {shape}")
    if shape[1] != shape[2]:
        raise ValueError(
            f"PtychoPINN (PyTorch) needs square diffraction patterns; got {shape[1]}x{shape[2]}; "
            "crop them to 64, 128 or 256 pixels in Ptychodus's diffraction settings"
        )
    return int(shape[2])


def _losses(values: list[float]) -> list[LossValue]:
    return [LossValue(epoch=i + 1, value=float(v)) for i, v in enumerate(values)]


def _output_object(source: Object, array: numpy.ndarray) -> Object:
    """The reconstructed object with the input object's pixel geometry and centre."""
    try:
        pixel_geometry = source.get_pixel_geometry()
    except ValueError:
        pixel_geometry = None
    try:
        center = source.get_center()
    except ValueError:
        center = None
    return Object(array=numpy.asarray(array, dtype=numpy.complex64), pixel_geometry=pixel_geometry,
                  center=center, layer_spacing_m=[])


def _output_probes(source: ProbeSequence, array: Any) -> ProbeSequence:
    """The refined probe as a single-mode `ProbeSequence` with the input probe's pixel geometry.

    The engine models the data with the input's first mode only, so the refined probe replaces
    the whole input ensemble (other incoherent modes and OPR weights are not carried over).
    """
    probe = numpy.asarray(array, dtype=numpy.complex64)

    if probe.ndim != 2 or probe.shape != (source.height_px, source.width_px):
        raise ValueError(f"the refined probe has shape {probe.shape}; expected the input probe's "
                         f"{source.height_px}x{source.width_px}")
    try:
        pixel_geometry = source.get_pixel_geometry()
    except ValueError:
        pixel_geometry = None
    return ProbeSequence(array=probe[numpy.newaxis, numpy.newaxis], opr_weights=None,
                         pixel_geometry=pixel_geometry)


def _product(source: Product, losses: list[LossValue], obj: Object | None = None,
             probes: ProbeSequence | None = None) -> Product:
    return Product(metadata=source.metadata, probe_positions=source.probe_positions,
                   probes=source.probes if probes is None else probes,
                   object_=source.object_ if obj is None else obj, losses=losses)


def _result_losses(result: dict[str, Any], fitted: bool) -> list[float]:
    """The product's loss curve: the self-fit's epochs, then the refinement passes.

    With a pretrained model (``fitted`` False) the model's training losses belong to other
    data, so the curve is the refinement passes of this scan; without refinement passes it
    stays the model's training history.
    """
    history = [float(v) for v in result["history"].get("train_loss", [])]
    refinement = result.get("refinement") or {}
    passes = [float(v) for v in refinement.get("losses", [])]

    if fitted:
        return history + passes
    return passes or history


class _WarningWatcher(logging.Handler):
    """Remembers the WARNING records that reach the library logger during a run.

    Worker records are re-logged under the library logger (`runner`), and in-process workers
    log there directly, so an engine warning usually reaches the Ptychodus log already; the
    result's ``warnings`` are then logged only when they have not been.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.seen.add(record.getMessage())
        except Exception:  # noqa: BLE001 - a malformed record must not break the run
            pass


def _describe_refinement(refinement: dict[str, Any] | None, probe_refined: bool) -> str:
    """``"; 50 refinement passes, Poisson NLL a -> b ..."`` for the finished-run log line."""
    if not refinement:
        return ""
    if not refinement.get("iterations"):
        return "; network only, no refinement"
    probe = " (object and probe)" if probe_refined else ""
    return (f"; {refinement['passes_run']} refinement passes{probe}, Poisson NLL "
            f"{refinement['network_loss']:.4g} -> {refinement['final_loss']:.4g} "
            f"(flat object {refinement['flat_loss']:.4g})")


def _copy_atomically(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp",
                               dir=destination.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, destination)
    finally:
        Path(tmp).unlink(missing_ok=True)


class PtychoPINNTorchReconstructor(TrainableReconstructor):
    """One reconstructor (``PINN`` or ``Supervised``) with its own loaded model."""

    def __init__(self, name: str, model_type: str, settings: PluginSettings,
                 options: RunOptions, logger: logging.Logger) -> None:
        super().__init__()
        self._name = name
        self._model_type = model_type
        self._settings = settings
        self._options = options
        self._logger = logger
        self._model: ModelFileInfo | None = None
        self._goal: int | None = None

    # --- plumbing ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def model_type(self) -> str:
        return self._model_type

    @property
    def can_reconstruct_without_model(self) -> bool:
        """The PINN can fit a scan by itself; the GUI hook then offers "Reconstruct"."""
        return self._model_type == "pinn"

    @property
    def model_info(self) -> ModelFileInfo | None:
        """The loaded (or last trained) model's configs and history, if any."""
        return self._model

    def _configs(self, n: int, **extra: Any) -> Configs:
        return build_configs(self._settings, model_type=self._model_type, N=n, **extra)

    @staticmethod
    def _update_legacy(*configs: Any) -> None:
        for config in configs:
            params.update_legacy_dict(params.cfg, config)

    def _runner(self) -> JobRunner:
        in_process = self._options.in_process
        if in_process is None:
            in_process = not self._settings.run_in_subprocess
        return JobRunner(in_process=in_process, entry_point=self._options.entry_point,
                         stop_requested=self._options.stop_requested,
                         stop_grace_s=self._options.stop_grace_s)

    def _fail(self, action: str, exc: BaseException) -> None:
        self._logger.error("PtychoPINN (PyTorch) %s %s failed: %s: %s", self._name, action,
                           type(exc).__name__, exc)

    @staticmethod
    def _job_configs(configs: Configs, inference: InferenceConfig | None = None,
                     training: Any = None) -> dict[str, dict[str, Any]]:
        return {
            "training": config_to_dict(training or configs.training),
            "inference": config_to_dict(inference or configs.inference),
            "execution": config_to_dict(configs.execution),
        }

    # --- Reconstructor ----------------------------------------------------------------------

    def get_progress_goal(self) -> int:
        if self._goal is not None:
            return self._goal
        epochs = max(1, self._settings.nepochs)
        return STEPS_PER_EPOCH * (epochs if self._model is None else 1)

    def reconstruct(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        try:
            yield from self._reconstruct(parameters)
        except GeneratorExit:
            raise
        except Exception as exc:
            self._fail("reconstruction", exc)
            raise
        finally:
            self._goal = None

    def _reconstruct(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        n = _square_pattern_size(parameters.diffraction_patterns)
        configs = self._configs(n)
        model = self._model

        if model is None:
            self._update_legacy(configs.training, configs.inference)
            training = configs.training
            inference = configs.inference
        else:
            training = model.training_config
            inference = dataclasses.replace(configs.inference, model=model.model_config,
                                            model_path=model.path)
            self._update_legacy(training, inference)

        from ..data.io import scan_from_reconstruct_input

        scan = scan_from_reconstruct_input(parameters)

        if model is not None and model.model_config.N != scan.N:
            raise ValueError(
                f"the loaded model {model.path} was trained on {model.model_config.N}x"
                f"{model.model_config.N} patterns but this scan has {scan.N}x{scan.N} patterns"
            )
        if model is None and self._model_type == "supervised":
            raise ValueError(
                "the Supervised reconstructor needs a trained model: train it (Train) or load "
                "one (Load Model...) first, or use PINN, which can fit the scan itself"
            )

        fit_epochs = training.nepochs if model is None else 0
        self._goal = STEPS_PER_EPOCH * (fit_epochs + 1)
        source = parameters.product

        if model is None:
            self._logger.info("No model loaded: fitting the PINN to this scan for %d epochs, "
                              "then inferring", fit_epochs)

        job = ReconstructJob(scan=scan, model_path=None if model is None else model.path,
                             configs=self._job_configs(configs, inference, training))

        watcher = _WarningWatcher()
        library_logger = logging.getLogger(LIBRARY_LOGGER)
        library_logger.addHandler(watcher)

        try:
            with closing(self._runner().run(job)) as events:  # Stop/close ends the worker now
                yield from self._reconstruct_events(events, source, fit_epochs, watcher)
        finally:
            library_logger.removeHandler(watcher)

    def _reconstruct_events(self, events: Iterator[tuple[Any, ...]], source: Product,
                            fit_epochs: int, watcher: _WarningWatcher | None = None
                            ) -> Iterator[ReconstructOutput]:
        train_loss: list[float] = []
        progress = 0

        for event in events:
            tag = event[0]

            if tag == TAG_EPOCH:
                train_loss.append(event[1]["train_loss"])
                progress = max(progress, STEPS_PER_EPOCH * min(event[1]["epoch"], fit_epochs))
                yield ReconstructOutput(product=_product(source, _losses(train_loss)),
                                        progress=progress)
            elif tag == TAG_STOPPED:
                self._logger.info("PtychoPINN (PyTorch) reconstruction stopped; the output "
                                  "product keeps the input object")
                return
            elif tag == TAG_RESULT:
                result = event[1]
                losses = _losses(_result_losses(result, fitted=fit_epochs > 0))
                obj = _output_object(source.object_, result["object"])
                probe = result.get("probe")
                probes = None if probe is None else _output_probes(source.probes, probe)
                seen = set() if watcher is None else watcher.seen

                for warning in result.get("warnings", []):
                    if warning not in seen:
                        self._logger.warning("%s", warning)

                self._logger.info("PtychoPINN (PyTorch) reconstruction finished (object %dx%d%s)",
                                  obj.height_px, obj.width_px,
                                  _describe_refinement(result.get("refinement"),
                                                       probes is not None))
                yield ReconstructOutput(product=_product(source, losses, obj, probes),
                                        progress=self._goal)

    # --- TrainableReconstructor -------------------------------------------------------------

    def is_model_loaded(self) -> bool:
        return self._model is not None

    def get_model_file_filter(self) -> str:
        return f"PtychoPINN (PyTorch) Model (*{MODEL_EXTENSION})"

    def get_model_file_extension(self) -> str:
        return MODEL_EXTENSION

    def get_training_data_file_filter(self) -> str:
        return "NumPy Zipped Archive (*.npz)"

    def load_model_from_file(self, file_path: Path) -> None:
        try:
            path = Path(file_path)
            configs = self._configs(DEFAULT_N if self._model is None else
                                    self._model.model_config.N)
            self._update_legacy(dataclasses.replace(configs.inference, model_path=path))
            info = read_model_file_info(path)
            self._update_legacy(info.training_config, dataclasses.replace(
                configs.inference, model=info.model_config, model_path=path))
        except Exception as exc:
            self._fail(f"loading the model {file_path}", exc)
            raise

        if info.model_config.model_type != self._model_type:
            self._logger.warning("%s holds a %s model; the %s reconstructor will use it as is",
                                 path, info.model_config.model_type, self._name)

        self._model = info
        self._logger.info("Loaded PtychoPINN (PyTorch) model %s (N=%d, gridsize=%d, %d epochs)",
                          path, info.model_config.N, info.model_config.gridsize,
                          len(info.history.get("train_loss", [])))

    def save_model(self, file_path: Path) -> None:
        try:
            model = self._model
            if model is None:
                raise RuntimeError("no PtychoPINN (PyTorch) model is loaded or trained; "
                                   "train one or load a .ckpt file first")
            self._update_legacy(model.training_config)
            destination = Path(file_path)
            if destination.exists() and destination.resolve() == model.path.resolve():
                self._logger.info("Model already saved at %s", destination)
                return
            if not model.path.is_file():
                raise FileNotFoundError(f"the loaded model file {model.path} no longer exists")
            _copy_atomically(model.path, destination)
        except Exception as exc:
            self._fail(f"saving the model to {file_path}", exc)
            raise

        self._logger.info("Saved PtychoPINN (PyTorch) model to %s", destination)

    def export_training_data(self, file_path: Path, parameters: ReconstructInput) -> None:
        try:
            path = Path(file_path)
            configs = self._configs(_square_pattern_size(parameters.diffraction_patterns),
                                    extra_training={"train_data_file": path})
            self._update_legacy(configs.training)
            from ..data.io import save_training_npz, scan_from_reconstruct_input

            scan_from_reconstruct_input(parameters)  # reject bad input before writing anything
            written = save_training_npz(path, parameters)
        except Exception as exc:
            self._fail(f"exporting training data to {file_path}", exc)
            raise

        self._logger.info("Exported training data to %s (Train reads %s/train_data.npz)",
                          written, written.parent)

    def train(self, input_path: Path, output_path: Path) -> Iterator[TrainOutput]:
        try:
            yield from self._train(Path(input_path), Path(output_path))
        except GeneratorExit:
            raise
        except Exception as exc:
            self._fail("training", exc)
            raise
        finally:
            self._goal = None

    def _train(self, input_path: Path, output_path: Path) -> Iterator[TrainOutput]:
        data_file = input_path / TRAINING_NPZ
        source = data_file if data_file.is_file() else input_path / DIFFRACTION_H5
        n = (pattern_size(source) if source.is_file() else None) or DEFAULT_N
        configs = self._configs(n, extra_training={
            "train_data_file": data_file if data_file.is_file() else None,
            "output_dir": output_path,
        })
        self._update_legacy(configs.training)
        check_training_dir(input_path)
        diffraction = self._settings.diffraction

        if output_path.exists() and not output_path.is_dir():
            raise NotADirectoryError(
                f"training output must be a directory; {output_path} is a file")

        output_path.mkdir(parents=True, exist_ok=True)
        model_path = output_path / MODEL_FILE_NAME
        self._goal = STEPS_PER_EPOCH * configs.training.nepochs
        job = TrainJob(input_path=input_path, model_path=model_path,
                       configs=self._job_configs(configs), diffraction=diffraction)
        self._logger.info("Training PtychoPINN (PyTorch) %s on %s for %d epochs -> %s",
                          self._name, input_path, configs.training.nepochs, model_path)

        with closing(self._runner().run(job)) as events:
            yield from self._train_events(events)

    def _train_events(self, events: Iterator[tuple[Any, ...]]) -> Iterator[TrainOutput]:
        goal = self._goal or STEPS_PER_EPOCH
        train_loss: list[float] = []
        val_loss: list[float] = []
        progress = 0

        def output() -> TrainOutput:
            return TrainOutput(training_loss=_losses(train_loss),
                               validation_loss=_losses(val_loss), progress=progress)

        for event in events:
            tag = event[0]

            if tag == TAG_PROGRESS and event[2] > 0:
                progress = max(progress, min(goal - 1, goal * event[1] // event[2]))
                yield output()
            elif tag == TAG_EPOCH:
                report = event[1]
                train_loss.append(report["train_loss"])
                if report["val_loss"] is not None:
                    val_loss.append(report["val_loss"])
                progress = max(progress, min(goal - 1, STEPS_PER_EPOCH * report["epoch"]))
                yield output()
            elif tag == TAG_STOPPED:
                self._logger.info("PtychoPINN (PyTorch) training stopped; no model was saved "
                                  "and the previously loaded model (if any) is kept")
                return
            elif tag == TAG_RESULT:
                self._model = read_model_file_info(Path(event[1]["model_path"]))
                progress = goal
                self._logger.info("PtychoPINN (PyTorch) training finished; model saved to %s "
                                  "and loaded", self._model.path)
                yield output()
