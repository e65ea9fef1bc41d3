"""The real Ptychodus GUI (offscreen): our entry, our settings page, Train and Infer.

Set PTYCHOPINN_SCREENSHOT_DIR to save the screenshots used in docs/user-guide.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy
import pytest

pytestmark = pytest.mark.gui

KEY = "ptychopinn (pytorch)_pinn"
TIMEOUT_MS = 600_000


def _form_field(page, label_text: str):
    """The editor widget next to ``label_text`` in one of the page's form layouts."""
    from PyQt5.QtWidgets import QFormLayout, QLabel

    for layout in page.findChildren(QFormLayout):
        for row in range(layout.rowCount()):
            label = layout.itemAt(row, QFormLayout.ItemRole.LabelRole)
            field = layout.itemAt(row, QFormLayout.ItemRole.FieldRole)
            if label and isinstance(label.widget(), QLabel) and \
                    label.widget().text() == label_text and field is not None:
                return field.widget()
    raise AssertionError(f"no field {label_text!r} on the page")


def _set_line_edit(widget, text: str) -> None:
    widget.setText(text)
    widget.editingFinished.emit()


def _screenshot(widget, name: str) -> None:
    directory = os.environ.get("PTYCHOPINN_SCREENSHOT_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        widget.grab().save(str(Path(directory) / name))


def test_page_edits_the_refinement_settings(qtbot):
    """Fast: the settings page alone, built from the declarations, edits both new settings."""
    from PyQt5.QtWidgets import QCheckBox
    from ptychodus.api.settings import SettingsRegistry

    from ptychodus_ptychopinn_torch.integration.library import create_library

    library = create_library(SettingsRegistry(), False)
    page = library.create_view_controller_factory().create_view_controller("PINN")
    qtbot.addWidget(page)

    _set_line_edit(_form_field(page, "Refinement Passes:"), "7")
    refine_probe = _form_field(page, "Refine Probe")
    assert isinstance(refine_probe, QCheckBox)
    refine_probe.setChecked(True)
    assert library.settings.value("Inference", "refine_iterations") == 7
    assert library.settings.value("Inference", "refine_probe") is True


@pytest.mark.slow
def test_gui_select_configure_train_and_infer(qtbot, scan_dir, tiny_scan):
    from PyQt5.QtCore import Qt
    from PyQt5.QtWidgets import QComboBox, QLabel
    from ptychodus.controller import ControllerCore
    from ptychodus.model import ModelCore
    from ptychodus.view import ViewCore

    with ModelCore() as model:
        view = ViewCore(is_developer_mode_enabled=False)
        qtbot.addWidget(view)
        controller = ControllerCore(model, view, is_developer_mode_enabled=False)
        controller.show_main_window("ptychodus (test)")
        view.processing_action.trigger()

        workflow = model.workflow_api
        diffraction = workflow.load_assembled_diffraction_data(scan_dir / "diffraction.h5")
        workflow.load_product(scan_dir / "product.h5", diffraction=diffraction)

        processing = controller._processing_controller
        combo = processing._algorithm_view_controller.get_widget()
        keys = [combo.itemText(i) for i in range(combo.count())]
        assert KEY in keys and "ptychopinn (pytorch)_supervised" in keys

        index = keys.index(KEY)
        combo.setCurrentIndex(index)
        combo.textActivated.emit(KEY)
        assert model.processing_core.algorithm_parameter.get_value() == KEY

        page = processing._stacked_widget.currentWidget()
        assert page.objectName() == "ptychopinnTorchSettingsPage"
        titles = [w.text() for w in page.findChildren(QLabel)]
        assert any("PtychoPINN (PyTorch)" in t for t in titles)
        stacked = processing._stacked_widget
        assert not any("not found" in w.text() for i in range(stacked.count())
                       for w in [stacked.widget(i)] if isinstance(w, QLabel))

        library = next(lib for lib in model.processing_core.algorithm_parameter._libraries
                       if lib.name == "PtychoPINN (PyTorch)")
        settings = library.settings
        _set_line_edit(_form_field(page, "Epochs:"), "1")
        _set_line_edit(_form_field(page, "Filter Scale:"), "1")
        _set_line_edit(_form_field(page, "Batch Size:"), "8")
        device = _form_field(page, "Device:")
        assert isinstance(device, QComboBox)
        device.setCurrentText("cpu")
        device.textActivated.emit("cpu")
        assert settings.value("Training", "nepochs") == 1
        assert settings.value("Model", "n_filters_scale") == 1
        assert settings.value("Execution", "device") == "cpu"
        _screenshot(view, "gui-settings-page.png")

        # Train: the GUI asks for a directory and passes it as input and output
        processing._file_dialog_factory.get_existing_directory_path = \
            lambda *args, **kwargs: scan_dir
        monitor = model.processing_core.processing_api.task_monitor
        status_view = view.processing_status_view
        actions = processing._actions_view
        assert actions.train_button.isVisible() and actions.train_button.isEnabled()
        # the PINN can reconstruct (fit the scan) before any model exists
        assert actions.reconstruct_button.text() == "Reconstruct"
        assert actions.reconstruct_button.isEnabled()
        qtbot.mouseClick(actions.train_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: status_view.stop_button.isVisible(), timeout=60_000)
        assert status_view.progress_bar.maximum() > 0
        reconstructor = library["PINN"]
        qtbot.waitUntil(lambda: not monitor.is_processing and reconstructor.is_model_loaded(),
                        timeout=TIMEOUT_MS)
        assert (scan_dir / "model.ckpt").is_file()

        # Infer becomes available once training ends
        qtbot.waitUntil(lambda: actions.reconstruct_button.text() == "Infer", timeout=10_000)
        assert actions.reconstruct_button.isEnabled()
        repository = model.product_core.product_repository
        count = len(repository)
        qtbot.mouseClick(actions.reconstruct_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: len(repository) == count + 1, timeout=10_000)
        qtbot.waitUntil(lambda: not monitor.is_processing and
                        len(repository[count].get_losses()) > 0, timeout=TIMEOUT_MS)
        _screenshot(view, "gui-after-infer.png")

        item = repository[count]
        assert KEY in item.get_name()
        before = tiny_scan.product.object_.get_layers_flattened()
        after = item.get_product().object_.get_layers_flattened()
        assert after.shape == before.shape and not numpy.allclose(after, before)
        for lib in model.processing_core.algorithm_parameter._libraries:
            lib.get_logger().removeHandler(monitor.get_log_handler())


def test_page_edits_the_convergence_settings(qtbot):
    """Fast: choice settings are combo boxes offering config.py's choices; numbers are edits."""
    from PyQt5.QtWidgets import QComboBox, QLineEdit
    from ptychodus.api.settings import SettingsRegistry

    from ptychodus_ptychopinn_torch.config import (
        BORDER_ACTIVATIONS, NORMALIZATIONS, OBJECT_INITS, SCHEDULERS, SUPERVISED_LABELS)
    from ptychodus_ptychopinn_torch.integration.library import create_library

    library = create_library(SettingsRegistry(), False)
    page = library.create_view_controller_factory().create_view_controller("PINN")
    qtbot.addWidget(page)

    for label, (group, key), choices, value in [
        ("Border Activation:", ("Model", "border_activation"), BORDER_ACTIVATIONS, "swish"),
        ("Initial Object:", ("Model", "object_init"), OBJECT_INITS, "random"),
        ("Normalization:", ("Model", "normalization"), NORMALIZATIONS, "none"),
        ("LR Scheduler:", ("Training", "scheduler"), SCHEDULERS, "WarmupCosine"),
        ("Supervised Labels:", ("Training", "supervised_labels"), SUPERVISED_LABELS, "refined"),
    ]:
        combo = _form_field(page, label)
        assert isinstance(combo, QComboBox), label
        assert [combo.itemText(i) for i in range(combo.count())] == list(choices)
        assert combo.currentText() == library.settings.value(group, key)
        combo.setCurrentText(value)
        combo.textActivated.emit(value)
        assert library.settings.value(group, key) == value

    _set_line_edit(_form_field(page, "LR Warm-up Epochs:"), "3")
    ratio = _form_field(page, "LR Final Ratio:")  # a DecimalLineEdit wrapping a QLineEdit
    _set_line_edit(ratio.findChild(QLineEdit), "0.25")
    assert library.settings.value("Training", "lr_warmup_epochs") == 3
    assert library.settings.value("Training", "lr_min_ratio") == 0.25
