"""Ptychodus settings groups of PtychoPINN (PyTorch) and their translation into configs.

Every setting is declared once in `SETTINGS` (group, key, default, target config field,
GUI label, help). The declaration drives the Ptychodus parameter groups, the GUI page
(`gui.py`), the config builders below and the table in ``docs/settings.md`` (a test keeps the
two in sync). Group names carry the unique prefix ``PtychoPINNPyTorch``: reusing a built-in
group name (``PtychoPINNTorch*``, ``PtychoPINN*``) would crash Ptychodus at start-up.

Values are validated when a run starts, by the config dataclasses; the error names the
settings key (``[PtychoPINNPyTorchTraining] batch_size``) rather than the config field, so a
user can find it in the GUI or the INI file. Ptychodus's own min/max clamping is not used
because it silently replaces bad values. This module must not import torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from ptychodus.api.parameters import Parameter, ParameterGroup
from ptychodus.api.settings import SettingsRegistry

from ..config import (
    ACCELERATORS,
    AUTO_STITCH_WEIGHT_RULE,
    AMP_ACTIVATIONS,
    BORDER_ACTIVATIONS,
    LOSS_MODES,
    NORMALIZATIONS,
    OBJECT_INITS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULERS,
    STRATEGIES,
    SUPERVISED_LABELS,
    ExecutionConfig,
    InferenceConfig,
    ModelConfig,
    TrainingConfig,
)
from ..data.io import DIFFRACTION_CONVENTIONS

__all__ = [
    "GROUP_PREFIX",
    "SETTINGS",
    "Configs",
    "PluginSettings",
    "SettingSpec",
    "SettingsError",
    "build_configs",
]

GROUP_PREFIX = "PtychoPINNPyTorch"


class SettingsError(ValueError):
    """A setting holds a value the configs reject; the message names the settings key."""


@dataclass(frozen=True)
class SettingSpec:
    """One Ptychodus setting and the config field it feeds.

    ``target`` is ``"<config>.<field>"`` with config one of model, training, inference,
    execution, or ``"plugin.<name>"`` for options of the plugin itself. ``zero_means``
    documents a 0 that stands for ``None`` in the config (e.g. "from data").
    """

    group: str
    key: str
    default: bool | int | float | str
    target: str
    label: str
    help: str
    choices: tuple[str, ...] = ()
    zero_means: str = ""

    @property
    def section(self) -> str:
        return GROUP_PREFIX + self.group


def _s(group: str, key: str, default: Any, target: str, label: str, help: str,
       choices: tuple[str, ...] = (), zero_means: str = "") -> SettingSpec:
    return SettingSpec(group, key, default, target, label, help, tuple(choices), zero_means)


def _default(config: type, field_name: str) -> Any:
    """A config field's own default, so a setting cannot drift from the dataclass."""
    for item in fields(config):
        if item.name == field_name:
            return item.default
    raise ValueError(f"{config.__name__} has no field {field_name!r}")


