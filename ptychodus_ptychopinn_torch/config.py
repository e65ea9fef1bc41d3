"""Configuration dataclasses with PtychoPINN's field names and defaults.

`ModelConfig`, `TrainingConfig` and `InferenceConfig` mirror PtychoPINN's
``ptycho/config/config.py`` so that code written against PtychoPINN sees the same names and
defaults (and the same legacy ``params.cfg`` view, see `params`). `ExecutionConfig` holds the
runtime choices (device, precision, workers, seed) that never enter the legacy view.

Validation happens in ``__post_init__``: a bad value raises ``ValueError`` naming the field,
the value and what is allowed. This module must not import torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

__all__ = [
    "ModelConfig",
    "TrainingConfig",
    "InferenceConfig",
    "ExecutionConfig",
    "config_from_dict",
    "config_to_dict",
    "stored_training_config",
]

SUPPORTED_N = (64, 128, 256)
AMP_ACTIVATIONS = ("sigmoid", "swish", "softplus", "relu")
BORDER_ACTIVATIONS = ("head", "swish")
OBJECT_INITS = ("flat", "random")
NORMALIZATIONS = ("none", "batch")
SUPERVISED_LABELS = ("object", "refined")
MODEL_TYPES = ("pinn", "supervised")
ARCHITECTURES = ("cnn",)
LOSS_MODES = ("poisson", "mae")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("Default", "Exponential", "WarmupCosine", "ReduceLROnPlateau")
CLIP_ALGORITHMS = ("norm", "value")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
BACKENDS = ("pytorch", "tensorflow")
#: The stitching weight exponent of ``InferenceConfig.stitch_weight_exponent=None``, by model type:
#: a network fitted to labels is accurate at each patch's bright centre (3 is sharper on every
#: refined-labels case), while a PINN's patches are noisy everywhere and gain from wider averaging
#: (3 blurs the gridsize-2 PINN); docs/performance.md, "Stitching weight".
AUTO_STITCH_WEIGHT_EXPONENTS = {"pinn": 2.0, "supervised": 3.0}
#: That rule in words, for error messages, the setting's help and the CLI's.
AUTO_STITCH_WEIGHT_RULE = (f"{AUTO_STITCH_WEIGHT_EXPONENTS['supervised']:g} for supervised models, "
                           f"{AUTO_STITCH_WEIGHT_EXPONENTS['pinn']:g} for the PINN")
STRATEGIES = ("auto", "ddp", "ddp_spawn")


def _fail(cls: str, name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{cls}.{name}={value!r} is invalid; expected {allowed}")


def _check_choice(cls: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        _fail(cls, name, value, "one of " + ", ".join(repr(c) for c in choices))


def _check_positive(cls: str, name: str, value: Any, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        _fail(cls, name, value, "a positive " + ("integer" if integer else "number"))


def _check_range(cls: str, name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        _fail(cls, name, value, f"a number in [{lo}, {hi}]")


def _coerce_paths(config: Any, names: tuple[str, ...]) -> None:
    """Accept strings for path fields of a frozen config (stored as ``Path``)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, str):
            object.__setattr__(config, name, Path(value))


