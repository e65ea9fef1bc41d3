"""Registration with Ptychodus 1.7: entry point, shim, install(), launcher, unknown keys."""

from __future__ import annotations

import importlib.metadata
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

KEYS = ["ptychopinn (pytorch)_pinn", "ptychopinn (pytorch)_supervised"]
SHIM = "ptychodus.plugins.ptychodus_ptychopinn_torch_plugin"

# Makes Ptychodus skip the shim (its plugin loader skips modules raising ModuleNotFoundError),
# i.e. a setup where only install() / the launcher can register the library.
BLOCK_SHIM = textwrap.dedent(f"""
    import sys
    class _BlockShim:
        def find_spec(self, name, path=None, target=None):
            if name == {SHIM!r}:
                raise ModuleNotFoundError(name)
    sys.meta_path.insert(0, _BlockShim())
""")

LIST_KEYS = textwrap.dedent("""
    from ptychodus.model import ModelCore
    with ModelCore() as model:
        print(sorted(model.processing_core.processing_api.available_reconstructors()))
""")

FORBIDDEN = "print(sorted(m for m in ('torch', 'lightning', 'PyQt5') if m in sys.modules))"


def run_python(code: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout)


def test_entry_point_is_declared():
    eps = importlib.metadata.entry_points(group="ptychodus.reconstructors")
    values = {ep.name: ep.value for ep in eps}
    assert values["ptychopinn-pytorch"] == \
        "ptychodus_ptychopinn_torch.integration.library:create_library"


def test_shim_is_installed_in_ptychodus_plugins():
    import ptychodus.plugins

    paths = [Path(p) / "ptychodus_ptychopinn_torch_plugin.py"
             for p in ptychodus.plugins.__path__]
    assert any(p.is_file() for p in paths)


def test_shim_never_raises(monkeypatch, caplog):
    import importlib

    import ptychodus_ptychopinn_torch.integration as integration

    shim = importlib.import_module(SHIM)

    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(integration, "install", broken)
    shim.register_plugins(None)
    assert "could not register" in caplog.text


def test_model_core_lists_both_reconstructors_via_the_shim():
    result = run_python(LIST_KEYS)
    assert result.returncode == 0, result.stderr
    assert str(KEYS) in result.stdout


def test_install_registers_without_the_shim_and_imports_no_torch_or_qt():
    code = BLOCK_SHIM + LIST_KEYS + textwrap.dedent(f"""
        from ptychodus_ptychopinn_torch.integration import install
        assert install() is True and install() is True   # idempotent
    """) + LIST_KEYS + "import sys\n" + FORBIDDEN
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert KEYS[0] not in lines[0]          # shim blocked: not registered
    assert lines[1] == str(KEYS)            # install(): registered
    assert lines[2] == "[]"                 # no torch, Lightning or Qt in the process


def test_launcher_registers_without_the_shim():
    code = BLOCK_SHIM + textwrap.dedent("""
        import sys
        from ptychodus_ptychopinn_torch.integration.launcher import main
        sys.exit(main(["--list-reconstructors"]))
    """)
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert KEYS[0] in result.stdout and KEYS[1] in result.stdout


def test_install_is_idempotent_in_process():
    from ptychodus.api.settings import SettingsRegistry

    from ptychodus_ptychopinn_torch.integration import install, is_installed
    from ptychodus_ptychopinn_torch.integration.registration import (
        create_entry_point_libraries,
    )

    assert install() and install() and is_installed()
    libraries = create_entry_point_libraries(SettingsRegistry(), [])
    assert [lib.name for lib in libraries] == ["PtychoPINN (PyTorch)"]


def test_library_logger_feeds_the_processing_log():
    from ptychodus.model import ModelCore

    with ModelCore() as model:
        core = model.processing_core
        library = next(lib for lib in core.algorithm_parameter._libraries
                       if lib.name == "PtychoPINN (PyTorch)")
        assert library.get_logger().name == "ptychodus_ptychopinn_torch"
        handler = core.processing_api.task_monitor.get_log_handler()
        assert handler in library.get_logger().handlers
        library.get_logger().removeHandler(handler)