SETTINGS: tuple[SettingSpec, ...] = (
    # Model (the network; N is always taken from the diffraction patterns)
    _s("Model", "gridsize", 1, "model.gridsize", "Grid Size:",
       "Patterns per group along each side (C = gridsize**2 channels), 1 to 4."),
    _s("Model", "n_filters_scale", 2, "model.n_filters_scale", "Filter Scale:",
       "Multiplier of the convolution channel counts (network width)."),
    _s("Model", "object_big", True, "model.object_big", "Object Big",
       "gridsize > 1: predict one shared object region per group (PtychoPINN object.big)."),
    _s("Model", "probe_big", True, "model.probe_big", "Probe Big",
       "Predict the object over the full N x N window, not only the central N/2 square."),
    _s("Model", "probe_mask", False, "model.probe_mask", "Probe Mask",
       "Multiply the probe by a hard disk (PtychoPINN probe.mask)."),
    _s("Model", "pad_object", True, "model.pad_object", "Pad Object",
       "Dual-resolution decoder: a central N/2 path padded to N (else one N x N path)."),
    _s("Model", "probe_scale", 4.0, "model.probe_scale", "Probe Scale:",
       "Probe normalisation constant (PtychoPINN probe_scale)."),
    _s("Model", "amp_activation", "sigmoid", "model.amp_activation", "Amplitude Activation:",
       "Output activation of the amplitude head.", AMP_ACTIVATIONS),
    _s("Model", "gaussian_smoothing_sigma", 0.0, "model.gaussian_smoothing_sigma",
       "Smoothing Sigma [px]:", "Gaussian smoothing of the predicted object, 0 = off (0 to 10)."),
    _s("Model", "border_activation", _default(ModelConfig, "border_activation"),
       "model.border_activation", "Border Activation:",
       "Output activation of the probe_big border path (outside the central N/2 square): "
       "head = the central path's own (amplitude activation, pi*tanh phase); swish = "
       "PtychoPINN's SiLU, whose phase cannot go below -0.28 rad.", BORDER_ACTIVATIONS),
    _s("Model", "object_init", _default(ModelConfig, "object_init"), "model.object_init",
       "Initial Object:",
       "The untrained network's prediction: flat = the uniform object of the implied amplitude "
       "with zero phase (as iterative solvers start); random = Glorot-initialised output "
       "layers (PtychoPINN).", OBJECT_INITS),
    _s("Model", "normalization", _default(ModelConfig, "normalization"), "model.normalization",
       "Normalization:",
       "Layer after every hidden convolution: batch = BatchNorm (measured to fit supervised "
       "labels faster with a batch size of 16); none = PtychoPINN's network.", NORMALIZATIONS),
    # Training (also used when Reconstruct fits the PINN to the scan with no model loaded)
    _s("Training", "nepochs", 50, "training.nepochs", "Epochs:",
       "Training epochs; also the epochs of a fit when reconstructing without a model."),
    _s("Training", "batch_size", 16, "training.batch_size", "Batch Size:",
       "Groups per optimisation step."),
    _s("Training", "learning_rate", _default(TrainingConfig, "learning_rate"),
       "training.learning_rate", "Learning Rate:", "Optimiser learning rate."),
    _s("Training", "nphotons", 0.0, "training.nphotons", "Photons per Pattern:",
       "Mean total counts per pattern; 0 = measured from the data.", zero_means="from data"),
    _s("Training", "n_groups", 0, "training.n_groups", "Groups:",
       "Number of groups to train on; 0 = one group per scan position.", zero_means="all"),
    _s("Training", "neighbor_count", 4, "training.neighbor_count", "Neighbour Count:",
       "Nearest neighbours searched when grouping (>= gridsize**2 when gridsize > 1)."),
    _s("Training", "nll_weight", 1.0, "training.nll_weight", "Poisson NLL Weight:",
       "Weight of the Poisson negative log-likelihood (0 to 1)."),
    _s("Training", "mae_weight", 0.0, "training.mae_weight", "Amplitude MAE Weight:",
       "Weight of the amplitude mean-absolute-error loss (0 to 1)."),
    _s("Training", "torch_loss_mode", "poisson", "training.torch_loss_mode", "Loss Mode:",
       "Main data loss.", LOSS_MODES),
    _s("Training", "probe_trainable", False, "training.probe_trainable", "Probe Trainable",
       "Refine the probe during training."),
    _s("Training", "intensity_scale_trainable", True, "training.intensity_scale_trainable",
       "Intensity Scale Trainable", "Learn the intensity scale during training."),
    _s("Training", "optimizer", "adam", "training.optimizer", "Optimizer:",
       "Optimisation algorithm.", OPTIMIZERS),
    _s("Training", "weight_decay", 0.0, "training.weight_decay", "Weight Decay:",
       "L2 weight decay (0 to 1)."),
    _s("Training", "scheduler", _default(TrainingConfig, "scheduler"), "training.scheduler",
       "LR Scheduler:",
       "Learning-rate schedule: Default = constant; Exponential = times 0.95 each epoch; "
       "WarmupCosine = linear warm-up for lr_warmup_epochs, then cosine decay to lr_min_ratio "
       "times the learning rate (updated every step); ReduceLROnPlateau = times "
       f"{_default(TrainingConfig, 'plateau_factor')} when the validation loss has not "
       f"improved for more than {_default(TrainingConfig, 'plateau_patience')} epochs (down "
       f"to {_default(TrainingConfig, 'plateau_min_lr'):g}).", SCHEDULERS),
    _s("Training", "lr_warmup_epochs", _default(TrainingConfig, "lr_warmup_epochs"),
       "training.lr_warmup_epochs", "LR Warm-up Epochs:",
       "WarmupCosine only: epochs of linear warm-up to the learning rate before the cosine "
       "decay; 0 = none."),
    _s("Training", "lr_min_ratio", _default(TrainingConfig, "lr_min_ratio"),
       "training.lr_min_ratio", "LR Final Ratio:",
       "WarmupCosine only: the learning rate at the end of the cosine decay, as a fraction "
       "of the learning rate (0 to 1)."),
    _s("Training", "supervised_labels", _default(TrainingConfig, "supervised_labels"),
       "training.supervised_labels", "Supervised Labels:",
       "Supervised model only: the labels it learns. object = the object in the training data "
       "(the true object); refined = the object the physics refinement reconstructs from the "
       "training data itself (200 passes from a flat start, known probe and positions), so no "
       "true object is needed.", SUPERVISED_LABELS),
    _s("Training", "gradient_clip_val", 0.0, "training.gradient_clip_val", "Gradient Clip:",
       "Gradient clipping threshold; 0 = off.", zero_means="off"),
    _s("Training", "validation_fraction", 0.05, "training.validation_fraction",
       "Validation Fraction:", "Fraction of groups held out for validation (0 to 0.5)."),
    _s("Training", "early_stop_patience", 10, "training.early_stop_patience",
       "Early-Stop Patience:", "Epochs without validation improvement before stopping."),
    _s("Training", "sequential_sampling", False, "training.sequential_sampling",
       "Sequential Sampling", "Take groups in scan order instead of at random."),
    _s("Training", "diffraction", "auto", "plugin.diffraction", "Training NPZ Holds:",
       "What diff3d of a training-data NPZ holds: counts = raw counts (Ptychodus's Export "
       "Training Data); amplitudes = their square roots (PtychoPINN's datasets); auto = decide "
       "from the values (integers: counts; non-integers whose squares are integers: amplitudes) "
       "and stop with an error when they cannot. diffraction.h5 always holds counts.",
       DIFFRACTION_CONVENTIONS),
    # Inference
    _s("Inference", "n_groups", 0, "inference.n_groups", "Groups:",
       "Groups to infer; 0 = every scan position.", zero_means="all"),
    _s("Inference", "neighbor_count", 4, "inference.neighbor_count", "Neighbour Count:",
       "Nearest neighbours searched when grouping for inference."),
    _s("Inference", "batch_size", 0, "execution.inference_batch_size", "Batch Size:",
       "Groups per inference batch; 0 = automatic.", zero_means="automatic"),
    _s("Inference", "refine_iterations", _default(InferenceConfig, "refine_iterations"),
       "inference.refine_iterations", "Refinement Passes:",
       "Passes of physics refinement of the stitched object after the network (Poisson "
       "likelihood of all patterns); 0 = network only (0 to 100000)."),
    _s("Inference", "refine_probe", _default(InferenceConfig, "refine_probe"),
       "inference.refine_probe", "Refine Probe",
       "Also refine the probe during the refinement passes; the product then holds the "
       "refined probe."),
    _s("Inference", "stitch_weight_exponent", 0.0, "inference.stitch_weight_exponent",
       "Stitch Weight Exponent:",
       "Overlapping network patches are averaged with the probe amplitude (relative to its "
       "maximum) to this power as weight: 2 = probe intensity; 3 trusts the bright centre of "
       "each patch more, sharper for supervised networks, blurrier for the gridsize-2 PINN; "
       f"0 = automatic ({AUTO_STITCH_WEIGHT_RULE}); at most 16.",
       zero_means="automatic"),
    # Execution
    _s("Execution", "device", "auto", "execution.accelerator", "Device:",
       "auto = CUDA when available, else CPU with a warning; cuda/gpu = require a GPU "
       "(error if none); cpu = CPU only.", ACCELERATORS),
    _s("Execution", "gpu_indices", "", "execution.gpu_indices", "GPU Indices:",
       "Comma-separated CUDA device indices, e.g. 0 or 0,1; empty = first device(s)."),
    _s("Execution", "devices", 1, "execution.devices", "Devices:",
       "Number of devices when no GPU indices are given."),
    _s("Execution", "strategy", "auto", "execution.strategy", "Multi-GPU Strategy:",
       "Training with several GPUs: auto = ddp_spawn inside Ptychodus (ddp under torchrun/SLURM).",
       STRATEGIES),
    _s("Execution", "num_nodes", 1, "execution.num_nodes", "Nodes:",
       "Nodes of a multi-node training job (launch with torchrun or SLURM; see docs/multi-gpu.md)."),
    _s("Execution", "precision", "32-true", "execution.precision", "Precision:",
       "Numerical precision: 16-mixed needs a GPU; bf16-mixed also runs on the CPU (about twice "
       "as fast where the CPU has AVX-512 BF16 or AMX).", PRECISIONS),
    _s("Execution", "seed", 42, "execution.seed", "Seed:",
       "Random seed for sampling and weight initialisation."),
    _s("Execution", "num_workers", 0, "execution.num_workers", "Data Workers:",
       "Data-loader worker processes (0 = load in the training process)."),
    _s("Execution", "deterministic", False, "execution.deterministic", "Deterministic",
       "Request deterministic algorithms (slower)."),
    _s("Execution", "run_in_subprocess", True, "plugin.run_in_subprocess", "Run in Subprocess",
       "Train and infer in a spawned child process (keeps torch and CUDA out of Ptychodus); "
       "off = in-process (scripts and tests)."),
)


