"""`install()`: make entry-point reconstructor libraries appear in an unmodified Ptychodus 1.7.

Ptychodus 1.7 hard-codes its libraries and reads no entry points, so `install()` (called by the
``ptychodus/plugins`` shim, the ``ptychodus-pinn`` launcher, or a script before ``ModelCore()``)

1. wraps ``ProcessingCore.__init__`` so the libraries of the entry-point group
   ``ptychodus.reconstructors`` are appended to the built-in ones, binds Ptychodus's Stop flag
   to them, and turns an unknown ``Processing.Algorithm`` key that names one of them into a
   clear error instead of Ptychodus's silent DEBUG line and no-op run;
2. wraps ``ProcessingController.__init__`` (the GUI) to add each library's settings page,
   refreshes the Infer button when a run ends, and offers "Reconstruct" without a model for
   reconstructors that can fit a scan (the PINN). This wrap is deferred with a post-import hook
   until Ptychodus imports its controller, so batch mode never imports Qt.

It is idempotent, checks that the patched symbols exist, and never raises: an exception in a
Ptychodus plugin would crash Ptychodus at start-up.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.metadata
import inspect
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["ENTRY_POINT_GROUP", "install", "is_installed"]

ENTRY_POINT_GROUP = "ptychodus.reconstructors"
CORE_MODULE = "ptychodus.model.processing.core"
CONTROLLER_MODULE = "ptychodus.controller.processing.core"
_MARKER = "_ptychopinn_torch_install_wrapper"
_LIBRARIES_ATTR = "_ptychopinn_torch_extra_libraries"

logger = logging.getLogger("ptychodus_ptychopinn_torch")
_lock = threading.RLock()
OWN_LIBRARY = "PtychoPINN (PyTorch)"
_announced = False  # the "registered" line is logged once per process


# --- libraries from entry points ----------------------------------------------------------------

def _factories() -> list[tuple[str, Callable[..., Any]]]:
    """(name, factory) for each entry point of the group; ours is always included."""
    found: list[tuple[str, Callable[..., Any]]] = []
    seen: set[str] = set()

    try:
        entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception:  # broken metadata must not stop Ptychodus
        logger.exception("Could not read entry points %s", ENTRY_POINT_GROUP)
        entry_points = []

    for entry_point in entry_points:
        if entry_point.value in seen:
            continue
        seen.add(entry_point.value)
        try:
            found.append((entry_point.name, entry_point.load()))
        except Exception:
            logger.exception("Could not load reconstructor library entry point %s = %s",
                             entry_point.name, entry_point.value)

    own = "ptychodus_ptychopinn_torch.integration.library:create_library"
    if own not in seen:  # e.g. run from a source tree without installed metadata
        from .library import create_library

        found.append(("ptychopinn-pytorch", create_library))

    return found


def _developer_mode() -> bool:
    return logging.getLogger("ptychodus.model.core").getEffectiveLevel() <= logging.DEBUG


def create_entry_point_libraries(settings_registry: Any, existing: list[Any]) -> list[Any]:
    """Instantiate every entry-point library; skip (and log) the ones that fail or clash."""
    from ptychodus.api.reconstruct import ReconstructorLibrary

    names = {str(library.name).casefold() for library in existing}
    libraries: list[Any] = []

    for ep_name, factory in _factories():
        try:
            library = factory(settings_registry, _developer_mode())
        except Exception:
            logger.exception("Reconstructor library %s failed to initialise; skipped", ep_name)
            continue

        if not isinstance(library, ReconstructorLibrary):
            logger.error("Entry point %s returned %r, not a ReconstructorLibrary; skipped",
                         ep_name, library)
            continue

        name = str(library.name)
        if "_" in name:
            logger.warning("Library name %r contains '_'; Ptychodus splits keys at the first "
                           "'_', so its GUI page will not be found", name)
        if name.casefold() in names:
            logger.error("Library name %r clashes with an existing library; skipped", name)
            continue

        names.add(name.casefold())
        libraries.append(library)

    return libraries


# --- unknown Processing.Algorithm keys that name one of our libraries --------------------------

def _unknown_reconstructor(library: Any, key: str) -> Any:
    from ptychodus.api.reconstruct import NullReconstructor

    available = ", ".join(f"{library.name.casefold()}_{r.name.casefold()}" for r in library)
    message = (f'[Processing] Algorithm = "{key}" names the {library.name} library but none of '
               f"its reconstructors; use one of: {available}")

    class UnknownReconstructor(NullReconstructor):
        """Stands in for a misspelt key so the run fails loudly (batch exits non-zero)."""

        def get_progress_goal(self) -> int:
            return 1

        def _raise(self) -> None:
            library.get_logger().error(message)
            raise ValueError(message)

        def reconstruct(self, parameters: Any) -> Any:
            self._raise()
            yield from ()

        def train(self, input_path: Path, output_path: Path) -> Any:
            self._raise()
            yield from ()

        def get_model_file_extension(self) -> str:
            return ".ckpt"

    library.get_logger().error(message)
    return UnknownReconstructor(key.partition("_")[2] or key)


class _CheckedKeyMap(dict):
    """Ptychodus's key -> reconstructor map, with loud misses for our libraries."""

    def __init__(self, data: dict, libraries: list[Any]) -> None:
        super().__init__(data)
        self._libraries = {str(lib.name).casefold(): lib for lib in libraries}

    def __missing__(self, key: str) -> Any:
        library = self._libraries.get(key.partition("_")[0])
        if library is None:
            raise KeyError(key)
        return _unknown_reconstructor(library, key)


