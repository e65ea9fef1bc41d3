"""Read a model file's configs and history in the Ptychodus process, without torch.

``load_model_from_file`` must say at once whether a file is a PtychoPINN (PyTorch) model
(GUI "Load Model...", batch ``IN/model.ckpt``), but the Ptychodus process may not import
torch. A ``torch.save`` file is a zip archive whose ``data.pkl`` holds the payload; tensors in
it are references to separate storage records. This reader unpickles ``data.pkl`` with a
restricted unpickler that replaces every torch object by a placeholder and refuses any other
global, so it reads the plain-data part (format, configs, history, provenance) and never runs
code from the file. The weights are checked later, in the worker, by
`ptychodus_ptychopinn_torch.checkpoint.load_model`.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ModelConfig, TrainingConfig, stored_training_config

__all__ = ["MODEL_FORMAT", "MODEL_FORMAT_VERSION", "ModelFileInfo", "read_model_file_info"]

# Must match ptychodus_ptychopinn_torch.checkpoint.FORMAT / FORMAT_VERSION (a test checks).
MODEL_FORMAT = "ptychodus-ptychopinn-torch/model"
MODEL_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelFileInfo:
    """What the parent needs to know about a model file."""

    path: Path
    training_config: TrainingConfig
    history: dict[str, list[float]]
    provenance: dict[str, Any]

    @property
    def model_config(self) -> ModelConfig:
        return self.training_config.model


class _Placeholder:
    """Stands for any torch object (tensor, storage, dtype) in the payload."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Placeholder:
        return _Placeholder()

    def __setstate__(self, state: Any) -> None:
        pass


class _CodeRefused(pickle.UnpicklingError):
    """The payload names a global outside plain data: unpickling it would run code."""


class _PayloadUnpickler(pickle.Unpickler):
    _ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" or module.startswith("torch."):
            return _Placeholder
        try:
            return self._ALLOWED[module, name]
        except KeyError:
            raise _CodeRefused(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        return _Placeholder()


def _not_a_model(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{path} is not a PtychoPINN (PyTorch) model file ({why}); expected a .ckpt written by "
        "PtychoPINN (PyTorch) training. Lightning checkpoints of the built-in PtychoPINN-Torch "
        "and models of other reconstructors cannot be loaded."
    )


def _read_payload(path: Path) -> Any:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not names:
                raise _not_a_model(path, "no data.pkl in the archive")
            with archive.open(min(names, key=len)) as handle:
                return _PayloadUnpickler(handle).load()
    except zipfile.BadZipFile:
        raise _not_a_model(path, "not a torch.save zip archive") from None
    except _CodeRefused as exc:
        raise _not_a_model(path, f"it holds pickled Python objects (it refers to {exc}), and "
                                 "loading it would run code from it, so it was not loaded") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
            TypeError) as exc:
        raise _not_a_model(path, f"unreadable payload: {exc}") from None


def read_model_file_info(path: str | Path) -> ModelFileInfo:
    """Check ``path`` and return its configs; ``ValueError``/``FileNotFoundError`` say why not."""
    path = Path(path)

    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")

    payload = _read_payload(path)

    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise _not_a_model(path, f"format is not {MODEL_FORMAT!r}")

    version = payload.get("format_version")

    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise ValueError(
            f"{path} has model-file version {version!r}; this plugin reads versions up to "
            f"{MODEL_FORMAT_VERSION}: upgrade ptychodus-ptychopinn-torch"
        )

    try:
        training = stored_training_config(payload["training_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is a damaged model file: bad training_config ({exc})") from exc

    history = payload.get("history") or {}
    return ModelFileInfo(
        path=path,
        training_config=training,
        history={str(k): [float(v) for v in vs] for k, vs in dict(history).items()},
        provenance=dict(payload.get("provenance") or {}),
    )
