"""The single ``.ckpt`` model file: weights, configs, constants, probe and provenance.

The file is a plain ``torch.save`` of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)``: a model file from a colleague cannot execute code.
It is written atomically (temporary file in the same directory, then ``os.replace``) so a
failed or cancelled write never replaces a good model. See docs/model-file.md.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import ModelConfig, TrainingConfig, config_to_dict, stored_training_config
from .model.pinn import PhysicsConstants, PtychoPINN

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelBundle", "save_model", "load_model", "build_model"]

FORMAT = "ptychodus-ptychopinn-torch/model"
FORMAT_VERSION = 1


@dataclass
class ModelBundle:
    """A trained model with everything needed to run and describe it."""

    network: PtychoPINN
    training_config: TrainingConfig
    constants: PhysicsConstants
    probe: np.ndarray  # (N, N) complex64, the probe used for training (not normalised)
    history: dict[str, list[float]] = field(default_factory=lambda: {"train_loss": [], "val_loss": []})
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def model_config(self) -> ModelConfig:
        return self.training_config.model


def build_model(training: TrainingConfig, constants: PhysicsConstants, probe: np.ndarray) -> PtychoPINN:
    """Construct the (untrained) network the configs and constants describe."""
    return PtychoPINN(
        training.model,
        constants,
        torch.as_tensor(np.asarray(probe, dtype=np.complex64)),
        intensity_scale_trainable=training.intensity_scale_trainable,
        probe_trainable=training.probe_trainable,
    )


def _plain(value: Any) -> Any:
    """Convert provenance values to types ``weights_only`` loading accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):
        return str(value)  # str subclasses (torch's TorchVersion) are not weights_only-safe
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return str(value)


def save_model(bundle: ModelBundle, path: str | os.PathLike) -> Path:
    """Write ``bundle`` to ``path`` atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu") for k, v in bundle.network.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "training_config": config_to_dict(bundle.training_config),
        "constants": bundle.constants.to_dict(),
        "probe": torch.as_tensor(np.asarray(bundle.probe, dtype=np.complex64)),
        "state_dict": state,
        "history": _plain(bundle.history),
        "provenance": _plain(bundle.provenance),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: Globals a weights-only model file may name; any other one would be imported and called.
_DATA_MODULES = ("torch", "collections", "_codecs", "builtins", "copyreg")
_MAX_SCAN_BYTES = 64 * 2**20


def _pickle_bytes(path: Path) -> bytes:
    """The pickle of a ``torch.save`` archive (its ``data.pkl``), else the file's first bytes."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if names:
                with archive.open(min(names, key=len)) as handle:
                    return handle.read(_MAX_SCAN_BYTES)
        return b""
    with open(path, "rb") as handle:
        return handle.read(_MAX_SCAN_BYTES)


def _code_globals(path: Path) -> list[str] | None:
    """The ``module.name`` globals outside plain data that the file's pickle would import and
    call, read with `pickletools` (which executes nothing); None when it is not a pickle."""
    try:
        data = _pickle_bytes(path)
        found: list[str] = []
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - truncated, not a pickle, not a zip: not ours either way
        return None
    return [name for name in found if name.split(".")[0] not in _DATA_MODULES]


def _refused_message(path: Path) -> str:
    """Why a file torch refused to load weights-only is not loaded, without torch's advice.

    torch suggests retrying with ``weights_only=False``, which would run the file's code; a
    model file from a colleague must never be able to do that, so the advice is not passed on.
    """
    code = _code_globals(path)
    if code:
        return (f"{path} is not a PtychoPINN (PyTorch) model file: it holds pickled Python "
                f"objects (it refers to {', '.join(dict.fromkeys(code))}), and loading it would "
                "run code from it, so it was not loaded. PtychoPINN (PyTorch) model files hold "
                "only tensors and plain data; use a .ckpt written by PtychoPINN (PyTorch) "
                "training")
    return (f"{path} is not a readable PtychoPINN (PyTorch) model file (corrupt, truncated or "
            "another kind of file: torch cannot read it as tensors and plain data)")


def read_payload(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check the raw payload; ``ValueError`` names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # a pickle needing code, or no pickle at all
        raise ValueError(_refused_message(path)) from None
    except Exception as exc:  # corrupt or truncated
        raise ValueError(
            f"{path} is not a readable PtychoPINN (PyTorch) model file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a PtychoPINN (PyTorch) model file (expected format {FORMAT!r}); "
            "Lightning checkpoints and models of other reconstructors cannot be loaded"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has model-file version {version!r}; this package "
            f"({__version__}) reads versions up to {FORMAT_VERSION}: upgrade ptychodus-ptychopinn-torch"
        )
    return payload


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ModelBundle:
    """Rebuild the `ModelBundle` stored in ``path`` (weights loaded strictly)."""
    payload = read_payload(path, map_location)
    try:
        training = stored_training_config(payload["training_config"])
        constants = PhysicsConstants.from_dict(payload["constants"])
        probe = payload["probe"].cpu().numpy().astype(np.complex64)
        network = build_model(training, constants, probe)
        network.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} is an incompatible or damaged model file: {exc}") from exc
    network.to(map_location)
    network.eval()
    return ModelBundle(
        network=network,
        training_config=training,
        constants=constants,
        probe=probe,
        history={k: list(v) for k, v in payload.get("history", {}).items()},
        provenance=dict(payload.get("provenance", {})),
    )


def read_model_configs(path: str | os.PathLike) -> tuple[TrainingConfig, dict[str, Any]]:
    """The stored `TrainingConfig` and constants, without building the network."""
    payload = read_payload(path)
    return stored_training_config(payload["training_config"]), dict(payload["constants"])