# --- the start-up line -------------------------------------------------------------------------

def _announce(libraries: list[Any], problem: str | None = None) -> None:
    """Say in Ptychodus's log whether PtychoPINN (PyTorch) is available, and with which
    reconstructors, so a user can tell at start-up that the plugin loaded (or why not).

    Logged after the host's ``ProcessingCore.__init__``, when its processing-log handler is on
    the library logger, so the line reaches the GUI log panel as well as the console. Success is
    said once per process; a failure every time it happens.
    """
    global _announced
    own = next((lib for lib in libraries if str(lib.name) == OWN_LIBRARY), None)
    if own is None:
        logger.warning("%s is NOT registered with Ptychodus: %s", OWN_LIBRARY,
                       problem or "its reconstructor library could not be created (see the "
                       "error above)")
        return
    if _announced:
        return
    _announced = True
    reconstructors = [str(r.name) for r in own]
    keys = [f"{OWN_LIBRARY.casefold()}_{name.casefold()}" for name in reconstructors]
    logger.info("%s registered with Ptychodus: reconstructors %s (Processing.Algorithm keys %s)",
                OWN_LIBRARY, ", ".join(reconstructors), ", ".join(keys))


# --- the model patch -----------------------------------------------------------------------------

def _after_core_init(core: Any, libraries: list[Any]) -> None:
    if not libraries:
        return

    parameter = getattr(core, "algorithm_parameter", None)
    setattr(parameter, _LIBRARIES_ATTR, libraries)
    monitor = getattr(getattr(core, "processing_api", None), "task_monitor", None)

    for library in libraries:
        bind = getattr(library, "bind_stop_flag", None)
        if monitor is not None and bind is not None:
            bind(lambda: bool(monitor.is_stopping))

    key_map = getattr(parameter, "_reconstructor_map", None)
    if isinstance(key_map, dict):
        parameter._reconstructor_map = _CheckedKeyMap(key_map, libraries)
    else:
        logger.debug("ProcessingAlgorithmParameter has no _reconstructor_map; unknown keys of "
                     "our libraries stay silent")


def _wrap_init(cls: type, build: Callable[[Callable[..., None]], Callable[..., None]]) -> bool:
    original = cls.__init__
    if getattr(original, _MARKER, False):
        return False
    wrapper = functools.wraps(original)(build(original))
    setattr(wrapper, _MARKER, True)
    cls.__init__ = wrapper
    return True


def _patch_processing_core(module: ModuleType) -> None:
    cls = getattr(module, "ProcessingCore", None)
    if cls is None:
        logger.warning("ptychodus %s has no ProcessingCore; PtychoPINN (PyTorch) cannot register "
                       "(this plugin supports ptychodus 1.7)", module.__name__)
        return
    signature = inspect.signature(cls.__init__)
    if not {"settings_registry", "algorithm_libraries"} <= set(signature.parameters):
        logger.warning("ProcessingCore.__init__%s is not the ptychodus 1.7 signature; "
                       "PtychoPINN (PyTorch) cannot register", signature)
        return

    def build(original: Callable[..., None]) -> Callable[..., None]:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            extra: list[Any] = []
            problem: str | None = None
            try:
                bound = signature.bind(self, *args, **kwargs)
                existing = list(bound.arguments["algorithm_libraries"])
                extra = create_entry_point_libraries(bound.arguments["settings_registry"],
                                                     existing)
                bound.arguments["algorithm_libraries"] = existing + extra
                args, kwargs = bound.args[1:], bound.kwargs
            except Exception as exc:
                logger.exception("Could not add entry-point reconstructor libraries")
                extra = []
                problem = f"adding the libraries to Ptychodus failed ({type(exc).__name__}: {exc})"
            original(self, *args, **kwargs)
            try:
                _after_core_init(self, extra)
            except Exception:
                logger.exception("Could not finish registering entry-point libraries")
            _announce(extra, problem)

        return __init__

    if _wrap_init(cls, build):
        logger.debug("wrapped %s.ProcessingCore", module.__name__)


# --- the GUI patch -------------------------------------------------------------------------------