class PluginSettings:
    """The four parameter groups of the library, created once per SettingsRegistry."""

    def __init__(self, registry: SettingsRegistry) -> None:
        self.groups: dict[str, ParameterGroup] = {}
        self.parameters: dict[tuple[str, str], Parameter[Any]] = {}

        for spec in SETTINGS:
            group = self.groups.get(spec.group)

            if group is None:
                group = registry.create_group(spec.section)
                self.groups[spec.group] = group

            self.parameters[spec.group, spec.key] = _create_parameter(group, spec)

    def parameter(self, group: str, key: str) -> Parameter[Any]:
        return self.parameters[group, key]

    def value(self, group: str, key: str) -> Any:
        return self.parameters[group, key].get_value()

    @property
    def run_in_subprocess(self) -> bool:
        return bool(self.value("Execution", "run_in_subprocess"))

    @property
    def nepochs(self) -> int:
        return int(self.value("Training", "nepochs"))

    @property
    def diffraction(self) -> str:
        """What a training NPZ's diff3d holds (auto, counts, amplitudes); `SettingsError` names
        the key of a bad value."""
        value = str(self.value("Training", "diffraction")).strip().lower()
        if value not in DIFFRACTION_CONVENTIONS:
            raise SettingsError(
                f"Invalid PtychoPINN (PyTorch) setting [{GROUP_PREFIX}Training] diffraction = "
                f"{value!r}; expected one of " + ", ".join(DIFFRACTION_CONVENTIONS))
        return value


