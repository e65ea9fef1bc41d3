"""Config dataclasses: PtychoPINN defaults, validation messages, plain-dict round trip."""

import dataclasses
from pathlib import Path

import pytest

from ptychodus_ptychopinn_torch.config import (
    ExecutionConfig,
    InferenceConfig,
    ModelConfig,
    TrainingConfig,
    config_from_dict,
    config_to_dict,
)


def test_model_defaults_are_ptychopinns():
    m = ModelConfig()
    assert (m.N, m.gridsize, m.n_filters_scale, m.model_type, m.amp_activation) == (64, 1, 2, "pinn", "sigmoid")
    assert (m.object_big, m.probe_big, m.probe_mask, m.pad_object, m.probe_scale) == (True, True, False, True, 4.0)
    assert m.gaussian_smoothing_sigma == 0.0 and m.architecture == "cnn"


def test_training_defaults_are_ptychopinns():
    t = TrainingConfig()
    assert (t.batch_size, t.nepochs, t.nll_weight, t.mae_weight, t.n_groups, t.neighbor_count) == (16, 50, 1.0, 0.0, 512, 4)
    assert t.nphotons is None  # measured from the data unless given
    assert t.intensity_scale_trainable is True and t.probe_trainable is False
    assert t.output_dir == Path("training_outputs") and t.learning_rate == 1e-3
    assert (t.plateau_factor, t.plateau_patience, t.plateau_min_lr) == (0.5, 2, 5e-5)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ModelConfig(N=100), r"ModelConfig.N=100 is invalid; expected one of 64, 128, 256"),
        (lambda: ModelConfig(gridsize=0), r"ModelConfig.gridsize=0 .* positive integer"),
        (lambda: ModelConfig(amp_activation="tanh"), r"amp_activation='tanh'.*'sigmoid'"),
        (lambda: ModelConfig(model_type="gan"), r"model_type='gan'"),
        (lambda: ModelConfig(probe_scale=-1.0), r"probe_scale=-1.0 .* positive number"),
        (lambda: ModelConfig(object_big="yes"), r"object_big='yes' .* True or False"),
        (lambda: TrainingConfig(batch_size=0), r"TrainingConfig.batch_size=0 .* positive integer"),
        (lambda: TrainingConfig(nepochs=-3), r"nepochs=-3"),
        (lambda: TrainingConfig(nphotons=0), r"nphotons=0"),
        (lambda: TrainingConfig(mae_weight=2.0), r"mae_weight=2.0 .* \[0.0, 1.0\]"),
        (lambda: TrainingConfig(model=ModelConfig(gridsize=2), neighbor_count=3), r"neighbor_count=3 .* at least gridsize\*\*2 = 4"),
        (lambda: TrainingConfig(learning_rate=0), r"learning_rate=0"),
        (lambda: TrainingConfig(scheduler="Cyclic"), r"scheduler='Cyclic'"),
        (lambda: TrainingConfig(validation_fraction=0.9), r"validation_fraction=0.9"),
        (lambda: TrainingConfig(model={"N": 64}), r"TrainingConfig.model=.* a ModelConfig"),
        (lambda: InferenceConfig(n_groups=0), r"InferenceConfig.n_groups=0"),
        (lambda: InferenceConfig(stitch_weight_exponent=-1.0),
         r"InferenceConfig.stitch_weight_exponent=-1.0 is invalid; expected None \(automatic: 3 for "
         r"supervised models, 2 for the PINN\) or a number in \(0, 16\]"),
        (lambda: InferenceConfig(stitch_weight_exponent=0), r"stitch_weight_exponent=0 is invalid"),
        (lambda: InferenceConfig(stitch_weight_exponent="3"), r"stitch_weight_exponent='3' is invalid"),
        # the checks TrainingConfig and InferenceConfig share name their own class
        (lambda: TrainingConfig(n_groups=1.5), r"TrainingConfig.n_groups=1.5 .* positive integer"),
        (lambda: TrainingConfig(n_subsample=0), r"TrainingConfig.n_subsample=0 .* positive integer"),
        (lambda: InferenceConfig(n_subsample=-2), r"InferenceConfig.n_subsample=-2 .* positive integer"),
        (lambda: InferenceConfig(neighbor_count=0), r"InferenceConfig.neighbor_count=0 .* positive integer"),
        (lambda: InferenceConfig(model=ModelConfig(gridsize=3), neighbor_count=8),
         r"InferenceConfig.neighbor_count=8 is invalid; expected at least gridsize\*\*2 = 9"),
        (lambda: InferenceConfig(model="pinn"), r"InferenceConfig.model='pinn' is invalid; expected a ModelConfig"),
        (lambda: ExecutionConfig(accelerator="tpu"), r"accelerator='tpu' .* 'auto', 'cpu', 'cuda', 'gpu'"),
        (lambda: ExecutionConfig(precision="fp8"), r"precision='fp8'"),
        (lambda: ExecutionConfig(num_workers=-1), r"num_workers=-1"),
        (lambda: ExecutionConfig(gpu_indices=(0, -1)), r"gpu_indices"),
    ],
)
def test_bad_values_name_field_value_and_allowed(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_stitch_exponent_is_automatic_by_model_type_unless_given():
    """None picks 3 for supervised models (sharper on every refined-labels case) and 2 for the
    PINN (3 blurs the gridsize-2 PINN); docs/performance.md, "Stitching weight"."""
    auto = InferenceConfig()
    assert auto.stitch_weight_exponent is None
    assert (auto.stitch_exponent("supervised"), auto.stitch_exponent("pinn")) == (3.0, 2.0)
    assert InferenceConfig(stitch_weight_exponent=2.5).stitch_exponent("supervised") == 2.5
    assert InferenceConfig(stitch_weight_exponent=4).stitch_exponent("pinn") == 4.0


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelConfig().N = 128  # type: ignore[misc]


def test_string_paths_become_paths():
    t = TrainingConfig(output_dir="out", train_data_file="a.npz")
    assert t.output_dir == Path("out") and t.train_data_file == Path("a.npz")
    i = InferenceConfig(model_path="m.ckpt", test_data_file="b.npz", output_dir="o")
    assert (i.model_path, i.test_data_file, i.output_dir) == (Path("m.ckpt"), Path("b.npz"), Path("o"))
    assert TrainingConfig(model=ModelConfig(gridsize=1), neighbor_count=1).neighbor_count == 1


@pytest.mark.parametrize(
    "config",
    [
        TrainingConfig(model=ModelConfig(N=128, gridsize=2), nphotons=1e6, output_dir=Path("x")),
        InferenceConfig(model=ModelConfig(model_type="supervised"), model_path=Path("m.ckpt")),
        ExecutionConfig(accelerator="cpu", gpu_indices=(1, 2), precision="bf16-mixed"),
        ModelConfig(probe_mask=True),
    ],
)
def test_plain_dict_round_trip(config):
    data = config_to_dict(config)
    assert all(not isinstance(v, Path) for v in data.values())
    assert config_from_dict(type(config), data) == config


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown TrainingConfig fields: bogus"):
        config_from_dict(TrainingConfig, {"bogus": 1})


def test_importing_configs_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; import ptychodus_ptychopinn_torch, ptychodus_ptychopinn_torch.config, "
        "ptychodus_ptychopinn_torch.params; print('torch' in sys.modules, 'lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_stored_training_config_fills_fields_older_model_files_lack():
    """Model files from before border_activation/object_init/normalization keep the network they were trained
    with; fields present in the file always win."""
    from ptychodus_ptychopinn_torch.config import config_to_dict, stored_training_config

    stored = config_to_dict(TrainingConfig(model=ModelConfig(border_activation="head", object_init="flat",
                                                             normalization="batch")))
    assert stored_training_config(stored).model.border_activation == "head"
    assert stored_training_config(stored).model.normalization == "batch"
    for name in ("border_activation", "object_init", "normalization"):
        del stored["model"][name]
    old = stored_training_config(stored)
    assert (old.model.border_activation, old.model.object_init, old.model.normalization) == (
        "swish", "random", "none")
