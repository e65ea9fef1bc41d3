"""The PtychoPINN (PyTorch) settings page of the Ptychodus GUI.

Built with Ptychodus's own ``ParameterViewBuilder`` from the declarations in `settings.SETTINGS`,
so every setting is editable in the GUI (without a page Ptychodus shows "not found!" and a
read-only settings table). Imports Qt: only the GUI hook of `install()` imports this module.
"""

from __future__ import annotations

from typing import Any

from PyQt5.QtCore import Qt
from PyQt5.QtWidgets import QLabel, QWidget

from ptychodus.controller.parameters import ParameterViewBuilder, ParameterViewController
from ptychodus.controller.processing import ReconstructorViewControllerFactory

from .settings import SETTINGS

__all__ = ["PtychoPINNTorchViewControllerFactory", "PAGE_TITLE"]

PAGE_TITLE = "PtychoPINN (PyTorch)"
_GROUP_TITLES = {
    "Model": "Model",
    "Training": "Training",
    "Inference": "Inference",
    "Execution": "Execution",
}


class _TitleViewController(ParameterViewController):
    """A heading that names the library and reconstructor at the top of the page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self._widget = QLabel(f"<b>{text}</b>")
        self._widget.setObjectName("ptychopinnTorchPageTitle")
        self._widget.setAlignment(Qt.AlignmentFlag.AlignLeft)

    def get_widget(self) -> QWidget:
        return self._widget


class PtychoPINNTorchViewControllerFactory(ReconstructorViewControllerFactory):
    """One page per reconstructor (PINN, Supervised); both edit the same settings."""

    def __init__(self, library: Any, file_dialog_factory: Any = None) -> None:
        super().__init__()
        self._library = library
        self._file_dialog_factory = file_dialog_factory

    @property
    def name(self) -> str:
        return str(self._library.name)

    def create_view_controller(self, reconstructor_name: str) -> QWidget:
        settings = self._library.settings
        builder = ParameterViewBuilder(self._file_dialog_factory)
        title = f"{PAGE_TITLE}: {_display_name(self._library, reconstructor_name)}"
        builder.add_view_controller_to_top(_TitleViewController(title))

        for spec in SETTINGS:
            parameter = settings.parameter(spec.group, spec.key)
            group = _GROUP_TITLES.get(spec.group, spec.group)
            tip = f"{spec.help}\n[{spec.section}] {spec.key}"

            if spec.choices:
                builder.add_combo_box(parameter, spec.choices, spec.label, tool_tip=tip,
                                      group=group)
            elif isinstance(spec.default, bool):
                builder.add_check_box(parameter, spec.label, tool_tip=tip, group=group)
            elif isinstance(spec.default, int):
                builder.add_integer_line_edit(parameter, spec.label, tool_tip=tip, group=group)
            elif isinstance(spec.default, float):
                builder.add_decimal_line_edit(parameter, spec.label, tool_tip=tip, group=group)
            else:
                builder.add_line_edit(parameter, spec.label, tool_tip=tip, group=group)

        widget = builder.build_widget()
        widget.setObjectName("ptychopinnTorchSettingsPage")
        widget.setWindowTitle(title)
        return widget


def _display_name(library: Any, reconstructor_name: str) -> str:
    for reconstructor in library:
        if reconstructor.name.casefold() == reconstructor_name.casefold():
            return str(reconstructor.name)
    return reconstructor_name
