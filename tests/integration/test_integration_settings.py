"""Settings groups, their mapping onto the config dataclasses, INI files and docs/settings.md."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from ptychodus.api.settings import SettingsRegistry

from ptychodus_ptychopinn_torch import config as config_module
from ptychodus_ptychopinn_torch.config import (
    BORDER_ACTIVATIONS,
    NORMALIZATIONS,
    OBJECT_INITS,
    SCHEDULERS,
    SUPERVISED_LABELS,
    InferenceConfig,
    ModelConfig,
    TrainingConfig,
)
from ptychodus_ptychopinn_torch.integration.settings import (
    GROUP_PREFIX,
    SETTINGS,
    PluginSettings,
    SettingsError,
    build_configs,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
CONFIG_CLASSES = {"model": ModelConfig, "training": TrainingConfig,
                  "inference": InferenceConfig, "execution": config_module.ExecutionConfig}


def _field_default(target: str):
    kind, _, name = target.partition(".")
    return next(f.default for f in dataclasses.fields(CONFIG_CLASSES[kind]) if f.name == name)


def _other_choice(choices, default):
    return next(c for c in choices if c != default)
BUILT_IN_GROUPS = ("PtychoPINNTorch", "PtychoPINNModel", "PtychoPINNTraining",
                   "PtychoPINNInference")


@pytest.fixture()
def settings():
    return PluginSettings(SettingsRegistry())


def test_groups_have_a_unique_prefix():
    registry = SettingsRegistry()
    PluginSettings(registry)
    names = list(registry)
    assert sorted(names) == sorted(GROUP_PREFIX + g for g in
                                   ("Model", "Training", "Inference", "Execution"))
    assert not any(n.startswith(BUILT_IN_GROUPS) and not n.startswith(GROUP_PREFIX)
                   for n in names)


def test_defaults_build_valid_configs_with_n_from_the_data(settings):
    configs = build_configs(settings, model_type="pinn", N=128)
    assert configs.model.N == 128 and configs.training.model is configs.model
    assert configs.training.nphotons is None  # 0 = from data
    assert configs.training.n_groups is None and configs.inference.n_groups is None
    assert configs.execution.inference_batch_size is None
    assert configs.execution.accelerator == "auto" and configs.execution.gpu_indices == ()
    default = InferenceConfig()
    assert configs.inference.refine_iterations == default.refine_iterations
    assert configs.inference.refine_probe is default.refine_probe
    model, training = ModelConfig(), TrainingConfig()
    assert configs.model.border_activation == model.border_activation
    assert configs.model.object_init == model.object_init
    assert configs.model.normalization == model.normalization
    assert configs.training.scheduler == training.scheduler
    assert configs.training.lr_warmup_epochs == training.lr_warmup_epochs
    assert configs.training.lr_min_ratio == training.lr_min_ratio
    assert configs.training.supervised_labels == training.supervised_labels


def test_every_setting_reaches_its_config_field(settings):
    changed = {
        ("Model", "gridsize"): 2, ("Model", "n_filters_scale"): 1,
        ("Model", "probe_big"): False, ("Model", "object_big"): False,
        ("Training", "nepochs"): 3, ("Training", "batch_size"): 4,
        ("Training", "learning_rate"): 5e-4, ("Training", "nphotons"): 1e6,
        ("Training", "n_groups"): 10, ("Inference", "batch_size"): 32,
        ("Inference", "refine_iterations"): 0, ("Inference", "refine_probe"): True,
        ("Model", "border_activation"): _other_choice(BORDER_ACTIVATIONS,
                                                      ModelConfig().border_activation),
        ("Model", "object_init"): _other_choice(OBJECT_INITS, ModelConfig().object_init),
        ("Model", "normalization"): _other_choice(NORMALIZATIONS, ModelConfig().normalization),
        ("Training", "scheduler"): "WarmupCosine", ("Training", "lr_warmup_epochs"): 3,
        ("Training", "lr_min_ratio"): 0.25,
        ("Training", "supervised_labels"): _other_choice(SUPERVISED_LABELS,
                                                         TrainingConfig().supervised_labels),
        ("Execution", "device"): "cpu", ("Execution", "gpu_indices"): "0, 1",
        ("Execution", "precision"): "bf16-mixed", ("Execution", "seed"): 7,
    }
    for (group, key), value in changed.items():
        settings.parameter(group, key).set_value(value)
    c = build_configs(settings, model_type="supervised", N=64)
    assert (c.model.gridsize, c.model.n_filters_scale, c.model.probe_big, c.model.object_big) \
        == (2, 1, False, False)
    assert c.model.model_type == "supervised"
    assert (c.training.nepochs, c.training.batch_size, c.training.learning_rate) == (3, 4, 5e-4)
    assert (c.training.nphotons, c.training.n_groups) == (1e6, 10)
    assert c.execution.inference_batch_size == 32
    assert (c.inference.refine_iterations, c.inference.refine_probe) == (0, True)
    assert c.model.border_activation == changed["Model", "border_activation"]
    assert c.model.object_init == changed["Model", "object_init"]
    assert c.model.normalization == changed["Model", "normalization"]
    assert c.training.supervised_labels == changed["Training", "supervised_labels"]
    assert c.training.model is c.model and c.inference.model is c.model
    assert (c.training.scheduler, c.training.lr_warmup_epochs, c.training.lr_min_ratio) == (
        "WarmupCosine", 3, 0.25)
    assert (c.execution.accelerator, c.execution.gpu_indices, c.execution.precision,
            c.execution.seed) == ("cpu", (0, 1), "bf16-mixed", 7)
    for spec in SETTINGS:  # each declared target is a real config field
        kind, _, field_name = spec.target.partition(".")
        if kind != "plugin":
            assert hasattr(getattr(c, kind), field_name), spec


@pytest.mark.parametrize(("group", "key", "value", "section"), [
    ("Training", "batch_size", 0, "[PtychoPINNPyTorchTraining] batch_size"),
    ("Training", "nepochs", -1, "[PtychoPINNPyTorchTraining] nepochs"),
    ("Model", "gridsize", 9, "[PtychoPINNPyTorchModel] gridsize"),
    ("Execution", "device", "tpu", "[PtychoPINNPyTorchExecution] device"),
    ("Execution", "precision", "8-bit", "[PtychoPINNPyTorchExecution] precision"),
    ("Execution", "gpu_indices", "first", "[PtychoPINNPyTorchExecution] gpu_indices"),
    ("Inference", "refine_iterations", -1, "[PtychoPINNPyTorchInference] refine_iterations"),
    ("Model", "border_activation", "tanh", "[PtychoPINNPyTorchModel] border_activation"),
    ("Model", "object_init", "zeros", "[PtychoPINNPyTorchModel] object_init"),
    ("Model", "normalization", "layer", "[PtychoPINNPyTorchModel] normalization"),
    ("Training", "scheduler", "Cosine", "[PtychoPINNPyTorchTraining] scheduler"),
    ("Training", "lr_warmup_epochs", -1, "[PtychoPINNPyTorchTraining] lr_warmup_epochs"),
    ("Training", "lr_min_ratio", 1.5, "[PtychoPINNPyTorchTraining] lr_min_ratio"),
    ("Training", "supervised_labels", "truth", "[PtychoPINNPyTorchTraining] supervised_labels"),
])
def test_out_of_range_values_name_the_settings_key(settings, group, key, value, section):
    settings.parameter(group, key).set_value(value)
    with pytest.raises(SettingsError) as info:
        build_configs(settings, model_type="pinn", N=64)
    assert section in str(info.value)


def test_unsupported_pattern_size_is_explained(settings):
    with pytest.raises(SettingsError, match="64, 128 or 256"):
        build_configs(settings, model_type="pinn", N=100)


def test_refinement_settings_are_inference_fields_with_its_defaults():
    specs = {spec.key: spec for spec in SETTINGS if spec.group == "Inference"}
    default = InferenceConfig()
    assert specs["refine_iterations"].target == "inference.refine_iterations"
    assert specs["refine_iterations"].default == default.refine_iterations
    assert specs["refine_probe"].target == "inference.refine_probe"
    assert specs["refine_probe"].default is default.refine_probe
    assert not specs["refine_iterations"].zero_means  # 0 passes means 0, not None


def test_stitch_exponent_setting_zero_is_automatic(settings):
    """The float setting cannot hold None: its 0 (the default) stands for automatic."""
    configs = build_configs(settings, model_type="supervised", N=64)
    assert configs.inference.stitch_weight_exponent is None
    assert configs.inference.stitch_exponent(configs.model.model_type) == 3.0
    settings.parameter("Inference", "stitch_weight_exponent").set_value(2.5)
    assert build_configs(settings, model_type="supervised", N=64).inference.stitch_weight_exponent == 2.5
    settings.parameter("Inference", "stitch_weight_exponent").set_value(-1.0)
    with pytest.raises(SettingsError, match=r"\[PtychoPINNPyTorchInference\] stitch_weight_exponent"):
        build_configs(settings, model_type="pinn", N=64)


def test_choice_errors_list_the_allowed_values(settings):
    settings.parameter("Model", "border_activation").set_value("tanh")
    with pytest.raises(SettingsError) as info:
        build_configs(settings, model_type="pinn", N=64)
    message = str(info.value)
    assert "'tanh'" in message and all(repr(c) in message for c in BORDER_ACTIVATIONS)


@pytest.mark.parametrize(("group", "key", "target", "choices"), [
    ("Model", "border_activation", "model.border_activation", BORDER_ACTIVATIONS),
    ("Model", "object_init", "model.object_init", OBJECT_INITS),
    ("Model", "normalization", "model.normalization", NORMALIZATIONS),
    ("Training", "scheduler", "training.scheduler", SCHEDULERS),
    ("Training", "lr_warmup_epochs", "training.lr_warmup_epochs", ()),
    ("Training", "lr_min_ratio", "training.lr_min_ratio", ()),
    ("Training", "supervised_labels", "training.supervised_labels", SUPERVISED_LABELS),
])
def test_convergence_settings_map_to_their_fields(group, key, target, choices):
    spec = next(s for s in SETTINGS if (s.group, s.key) == (group, key))
    assert spec.target == target
    assert spec.default == _field_default(target)
    assert type(spec.default) is type(_field_default(target))  # int/float/str parameter kind
    assert spec.choices == choices  # choices -> a combo box on the GUI page
    assert not spec.zero_means  # 0 warm-up epochs / a 0 ratio mean 0, not None


def test_settings_default_to_the_dataclass_defaults():
    """Apart from the documented "0 = ..." settings, a setting starts at its field's default."""
    for spec in SETTINGS:
        kind = spec.target.partition(".")[0]
        if kind == "plugin" or spec.zero_means or spec.target == "execution.gpu_indices":
            continue
        assert spec.default == _field_default(spec.target), spec