def _create_parameter(group: ParameterGroup, spec: SettingSpec) -> Parameter[Any]:
    default = spec.default

    if isinstance(default, bool):
        return group.create_boolean_parameter(spec.key, default)
    if isinstance(default, int):
        return group.create_integer_parameter(spec.key, default)
    if isinstance(default, float):
        return group.create_real_parameter(spec.key, default)
    return group.create_string_parameter(spec.key, default)


class Configs(NamedTuple):
    """The config dataclasses of one run, built from the live settings."""

    model: ModelConfig
    training: TrainingConfig
    inference: InferenceConfig
    execution: ExecutionConfig


def _parse_gpu_indices(text: str) -> tuple[int, ...]:
    items = [item.strip() for item in str(text).replace(";", ",").split(",") if item.strip()]
    try:
        return tuple(int(item) for item in items)
    except ValueError:
        raise SettingsError(
            f"[{GROUP_PREFIX}Execution] gpu_indices = {text!r} is invalid; expected "
            "comma-separated non-negative integers such as 0 or 0,1"
        ) from None


def _config_value(spec: SettingSpec, value: Any) -> Any:
    if spec.target == "execution.gpu_indices":
        return _parse_gpu_indices(value)
    if isinstance(value, str):
        value = value.strip()
    if spec.zero_means and value == 0:
        return None
    return value


