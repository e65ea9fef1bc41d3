"""Run a job in a spawned child process (default) or in a thread, and stream its events.

Why a child: Ptychodus must never import Lightning or create a CUDA context, and a fresh
process per run releases all GPU memory. Why our own runner rather than Ptychodus's private
``SubprocessReconstructor``: that one blocks forever on a child killed before its sentinel
(OOM killer, segfault); this one watches the child:

* events travel over a one-way pipe whose write end the parent closes after the start, so a
  dead child reads as end-of-file, and ``process.is_alive()`` is polled between reads;
* a stop request (Ptychodus's Stop button, or closing the event iterator) sets an event the
  worker checks between batches; a worker that does not end within ``stop_grace_s`` is
  terminated, then killed;
* child log records are re-logged under the library logger so they reach the GUI log panel;
* a reconstruction's diffraction patterns go to the child through a temporary file, not the
  pipe (`handoff.share_patterns`), removed when the run ends however it ends.

The in-process mode runs the same worker function in a daemon thread with the same events;
tests and scripts use it to avoid the 3-5 s spawn cost. Torch-free.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import io
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from .handoff import share_patterns
from .protocol import TAG_ERROR, TAG_LOG, TAG_STARTED, Job

__all__ = [
    "DEFAULT_ENTRY_POINT",
    "Emit",
    "JobRunner",
    "WorkerDiedError",
    "WorkerError",
]

LIBRARY_LOGGER = "ptychodus_ptychopinn_torch"
DEFAULT_ENTRY_POINT = "ptychodus_ptychopinn_torch.integration.child:run_job"
FINISHED_GRACE_S = 2.0

Emit = Callable[..., None]
WorkerFunction = Callable[[Job, Emit, Callable[[], bool]], None]

logger = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """The worker failed with an exception that has no safe equivalent in the parent."""

    worker_traceback: str = ""


class WorkerDiedError(WorkerError):
    """The child process ended without reporting a result or an error."""


# Exceptions re-raised in the parent with their own type (message kept, traceback attached).
_REBUILT_TYPES: dict[str, type[BaseException]] = {
    name: getattr(builtins, name)
    for name in ("ValueError", "FileNotFoundError", "TypeError", "KeyError", "RuntimeError",
                 "MemoryError", "NotImplementedError", "OSError", "PermissionError")
}


def _resolve_entry_point(entry_point: str) -> WorkerFunction:
    """``"pkg.module:function"`` or ``"/path/to/file.py:function"`` -> the function."""
    module_name, sep, function_name = entry_point.rpartition(":")

    if not sep or not module_name or not function_name:
        raise ValueError(f"worker entry point {entry_point!r} must look like 'module:function'")

    if module_name.endswith(".py"):
        path = Path(module_name)
        spec = importlib.util.spec_from_file_location(f"_ptychopinn_worker_{path.stem}", path)

        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load worker module from {path}")

        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)

    return getattr(module, function_name)


def _error_event(exc: BaseException) -> tuple[Any, ...]:
    return (TAG_ERROR, type(exc).__name__, str(exc), traceback.format_exc())


class _PipeLogHandler(logging.Handler):
    """Child side: forward every log record to the parent as a ``log`` event."""

    def __init__(self, emit: Emit) -> None:
        super().__init__()
        self._emit = emit
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit(TAG_LOG, record.levelno, record.name, self.format(record))
        except Exception:  # never let logging break the worker
            pass


_FORBIDDEN_MODULES = ("torch", "lightning", "pytorch_lightning")


class _ParentUnpickler(pickle.Unpickler):
    """Refuses torch/Lightning objects: unpickling one would import torch in Ptychodus."""

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] in _FORBIDDEN_MODULES:
            raise pickle.UnpicklingError(
                f"the worker sent a {module}.{name} object; events must hold plain data"
            )
        return super().find_class(module, name)


def _loads(data: bytes) -> Any:
    return _ParentUnpickler(io.BytesIO(data)).load()


def _child_main(entry_point: str, job: Job, connection: Any, stop_event: Any,
                log_level: int) -> None:
    """Target of the spawned process: forward logs, run the worker, always send a sentinel."""
    lock = threading.Lock()

    def emit(*event: Any) -> None:
        data = pickle.dumps(event, protocol=pickle.HIGHEST_PROTOCOL)
        with lock:
            connection.send_bytes(data)

    root = logging.getLogger()
    root.addHandler(_PipeLogHandler(emit))
    root.setLevel(log_level)
    # Library deprecation notices would reach users as WARNINGs in the GUI log; drop them here.
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    logging.captureWarnings(True)

    try:
        emit(TAG_STARTED, os.getpid())
        _resolve_entry_point(entry_point)(job, emit, stop_event.is_set)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent
        try:
            emit(*_error_event(exc))
        except Exception:
            pass
    finally:
        try:
            emit(None)
            connection.close()
        except Exception:
            pass


class _Channel(Protocol):
    def poll(self, timeout: float) -> bool: ...
    def recv(self) -> Any: ...
    def is_alive(self) -> bool: ...
    def describe_exit(self) -> str: ...
    def request_stop(self) -> None: ...
    def close(self, grace_s: float, terminate_grace_s: float, finished: bool) -> None: ...


class _ProcessChannel:
    """A spawned child and the read end of its event pipe."""

    def __init__(self, entry_point: str, job: Job, log_level: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._reader, writer = context.Pipe(duplex=False)
        self._stop_event = context.Event()
        self.process = context.Process(
            target=_child_main,
            args=(entry_point, job, writer, self._stop_event, log_level),
            name="ptychopinn-torch-worker",
            daemon=False,  # Lightning data-loader workers need a non-daemonic parent
        )
        self.process.start()
        writer.close()  # the child holds the only write end: its death reads as EOF
        self._eof = False

    def poll(self, timeout: float) -> bool:
        if self._eof:
            time.sleep(timeout)
            return False
        try:
            return self._reader.poll(timeout)
        except (EOFError, OSError):
            self._eof = True
            return False

    def recv(self) -> Any:
        try:
            data = self._reader.recv_bytes()
        except (EOFError, OSError):
            self._eof = True
            raise EOFError from None
        try:
            event = _loads(data)
        except pickle.UnpicklingError as exc:
            raise WorkerError(f"PtychoPINN (PyTorch) worker sent an unreadable event: {exc}") \
                from None
        return None if event == (None,) else event

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def describe_exit(self) -> str:
        self.process.join(timeout=1.0)
        code = self.process.exitcode

        if code is None:
            return "closed its connection while still running"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (killed: out of memory?)" if name == "SIGKILL" else ""
            return f"was ended by {name}{hint}"
        return f"exited with code {code}"

    def request_stop(self) -> None:
        self._stop_event.set()

    def close(self, grace_s: float, terminate_grace_s: float, finished: bool) -> None:
        self._stop_event.set()
        deadline = time.monotonic() + grace_s

        while self.process.is_alive() and time.monotonic() < deadline:
            if self.poll(0.1):  # keep draining so a blocked send can finish
                try:
                    self.recv()
                except EOFError:
                    pass

        if self.process.is_alive():
            if not finished:
                logger.warning("PtychoPINN (PyTorch) worker did not stop in time; terminating it")
            self.process.terminate()
            self.process.join(terminate_grace_s)

        if self.process.is_alive():
            self.process.kill()
            self.process.join()

        self._reader.close()


class _ThreadChannel:
    """The in-process mode: the worker function in a daemon thread of this process."""

    def __init__(self, entry_point: str, job: Job) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stop_event = threading.Event()
        self._next: list[Any] = []
        self.thread = threading.Thread(
            target=self._main, args=(entry_point, job), name="ptychopinn-torch-worker",
            daemon=True,
        )
        self.thread.start()

    def _main(self, entry_point: str, job: Job) -> None:
        emit = lambda *event: self._queue.put(event)  # noqa: E731
        try:
            emit(TAG_STARTED, os.getpid())
            _resolve_entry_point(entry_point)(job, emit, self._stop_event.is_set)
        except BaseException as exc:  # noqa: BLE001
            emit(*_error_event(exc))
        finally:
            self._queue.put((None,))

    def poll(self, timeout: float) -> bool:
        if self._next:
            return True
        try:
            self._next.append(self._queue.get(timeout=timeout))
        except queue.Empty:
            return False
        return True

    def recv(self) -> Any:
        if not self._next and not self.poll(3600.0):
            raise EOFError
        event = self._next.pop(0)
        return None if event == (None,) else event

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def describe_exit(self) -> str:
        return "ended without a result"

    def request_stop(self) -> None:
        self._stop_event.set()

    def close(self, grace_s: float, terminate_grace_s: float, finished: bool) -> None:
        self._stop_event.set()
        self.thread.join(grace_s)

        if self.thread.is_alive():
            logger.warning("PtychoPINN (PyTorch) in-process worker did not stop within %.0f s; "
                           "leaving it to finish in the background", grace_s)


def _relog(levelno: int, name: str, message: str) -> None:
    """Re-log a worker record so that it lands under the library logger (GUI log panel)."""
    if name == LIBRARY_LOGGER or name.startswith(LIBRARY_LOGGER + "."):
        logging.getLogger(name).log(levelno, message)
    else:
        logging.getLogger(LIBRARY_LOGGER + ".worker").log(levelno, "%s: %s", name, message)


def rebuild_exception(type_name: str, message: str, tb: str) -> BaseException:
    """The parent-side exception for a worker failure (same builtin type when safe)."""
    from .settings import SettingsError

    cls = SettingsError if type_name == "SettingsError" else _REBUILT_TYPES.get(type_name)
    exc: BaseException

    if cls is None:
        exc = WorkerError(f"{type_name}: {message}")
    elif cls is KeyError:
        exc = KeyError(message)
    else:
        exc = cls(message)

    setattr(exc, "worker_traceback", tb)
    return exc


class JobRunner:
    """Run one job at a time and yield its non-log events.

    ``stop_requested`` is polled while waiting (Ptychodus's task monitor ``is_stopping``);
    when true, the worker is asked to stop and ends within one batch. ``in_process`` selects
    the thread mode. ``entry_point`` is injectable for tests. ``scratch_dir`` is where the
    patterns handed to a child are written (default: the system's temp directory, ``TMPDIR``).
    """

    def __init__(
        self,
        *,
        in_process: bool = False,
        entry_point: str = DEFAULT_ENTRY_POINT,
        stop_requested: Callable[[], bool] | None = None,
        poll_interval_s: float = 0.2,
        stop_grace_s: float = 30.0,
        terminate_grace_s: float = 5.0,
        scratch_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.in_process = in_process
        self.scratch_dir = scratch_dir
        self.entry_point = entry_point
        self.stop_requested = stop_requested
        self.poll_interval_s = poll_interval_s
        self.stop_grace_s = stop_grace_s
        self.terminate_grace_s = terminate_grace_s
        self.worker_pid: int | None = None

    def _open(self, job: Job) -> _Channel:
        if self.in_process:
            return _ThreadChannel(self.entry_point, job)

        level = logging.getLogger(LIBRARY_LOGGER).getEffectiveLevel()
        return _ProcessChannel(self.entry_point, job, level)

    def run(self, job: Job) -> Iterator[tuple[Any, ...]]:
        """Yield ``epoch``/``result``/``stopped`` events; raise on worker error or death."""
        shared = None

        if not self.in_process:  # a thread reads the patterns where they are
            job, shared = share_patterns(job, self.scratch_dir)

        try:
            yield from self._run(job)
        finally:
            if shared is not None:
                shared.close()

    def _run(self, job: Job) -> Iterator[tuple[Any, ...]]:
        channel = self._open(job)
        stop_time: float | None = None
        finished = False

        try:
            while True:
                if stop_time is None and self.stop_requested is not None \
                        and self.stop_requested():
                    logger.info("Stop requested; the PtychoPINN (PyTorch) worker ends after "
                                "the current batch")
                    channel.request_stop()
                    stop_time = time.monotonic()
                elif stop_time is not None and time.monotonic() - stop_time > self.stop_grace_s:
                    logger.warning("PtychoPINN (PyTorch) worker ignored Stop for %.0f s; "
                                   "ending it", self.stop_grace_s)
                    return

                if not channel.poll(self.poll_interval_s):
                    if not channel.is_alive() and not channel.poll(0.5):
                        raise self._died(channel)
                    continue

                try:
                    event = channel.recv()
                except EOFError:
                    raise self._died(channel) from None

                if event is None:
                    finished = True
                    return

                tag = event[0]

                if tag == TAG_LOG:
                    _relog(*event[1:])
                elif tag == TAG_STARTED:
                    self.worker_pid = int(event[1])
                elif tag == TAG_ERROR:
                    _, type_name, message, tb = event
                    logger.debug("PtychoPINN (PyTorch) worker traceback:\n%s", tb)
                    raise rebuild_exception(type_name, message, tb)
                else:
                    yield event
        finally:
            # A finished worker has sent everything; do not wait for its interpreter teardown.
            grace = FINISHED_GRACE_S if finished else self.stop_grace_s
            channel.close(grace, self.terminate_grace_s, finished)

    def _died(self, channel: _Channel) -> WorkerDiedError:
        pid = f" (pid {self.worker_pid})" if self.worker_pid else ""
        return WorkerDiedError(
            f"The PtychoPINN (PyTorch) worker process{pid} {channel.describe_exit()} before "
            "finishing. Common causes: out of host or GPU memory, or a crash in a native "
            "library. Nothing was saved; try a smaller batch size or the CPU."
        )