def _check_bool(cls: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        _fail(cls, name, value, "True or False")


def _check_model_and_paths(cls: str, config: Any, paths: tuple[str, ...]) -> None:
    """The head of `TrainingConfig` and `InferenceConfig` validation: a real `ModelConfig`,
    and string paths stored as ``Path``."""
    if not isinstance(config.model, ModelConfig):
        _fail(cls, "model", config.model, "a ModelConfig")
    _coerce_paths(config, paths)


def _check_grouping(cls: str, config: Any) -> None:
    """``n_groups``, ``n_subsample`` and ``neighbor_count`` (at least gridsize**2 when grouping
    several patterns), which `TrainingConfig` and `InferenceConfig` share."""
    if config.n_groups is not None:
        _check_positive(cls, "n_groups", config.n_groups, integer=True)
    if config.n_subsample is not None:
        _check_positive(cls, "n_subsample", config.n_subsample, integer=True)
    _check_positive(cls, "neighbor_count", config.neighbor_count, integer=True)
    if config.neighbor_count < config.model.channels and config.model.gridsize > 1:
        _fail(cls, "neighbor_count", config.neighbor_count,
              f"at least gridsize**2 = {config.model.channels}")


@dataclass(frozen=True)
class ModelConfig:
    """Network and forward-model architecture (PtychoPINN ``ModelConfig``).

    Two fields are this package's own (docs/architecture.md, "Convergence"):
    ``border_activation`` is the output activation of the ``probe_big`` border path (``head``:
    the same as the central path, sigmoid amplitude and pi*tanh phase; ``swish``: PtychoPINN's
    SiLU, whose phase cannot go below -0.28 rad), and ``object_init`` is the network's first
    prediction (``flat``: the uniform object of the implied amplitude with zero phase, as
    iterative solvers start; ``random``: Glorot-initialised output layers, as PtychoPINN).
    ``normalization`` puts a layer after every hidden convolution (``batch``: BatchNorm, which
    measured faster fitting in supervised mode with batches of 16; ``none``: PtychoPINN's
    network).
    """

    N: int = 64
    gridsize: int = 1
    n_filters_scale: int = 2
    model_type: Literal["pinn", "supervised"] = "pinn"
    architecture: str = "cnn"
    amp_activation: str = "sigmoid"
    object_big: bool = True
    probe_big: bool = True
    probe_mask: bool = False
    pad_object: bool = True
    probe_scale: float = 4.0
    gaussian_smoothing_sigma: float = 0.0
    border_activation: str = "swish"
    object_init: str = "random"
    normalization: str = "none"

    def __post_init__(self) -> None:
        c = "ModelConfig"
        _check_choice(c, "N", self.N, SUPPORTED_N)
        _check_positive(c, "gridsize", self.gridsize, integer=True)
        if self.gridsize > 4:
            _fail(c, "gridsize", self.gridsize, "an integer from 1 to 4")
        _check_positive(c, "n_filters_scale", self.n_filters_scale, integer=True)
        _check_choice(c, "model_type", self.model_type, MODEL_TYPES)
        _check_choice(c, "architecture", self.architecture, ARCHITECTURES)
        _check_choice(c, "amp_activation", self.amp_activation, AMP_ACTIVATIONS)
        for name in ("object_big", "probe_big", "probe_mask", "pad_object"):
            _check_bool(c, name, getattr(self, name))
        _check_positive(c, "probe_scale", self.probe_scale)
        _check_range(c, "gaussian_smoothing_sigma", self.gaussian_smoothing_sigma, 0.0, 10.0)
        _check_choice(c, "border_activation", self.border_activation, BORDER_ACTIVATIONS)
        _check_choice(c, "object_init", self.object_init, OBJECT_INITS)
        _check_choice(c, "normalization", self.normalization, NORMALIZATIONS)

    @property
    def channels(self) -> int:
        """Patterns per group, C = gridsize**2."""
        return self.gridsize * self.gridsize


@dataclass(frozen=True)
class TrainingConfig:
    """Training parameters (PtychoPINN ``TrainingConfig``).

    ``nphotons=None`` means "measure it from the data" (mean total counts per pattern).
    ``supervised_labels`` is where supervised mode's labels come from: ``object`` = the scan's
    object (objectGuess; PtychoPINN's meaning), ``refined`` = the object the physics refinement
    reconstructs from the scan itself (flat start, known probe and positions), so a network can
    be trained supervised without a true object (PtychoNN's workflow, in one step).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    train_data_file: Path | None = None
    test_data_file: Path | None = None
    batch_size: int = 16
    nepochs: int = 50
    mae_weight: float = 0.0
    nll_weight: float = 1.0
    realspace_mae_weight: float = 0.0
    realspace_weight: float = 0.0
    nphotons: float | None = None
    n_groups: int | None = 512
    n_subsample: int | None = None
    subsample_seed: int | None = None
    neighbor_count: int = 4
    positions_provided: bool = True
    probe_trainable: bool = False
    intensity_scale_trainable: bool = True
    output_dir: Path = Path("training_outputs")
    sequential_sampling: bool = False
    backend: str = "pytorch"
    torch_loss_mode: str = "poisson"
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    scheduler: str = "ReduceLROnPlateau"
    lr_warmup_epochs: int = 0
    lr_min_ratio: float = 0.1
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    plateau_min_lr: float = 5e-5
    plateau_threshold: float = 0.0
    validation_fraction: float = 0.05
    early_stop_patience: int = 10
    supervised_labels: str = "object"

    def __post_init__(self) -> None:
        c = "TrainingConfig"
        _check_model_and_paths(c, self, ("train_data_file", "test_data_file", "output_dir"))
        _check_positive(c, "batch_size", self.batch_size, integer=True)
        _check_positive(c, "nepochs", self.nepochs, integer=True)
        for name in ("mae_weight", "nll_weight"):
            _check_range(c, name, getattr(self, name), 0.0, 1.0)
        for name in ("realspace_mae_weight", "realspace_weight"):
            _check_range(c, name, getattr(self, name), 0.0, 1e6)
        if self.mae_weight == 0.0 and self.nll_weight == 0.0 and self.model.model_type == "pinn":
            _fail(c, "nll_weight", self.nll_weight, "nll_weight > 0 or mae_weight > 0 for a PINN")
        if self.nphotons is not None:
            _check_positive(c, "nphotons", self.nphotons)
        _check_grouping(c, self)
        for name in ("positions_provided", "probe_trainable", "intensity_scale_trainable",
                     "sequential_sampling"):
            _check_bool(c, name, getattr(self, name))
        _check_choice(c, "backend", self.backend, BACKENDS)
        _check_choice(c, "torch_loss_mode", self.torch_loss_mode, LOSS_MODES)
        _check_positive(c, "learning_rate", self.learning_rate)
        _check_choice(c, "optimizer", self.optimizer, OPTIMIZERS)
        _check_range(c, "weight_decay", self.weight_decay, 0.0, 1.0)
        for name in ("momentum", "adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.0 <= value < 1.0:
                _fail(c, name, value, "a number in [0, 1)")
        if self.gradient_clip_val is not None:
            _check_positive(c, "gradient_clip_val", self.gradient_clip_val)
        _check_choice(c, "gradient_clip_algorithm", self.gradient_clip_algorithm, CLIP_ALGORITHMS)
        _check_choice(c, "scheduler", self.scheduler, SCHEDULERS)
        if isinstance(self.lr_warmup_epochs, bool) or not isinstance(self.lr_warmup_epochs, int) \
                or self.lr_warmup_epochs < 0:
            _fail(c, "lr_warmup_epochs", self.lr_warmup_epochs, "a non-negative integer")
        _check_range(c, "lr_min_ratio", self.lr_min_ratio, 0.0, 1.0)
        _check_choice(c, "supervised_labels", self.supervised_labels, SUPERVISED_LABELS)
        if not 0.0 < self.plateau_factor < 1.0:
            _fail(c, "plateau_factor", self.plateau_factor, "a number in (0, 1)")
        if isinstance(self.plateau_patience, bool) or not isinstance(self.plateau_patience, int) \
                or self.plateau_patience < 0:
            _fail(c, "plateau_patience", self.plateau_patience, "a non-negative integer")
        _check_range(c, "plateau_min_lr", self.plateau_min_lr, 0.0, 1.0)
        _check_range(c, "plateau_threshold", self.plateau_threshold, 0.0, 1.0)
        _check_range(c, "validation_fraction", self.validation_fraction, 0.0, 0.5)
        _check_positive(c, "early_stop_patience", self.early_stop_patience, integer=True)


@dataclass(frozen=True)
class InferenceConfig:
    """Inference parameters (PtychoPINN ``InferenceConfig``).

    ``refine_iterations`` and ``refine_probe`` are this package's own: after the network's
    patches are stitched, the object (and optionally the probe) is refined for that many passes
    under the Poisson likelihood of all patterns (see `refinement`); 0 = network only.
    ``stitch_weight_exponent`` is too: overlapping patches are averaged with the weight
    ``(|P| / max |P|) ** e``; 2 weighs by the probe intensity, larger values trust the well-lit
    centre of each patch more than its dim edge, where a single pattern says little: 3 sharpens
    supervised networks but blurs the gridsize-2 PINN (docs/performance.md, "Stitching weight").
    ``None`` (the default) picks by the trained model's type (`AUTO_STITCH_WEIGHT_EXPONENTS`).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    model_path: Path | None = None
    test_data_file: Path | None = None
    n_groups: int | None = None
    n_subsample: int | None = None
    subsample_seed: int | None = None
    neighbor_count: int = 4
    debug: bool = False
    output_dir: Path = Path("inference_outputs")
    backend: str = "pytorch"
    refine_iterations: int = 200
    refine_probe: bool = False
    stitch_weight_exponent: float | None = None

    def __post_init__(self) -> None:
        c = "InferenceConfig"
        _check_model_and_paths(c, self, ("model_path", "test_data_file", "output_dir"))
        _check_grouping(c, self)
        _check_bool(c, "debug", self.debug)
        _check_choice(c, "backend", self.backend, BACKENDS)
        if isinstance(self.refine_iterations, bool) or not isinstance(self.refine_iterations, int) \
                or not 0 <= self.refine_iterations <= 100_000:
            _fail(c, "refine_iterations", self.refine_iterations, "an integer from 0 (network only) to 100000")
        _check_bool(c, "refine_probe", self.refine_probe)
        e = self.stitch_weight_exponent
        if e is not None and (isinstance(e, bool) or not isinstance(e, (int, float)) or not 0.0 < e <= 16.0):
            _fail(c, "stitch_weight_exponent", e, f"None (automatic: {AUTO_STITCH_WEIGHT_RULE}) or a number in (0, 16]")

    def stitch_exponent(self, model_type: str) -> float:
        """The stitching weight exponent for a network of ``model_type`` (the trained model's)."""
        if self.stitch_weight_exponent is not None:
            return float(self.stitch_weight_exponent)
        return AUTO_STITCH_WEIGHT_EXPONENTS[model_type]


@dataclass(frozen=True)
class ExecutionConfig:
    """Runtime choices; never written into the legacy ``params.cfg`` view.

    ``accelerator='auto'`` uses CUDA when available, else the CPU with a warning; an explicit
    ``'cuda'`` without a usable GPU is an error.
    """

    accelerator: str = "auto"
    devices: int = 1
    gpu_indices: tuple[int, ...] = ()
    precision: str = "32-true"
    num_workers: int = 0
    pin_memory: bool = True
    seed: int = 42
    deterministic: bool = False
    inference_batch_size: int | None = None
    enable_progress_bar: bool = False
    strategy: str = "auto"
    num_nodes: int = 1
    compile: bool = False

    def __post_init__(self) -> None:
        c = "ExecutionConfig"
        _check_choice(c, "accelerator", self.accelerator, ACCELERATORS)
        _check_positive(c, "devices", self.devices, integer=True)
        object.__setattr__(self, "gpu_indices", tuple(self.gpu_indices))
        for index in self.gpu_indices:
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                _fail(c, "gpu_indices", self.gpu_indices, "non-negative integer GPU indices")
        _check_choice(c, "precision", self.precision, PRECISIONS)
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) \
                or self.num_workers < 0:
            _fail(c, "num_workers", self.num_workers, "a non-negative integer")
        _check_bool(c, "pin_memory", self.pin_memory)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            _fail(c, "seed", self.seed, "a non-negative integer")
        _check_bool(c, "deterministic", self.deterministic)
        if self.inference_batch_size is not None:
            _check_positive(c, "inference_batch_size", self.inference_batch_size, integer=True)
        _check_bool(c, "enable_progress_bar", self.enable_progress_bar)
        _check_choice(c, "strategy", self.strategy, STRATEGIES)
        _check_positive(c, "num_nodes", self.num_nodes, integer=True)
        _check_bool(c, "compile", self.compile)