def _sync_when_runs_end(controller: Any, monitor: Any) -> None:
    """Refresh the Infer button when a run ends (Ptychodus syncs it only at submission)."""
    from ptychodus.api.observer import Observer

    class _SyncOnFinish(Observer):
        was_processing = False

        def _update(self, observable: Any) -> None:
            processing = bool(monitor.is_processing)
            if self.was_processing and not processing:
                try:
                    controller._sync_model_to_view()
                except Exception:
                    logger.debug("could not refresh the processing view", exc_info=True)
            self.was_processing = processing

    observer = _SyncOnFinish()
    setattr(controller, "_ptychopinn_torch_sync_observer", observer)
    monitor.add_observer(observer)


def _allow_reconstruct_without_model(controller: Any) -> None:
    """Enable "Reconstruct" for reconstructors that can fit a scan without a model (PINN).

    Ptychodus labels the button "Infer" and disables it for every trainable reconstructor
    until a model is loaded, which would hide the PINN's unsupervised reconstruction.
    """
    original = controller._sync_model_to_view

    def sync_model_to_view() -> None:
        original()
        reconstructor = controller._algorithm_parameter.get_current_reconstructor()
        if getattr(reconstructor, "can_reconstruct_without_model", False) \
                and not reconstructor.is_model_loaded():
            button = controller._actions_view.reconstruct_button
            button.setText("Reconstruct")
            button.setEnabled(True)

    controller._sync_model_to_view = sync_model_to_view
    sync_model_to_view()


def _patch_processing_controller(module: ModuleType) -> None:
    cls = getattr(module, "ProcessingController", None)
    if cls is None:
        logger.warning("ptychodus GUI has no ProcessingController; no PtychoPINN (PyTorch) page")
        return
    signature = inspect.signature(cls.__init__)
    if "view_controller_factories" not in signature.parameters:
        logger.warning("ProcessingController.__init__%s is not the ptychodus 1.7 signature; "
                       "no PtychoPINN (PyTorch) settings page", signature)
        return

    def build(original: Callable[..., None]) -> Callable[..., None]:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            libraries: list[Any] = []
            try:
                bound = signature.bind(self, *args, **kwargs)
                libraries = list(getattr(bound.arguments.get("algorithm_parameter"),
                                         _LIBRARIES_ATTR, []))
                factories = list(bound.arguments["view_controller_factories"])
                file_dialogs = bound.arguments.get("file_dialog_factory")
                for library in libraries:
                    create = getattr(library, "create_view_controller_factory", None)
                    if create is not None:
                        factories.append(create(file_dialogs))
                bound.arguments["view_controller_factories"] = factories
                args, kwargs = bound.args[1:], bound.kwargs
            except Exception:
                logger.exception("Could not add the PtychoPINN (PyTorch) settings page")
            original(self, *args, **kwargs)
            if libraries:
                try:
                    _allow_reconstruct_without_model(self)
                    _sync_when_runs_end(self, self._processing_api.task_monitor)
                except Exception:
                    logger.debug("no refresh of the processing view", exc_info=True)

        return __init__

    if _wrap_init(cls, build):
        logger.debug("wrapped %s.ProcessingController", module.__name__)


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Run ``callback(module)`` right after ``name`` is first imported."""

    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        loader = getattr(spec, "loader", None)
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return None
        original = loader.exec_module
        hook = self

        def exec_module(module: ModuleType) -> None:
            original(module)
            _remove_hook(hook)
            try:
                hook.callback(module)
            except Exception:
                logger.exception("PtychoPINN (PyTorch) post-import hook for %s failed", fullname)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _remove_hook(hook: _PostImportHook) -> None:
    try:
        sys.meta_path.remove(hook)
    except ValueError:
        pass


def _when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    if any(isinstance(f, _PostImportHook) and f.name == name for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _PostImportHook(name, callback))


# --- public --------------------------------------------------------------------------------------

def is_installed() -> bool:
    """True when `ProcessingCore` is wrapped (the libraries will appear in new ModelCores)."""
    module = sys.modules.get(CORE_MODULE)
    cls = getattr(module, "ProcessingCore", None)
    return bool(cls is not None and getattr(cls.__init__, _MARKER, False))


def install() -> bool:
    """Register the entry-point libraries with Ptychodus; idempotent; never raises.

    Returns True when the model-side registration is in place. Call it before ``ModelCore()``
    in scripts where the ``ptychodus/plugins`` shim is not installed.
    """
    try:
        with _lock:
            module = sys.modules.get(CORE_MODULE)
            if module is None or not hasattr(module, "ProcessingCore"):
                import ptychodus.model.processing.core as module  # noqa: PLC0415 - no Qt
            _patch_processing_core(module)
            _when_imported(CONTROLLER_MODULE, _patch_processing_controller)
        return is_installed()
    except Exception:
        logger.exception("PtychoPINN (PyTorch) could not register with Ptychodus")
        return False
