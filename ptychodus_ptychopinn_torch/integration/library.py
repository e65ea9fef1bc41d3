"""The Ptychodus `ReconstructorLibrary` "PtychoPINN (PyTorch)" and its entry-point factory.

Selection keys are ``ptychopinn (pytorch)_pinn`` and ``ptychopinn (pytorch)_supervised``
(Ptychodus casefolds ``"<library>_<reconstructor>"`` and splits at the first ``_``, so the
library name has none). The logger is the package logger ``ptychodus_ptychopinn_torch``:
Ptychodus attaches its GUI log handler to it, so every module's records, the worker's
included, reach the processing log. Torch-free and Qt-free at import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from ptychodus.api.reconstruct import Reconstructor, ReconstructorLibrary
from ptychodus.api.settings import SettingsRegistry

from .reconstructor import PtychoPINNTorchReconstructor, RunOptions
from .settings import PluginSettings

__all__ = ["LIBRARY_NAME", "LOGGER_NAME", "PtychoPINNTorchLibrary", "create_library"]

LIBRARY_NAME = "PtychoPINN (PyTorch)"
LOGGER_NAME = "ptychodus_ptychopinn_torch"
RECONSTRUCTORS = (("PINN", "pinn"), ("Supervised", "supervised"))


class PtychoPINNTorchLibrary(ReconstructorLibrary):
    """Two trainable reconstructors sharing one set of settings groups."""

    def __init__(self, settings_registry: SettingsRegistry,
                 is_developer_mode_enabled: bool = False) -> None:
        super().__init__(LOGGER_NAME)
        self.settings = PluginSettings(settings_registry)
        self.options = RunOptions()
        self.is_developer_mode_enabled = is_developer_mode_enabled
        self.reconstructors = [
            PtychoPINNTorchReconstructor(name, model_type, self.settings, self.options,
                                         self.get_logger())
            for name, model_type in RECONSTRUCTORS
        ]

    @property
    def name(self) -> str:
        return LIBRARY_NAME

    def __iter__(self) -> Iterator[Reconstructor]:
        return iter(self.reconstructors)

    def __getitem__(self, name: str) -> PtychoPINNTorchReconstructor:
        for reconstructor in self.reconstructors:
            if reconstructor.name.casefold() == name.casefold():
                return reconstructor
        raise KeyError(f"{LIBRARY_NAME} has no reconstructor {name!r}; "
                       f"available: {', '.join(r.name for r in self.reconstructors)}")

    def bind_stop_flag(self, stop_requested: Callable[[], bool]) -> None:
        """Let Ptychodus's Stop button reach running workers (called by `install()`)."""
        self.options.stop_requested = stop_requested

    def create_view_controller_factory(self, file_dialog_factory: Any = None) -> Any:
        """The GUI settings-page factory (imports Qt; only called by the GUI hook)."""
        from .gui import PtychoPINNTorchViewControllerFactory

        return PtychoPINNTorchViewControllerFactory(self, file_dialog_factory)


def create_library(settings_registry: SettingsRegistry,
                   is_developer_mode_enabled: bool = False) -> PtychoPINNTorchLibrary:
    """Entry point ``ptychodus.reconstructors``: ``ptychopinn-pytorch``."""
    library = PtychoPINNTorchLibrary(settings_registry, is_developer_mode_enabled)
    logging.getLogger(__name__).debug("created %s library", LIBRARY_NAME)
    return library