_Config = TypeVar("_Config", ModelConfig, TrainingConfig, InferenceConfig, ExecutionConfig)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain-data dict of a config (nested ``model`` included, ``Path`` -> ``str``).

    Used for the model file, which must load with ``torch.load(weights_only=True)``.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a config dataclass instance, got {type(config).__name__}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = config_to_dict(value)
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def config_from_dict(cls: type[_Config], data: Mapping[str, Any]) -> _Config:
    """Rebuild a config from `config_to_dict` output; unknown keys are an error."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__} data must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
    kwargs = dict(data)
    if "model" in kwargs and isinstance(kwargs["model"], Mapping):
        kwargs["model"] = config_from_dict(ModelConfig, kwargs["model"])
    if "gpu_indices" in kwargs and kwargs["gpu_indices"] is not None:
        kwargs["gpu_indices"] = tuple(kwargs["gpu_indices"])
    return cls(**kwargs)


#: Model fields added after the first release, with the value every earlier model file was
#: trained with (not today's default): a network trained with swish borders must keep them.
_FIELDS_BEFORE_THEY_EXISTED = {"border_activation": "swish", "object_init": "random", "normalization": "none"}


def stored_training_config(data: Mapping[str, Any]) -> TrainingConfig:
    """The `TrainingConfig` stored in a model file, with model fields that older files lack
    filled in with the behaviour they were trained with. Every reader of model files (the
    engine's loader and the Ptychodus-side reader, which must not import torch) uses this."""
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = {**data, "model": {**_FIELDS_BEFORE_THEY_EXISTED, **data["model"]}}
    return config_from_dict(TrainingConfig, data)