def test_unknown_key_naming_our_library_is_a_clear_error(tmp_path, caplog):
    from ptychodus.model import ModelCore

    ini = tmp_path / "settings.ini"
    ini.write_text("[Processing]\nAlgorithm = PtychoPINN (PyTorch)_Unsupervised\n")
    caplog.set_level(logging.INFO)
    with ModelCore(ini) as model:
        api = model.processing_core.processing_api
        assert "names the PtychoPINN (PyTorch) library but none of its reconstructors" \
            in caplog.text
        assert "ptychopinn (pytorch)_pinn" in caplog.text
        reconstructor = model.processing_core.algorithm_parameter.get_current_reconstructor()
        with pytest.raises(ValueError, match="ptychopinn \\(pytorch\\)_supervised"):
            list(reconstructor.reconstruct(None))
        assert api.is_reconstructor_trainable()
        # keys of other libraries keep Ptychodus's own behaviour
        model.processing_core.algorithm_parameter.set_value("pty-chi_lsqml")
        handler = api.task_monitor.get_log_handler()
        for library in model.processing_core.algorithm_parameter._libraries:
            library.get_logger().removeHandler(handler)


def test_regular_wheel_ships_the_shim_and_the_entry_point(tmp_path):
    """`pip install .` installs from this wheel; the editable install is checked above."""
    import zipfile

    try:
        import hatchling  # noqa: F401 - the build backend, from the test extra
    except ImportError:
        pytest.fail("hatchling is missing: install the test extra (pip install -e '.[test]'); "
                    "without it the wheel that users install is never checked")
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(root), "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        text = archive.read(entry_points).decode()
    assert "ptychodus/plugins/ptychodus_ptychopinn_torch_plugin.py" in names
    assert "[ptychodus.reconstructors]" in text
    assert "ptychopinn-pytorch = ptychodus_ptychopinn_torch.integration.library:create_library" \
        in text
    assert not any(n.startswith(("ptycho_torch/", "ptycho/")) for n in names)


REGISTERED = ("PtychoPINN (PyTorch) registered with Ptychodus: reconstructors PINN, Supervised "
              "(Processing.Algorithm keys ptychopinn (pytorch)_pinn, "
              "ptychopinn (pytorch)_supervised)")


def test_startup_log_says_once_that_the_plugin_is_registered():
    """Ptychodus's console log (INFO, as the GUI and batch mode start) names both
    reconstructors once, however many ModelCores the process builds."""
    code = textwrap.dedent("""
        import logging
        from ptychodus.model import ModelCore
        for _ in range(2):
            with ModelCore(log_level=logging.INFO) as model:
                handler = model.processing_core.processing_api.task_monitor.get_log_handler()
                print("PANEL:", [m for m in handler.messages() if "registered" in m])
    """)
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if REGISTERED in line]
    assert len(lines) == 2, result.stdout  # the console line and the processing-log panel's
    assert "[INFO] ptychodus_ptychopinn_torch:" in lines[0]
    assert lines[1].startswith("PANEL:") and "PANEL: []" in result.stdout  # 2nd core: silent


def test_startup_log_says_why_the_plugin_is_not_registered(monkeypatch, caplog):
    from ptychodus.model import ModelCore

    from ptychodus_ptychopinn_torch.integration import install, registration

    def broken(settings_registry, is_developer_mode_enabled):
        raise RuntimeError("no GPU driver")

    assert install()
    monkeypatch.setattr(registration, "_factories", lambda: [("ptychopinn-pytorch", broken)])
    caplog.set_level(logging.INFO)
    with ModelCore() as model:
        handler = model.processing_core.processing_api.task_monitor.get_log_handler()
        for library in model.processing_core.algorithm_parameter._libraries:
            library.get_logger().removeHandler(handler)
    assert "Reconstructor library ptychopinn-pytorch failed to initialise" in caplog.text
    assert "no GPU driver" in caplog.text
    assert "PtychoPINN (PyTorch) is NOT registered with Ptychodus: its reconstructor library " \
           "could not be created" in caplog.text
    assert "registered with Ptychodus: reconstructors" not in caplog.text
