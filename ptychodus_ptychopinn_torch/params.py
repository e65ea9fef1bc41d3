"""The legacy flat parameter dict (PtychoPINN's ``ptycho.params.cfg``) and its bridge.

PtychoPINN code reads a process-wide flat dict. This module keeps one (`cfg`) with
PtychoPINN's legacy defaults and fills it from the config dataclasses with PtychoPINN's own
semantics: the nested ``model`` is flattened into the top level, a few keys are renamed
(`KEY_MAPPINGS`), ``Path`` values become ``str`` and ``None`` never overwrites a value.

Nothing in the engine reads `cfg` to make decisions: configs are passed explicitly. The view
exists so that code written against PtychoPINN's ``params.cfg`` sees consistent values.
This module must not import torch.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_CFG",
    "KEY_MAPPINGS",
    "cfg",
    "dataclass_to_legacy_dict",
    "update_legacy_dict",
    "get_bigN",
    "get_padding_size",
    "get_padded_size",
    "reset",
]

#: PtychoPINN's legacy defaults (``ptycho/params.py``), which differ in places from the
#: dataclass defaults (N 128 vs 64, gridsize 2 vs 1, ...); after `update_legacy_dict` the
#: dataclass values win.
DEFAULT_CFG: dict[str, Any] = {
    "N": 128,
    "offset": 4,
    "gridsize": 2,
    "outer_offset_train": None,
    "outer_offset_test": None,
    "batch_size": 16,
    "nepochs": 60,
    "n_filters_scale": 2,
    "output_prefix": "outputs",
    "big_gridsize": 10,
    "max_position_jitter": 10,
    "sim_jitter_scale": 0.0,
    "default_probe_scale": 0.7,
    "mae_weight": 0.0,
    "nll_weight": 1.0,
    "tv_weight": 0.0,
    "realspace_mae_weight": 0.0,
    "realspace_weight": 0.0,
    "nphotons": 1e9,
    "nimgs_train": 9,
    "nimgs_test": 3,
    "data_source": "generic",
    "probe.trainable": False,
    "intensity_scale.trainable": False,
    "positions.provided": False,
    "object.big": True,
    "probe.big": False,
    "probe_scale": 10.0,
    "set_phi": False,
    "probe.mask": True,
    "pad_object": True,
    "model_type": "pinn",
    "label": "",
    "size": 392,
    "amp_activation": "sigmoid",
    "h5_path": "wts.h5",
    "npseed": 42,
    "debug": True,
    "gaussian_smoothing_sigma": 0.0,
    "use_xla_translate": True,
}

#: Dataclass field name -> legacy key (PtychoPINN ``dataclass_to_legacy_dict``).
KEY_MAPPINGS: dict[str, str] = {
    "object_big": "object.big",
    "probe_big": "probe.big",
    "probe_mask": "probe.mask",
    "probe_trainable": "probe.trainable",
    "intensity_scale_trainable": "intensity_scale.trainable",
    "positions_provided": "positions.provided",
    "output_dir": "output_prefix",
    "train_data_file": "train_data_file_path",
    "test_data_file": "test_data_file_path",
}

#: The process-wide legacy dict.
cfg: dict[str, Any] = copy.deepcopy(DEFAULT_CFG)


def reset() -> None:
    """Restore `cfg` to `DEFAULT_CFG` in place (tests use it)."""
    cfg.clear()
    cfg.update(copy.deepcopy(DEFAULT_CFG))


def _require_dataclass(config: Any) -> None:
    if isinstance(config, dict):
        raise TypeError(
            "expected a config dataclass (ModelConfig, TrainingConfig or InferenceConfig), "
            "got a dict; build the dataclass first"
        )
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a config dataclass instance, got {type(config).__name__}")


def dataclass_to_legacy_dict(config: Any) -> dict[str, Any]:
    """Flatten a config dataclass into legacy keys.

    ``model`` is flattened into the top level, mapped keys are renamed with ``Path`` -> ``str``,
    other keys keep their names and values (``None`` included; unmapped ``Path`` stays ``Path``).
    """
    _require_dataclass(config)
    data = dataclasses.asdict(config)
    model = data.pop("model", None)
    if isinstance(model, dict):
        data.update(model)
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in KEY_MAPPINGS:
            out[KEY_MAPPINGS[key]] = str(value) if isinstance(value, Path) else value
        else:
            out[key] = value
    return out


def update_legacy_dict(cfg: dict[str, Any], config: Any) -> None:
    """Write every non-``None`` legacy value of ``config`` into ``cfg`` (``Path`` -> ``str``).

    Like PtychoPINN's, it does no validation (the dataclasses validate themselves) and leaves
    alone the keys the dataclass does not produce (``offset``, ``intensity_scale``, ...).
    """
    for key, value in dataclass_to_legacy_dict(config).items():
        if value is None:
            continue
        cfg[key] = str(value) if isinstance(value, Path) else value


def get_bigN(params: dict[str, Any] | None = None) -> int:
    """``N + (gridsize - 1) * offset``."""
    p = cfg if params is None else params
    return int(p["N"] + (p["gridsize"] - 1) * p["offset"])


def get_padding_size(params: dict[str, Any] | None = None) -> int:
    """``(gridsize - 1) * offset + max_position_jitter``."""
    p = cfg if params is None else params
    return int((p["gridsize"] - 1) * p["offset"] + p["max_position_jitter"])


def get_padded_size(params: dict[str, Any] | None = None) -> int:
    """``bigN + max_position_jitter`` (N=64, gridsize=2 -> 78)."""
    p = cfg if params is None else params
    return get_bigN(p) + int(p["max_position_jitter"])