def _collect(settings: PluginSettings) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"model": {}, "training": {}, "inference": {}, "execution": {}}

    for spec in SETTINGS:
        kind, _, field_name = spec.target.partition(".")

        if kind in out:
            out[kind][field_name] = _config_value(spec, settings.value(spec.group, spec.key))

    return out


_FIELD_RE = re.compile(r"(ModelConfig|TrainingConfig|InferenceConfig|ExecutionConfig)\.(\w+)=")
_CONFIG_KIND = {
    "ModelConfig": "model",
    "TrainingConfig": "training",
    "InferenceConfig": "inference",
    "ExecutionConfig": "execution",
}


def settings_key_for(config_name: str, field_name: str) -> str | None:
    """``"[Section] key"`` of the setting that feeds ``config_name.field_name``, if any."""
    target = f"{_CONFIG_KIND.get(config_name, '')}.{field_name}"

    for spec in SETTINGS:
        if spec.target == target:
            return f"[{spec.section}] {spec.key}"

    return None


def _settings_error(exc: ValueError) -> SettingsError:
    message = str(exc)
    match = _FIELD_RE.search(message)
    key = settings_key_for(*match.groups()) if match else None

    if match and match.group(2) == "N":
        return SettingsError(
            f"PtychoPINN (PyTorch) cannot use these diffraction patterns: {message}. N is the "
            "pattern size; crop or bin the patterns to 64, 128 or 256 pixels in Ptychodus."
        )

    where = f"setting {key}" if key else "settings"
    return SettingsError(f"Invalid PtychoPINN (PyTorch) {where}: {message}")


def build_configs(
    settings: PluginSettings,
    *,
    model_type: str,
    N: int,  # noqa: N803 - PtychoPINN's name for the pattern size
    extra_training: dict[str, Any] | None = None,
    extra_inference: dict[str, Any] | None = None,
) -> Configs:
    """Build the run's configs from the live settings; `SettingsError` names a bad key."""
    values = _collect(settings)

    try:
        model = ModelConfig(N=N, model_type=model_type, **values["model"])  # type: ignore[arg-type]
        training = TrainingConfig(model=model, **values["training"], **(extra_training or {}))
        inference = InferenceConfig(model=model, **values["inference"], **(extra_inference or {}))
        execution = ExecutionConfig(**values["execution"])
    except ValueError as exc:
        raise _settings_error(exc) from exc

    return Configs(model, training, inference, execution)
