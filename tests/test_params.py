"""The legacy flat dict and its bridge follow PtychoPINN's semantics exactly."""

import json
from pathlib import Path

import pytest

from ptychodus_ptychopinn_torch import params
from ptychodus_ptychopinn_torch.config import InferenceConfig, ModelConfig, TrainingConfig

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_params_defaults.json"


@pytest.mark.parametrize("name, config", [("training", TrainingConfig()), ("inference", InferenceConfig()),
                                          ("model", ModelConfig())])
def test_full_legacy_dict_from_default_configs_is_pinned(name, config):
    params.update_legacy_dict(params.cfg, config)
    expected = json.loads(FIXTURE.read_text())[name]
    assert json.loads(json.dumps(params.cfg)) == expected


def test_legacy_defaults_differ_from_dataclass_defaults_until_updated():
    assert (params.cfg["N"], params.cfg["gridsize"], params.cfg["probe.big"], params.cfg["probe.mask"]) == (128, 2, False, True)
    assert params.cfg["probe_scale"] == 10.0 and params.cfg["intensity_scale.trainable"] is False
    params.update_legacy_dict(params.cfg, TrainingConfig())
    assert (params.cfg["N"], params.cfg["gridsize"], params.cfg["probe.big"], params.cfg["probe.mask"]) == (64, 1, True, False)
    assert params.cfg["probe_scale"] == 4.0 and params.cfg["intensity_scale.trainable"] is True


def test_flatten_model_and_rename_mapped_keys():
    config = TrainingConfig(model=ModelConfig(N=128, gridsize=2, object_big=False), probe_trainable=True,
                            output_dir=Path("/tmp/run"), train_data_file=Path("/d/train.npz"))
    legacy = params.dataclass_to_legacy_dict(config)
    assert "model" not in legacy and legacy["N"] == 128 and legacy["gridsize"] == 2
    assert legacy["object.big"] is False and "object_big" not in legacy
    assert legacy["probe.trainable"] is True and legacy["positions.provided"] is True
    assert legacy["output_prefix"] == "/tmp/run" and legacy["train_data_file_path"] == "/d/train.npz"
    assert legacy["test_data_file_path"] is None  # None kept in the flat dict ...


def test_none_never_overwrites_and_paths_become_strings():
    params.cfg["nphotons"] = 1e7
    params.cfg["test_data_file_path"] = "keep.npz"
    params.update_legacy_dict(params.cfg, TrainingConfig(nphotons=None, test_data_file=None))
    assert params.cfg["nphotons"] == 1e7 and params.cfg["test_data_file_path"] == "keep.npz"  # ... but never written
    params.update_legacy_dict(params.cfg, InferenceConfig(model_path=Path("/m/model.ckpt")))
    assert params.cfg["model_path"] == "/m/model.ckpt"


def test_unmapped_paths_stay_paths_in_the_flat_dict():
    legacy = params.dataclass_to_legacy_dict(InferenceConfig(model_path=Path("m.ckpt")))
    assert legacy["model_path"] == Path("m.ckpt")


def test_keys_the_dataclass_does_not_produce_are_left_alone():
    params.cfg["intensity_scale"] = 123.0
    params.update_legacy_dict(params.cfg, TrainingConfig())
    assert params.cfg["intensity_scale"] == 123.0 and params.cfg["offset"] == 4 and params.cfg["max_position_jitter"] == 10


def test_dict_instead_of_dataclass_is_a_type_error():
    with pytest.raises(TypeError, match="got a dict"):
        params.update_legacy_dict(params.cfg, {"N": 64})
    with pytest.raises(TypeError):
        params.dataclass_to_legacy_dict(TrainingConfig)


def test_size_helpers():
    params.update_legacy_dict(params.cfg, TrainingConfig(model=ModelConfig(N=64, gridsize=2)))
    assert params.get_bigN() == 68 and params.get_padding_size() == 14 and params.get_padded_size() == 78


def test_key_mappings_are_ptychopinns():
    assert params.KEY_MAPPINGS == {
        "object_big": "object.big", "probe_big": "probe.big", "probe_mask": "probe.mask",
        "probe_trainable": "probe.trainable", "intensity_scale_trainable": "intensity_scale.trainable",
        "positions_provided": "positions.provided", "output_dir": "output_prefix",
        "train_data_file": "train_data_file_path", "test_data_file": "test_data_file_path",
    }