def test_ini_file_sets_values(tmp_path):
    registry = SettingsRegistry()
    settings = PluginSettings(registry)
    ini = tmp_path / "settings.ini"
    ini.write_text("[PtychoPINNPyTorchTraining]\nnepochs = 7\nnphotons = 0\n"
                   "scheduler = WarmupCosine\nlr_warmup_epochs = 2\nlr_min_ratio = 0.05\n"
                   "[PtychoPINNPyTorchModel]\nborder_activation = swish\nobject_init = random\n"
                   "[PtychoPINNPyTorchInference]\nrefine_iterations = 12\nrefine_probe = True\n"
                   "[PtychoPINNPyTorchExecution]\ndevice = cuda\ngpu_indices = 1\n"
                   "run_in_subprocess = False\n")
    registry.open_settings(ini)
    c = build_configs(settings, model_type="pinn", N=64)
    assert c.training.nepochs == 7 and c.training.nphotons is None
    assert c.execution.accelerator == "cuda" and c.execution.gpu_indices == (1,)
    assert settings.run_in_subprocess is False
    assert (c.inference.refine_iterations, c.inference.refine_probe) == (12, True)
    assert (c.model.border_activation, c.model.object_init) == ("swish", "random")
    assert (c.training.scheduler, c.training.lr_warmup_epochs, c.training.lr_min_ratio) == (
        "WarmupCosine", 2, 0.05)


def _docs_row(spec) -> str:
    default = "(empty)" if spec.default == "" else str(spec.default)
    row = (f"| `{spec.key}` | `{default}` | `{spec.target}` | {spec.label.rstrip(':')} | "
           f"{spec.help}")
    if spec.choices:
        row += " One of: " + ", ".join(f"`{c}`" for c in spec.choices) + "."
    if spec.zero_means:
        row += f" **0 = {spec.zero_means}** (`None` in the config)."
    return row + " |"


def test_docs_list_every_setting():
    text = DOCS.read_text()
    for spec in SETTINGS:
        assert f"`{spec.key}`" in text and spec.section in text, spec
        assert spec.target in text, spec


def test_docs_rows_match_the_declarations():
    """Each setting's row (default, field, label, help, choices) is in its section's table."""
    text = DOCS.read_text()
    sections = {}
    for part in text.split("### `[")[1:]:
        name, _, body = part.partition("]`")
        sections[name] = body
    for spec in SETTINGS:
        row = _docs_row(spec)
        assert row in sections.get(spec.section, ""), (
            f"docs/settings.md, section [{spec.section}]: expected the row\n{row}")
