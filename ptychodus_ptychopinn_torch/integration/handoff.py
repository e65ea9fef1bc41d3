"""Hand a reconstruction's diffraction patterns to the worker process without pickling them.

A `ReconstructJob` carries a `ScanData` built in the Ptychodus process around Ptychodus's own
pattern array. Pickled through the pipe, a 10^5-pattern scan would be copied twice more (the
pickle, then the worker's array). Instead the stored values (in their own dtype) are written, a
chunk at a time, to a temporary file that the worker reads a batch at a time; only the rest of
the job (probe, positions, configs, the file's name) is pickled. The parent owns the file:
`SharedPatterns.close` removes it when the run ends, fails or the worker is killed, and a
finalizer removes it when the Ptychodus process exits. A file rather than shared memory: the
written pages go to the page cache, which the kernel can write back and drop, instead of a
second resident copy of the scan. Torch-free.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from .protocol import Job, ReconstructJob

__all__ = ["SharedPatterns", "share_patterns"]

logger = logging.getLogger(__name__)

PREFIX = "ptychopinn-torch-patterns-"


class SharedPatterns:
    """The temporary file holding a job's patterns; `close` removes it (idempotent)."""

    def __init__(self, scratch: Any, nbytes: int) -> None:
        self._scratch = scratch
        self.nbytes = nbytes

    @property
    def path(self) -> os.PathLike[str]:
        return self._scratch.path

    def close(self) -> None:
        self._scratch.close()


def share_patterns(job: Job, directory: str | os.PathLike[str] | None = None) -> tuple[Job, SharedPatterns | None]:
    """``(job to send, owner of the file or None)``.

    A `ReconstructJob` whose scan holds its patterns in this process's memory gets a copy of
    the scan that reads them from a temporary file in ``directory`` (else ``TMPDIR``); every
    other job is sent as it is (patterns in a file pickle as the file's name).
    """
    scan = getattr(job, "scan", None) if isinstance(job, ReconstructJob) else None
    patterns = getattr(scan, "amplitudes", None)
    if scan is None or not getattr(patterns, "in_memory", False):
        return job, None
    from ..data.patterns import stage

    staged = stage(patterns.check(), prefix=PREFIX, directory=directory)
    owner = SharedPatterns(staged.source.owner, patterns.stored_nbytes)
    staged.source.owner = None  # the parent's SharedPatterns owns the file, not the sent stack
    logger.debug("patterns handed to the worker through %s (%.1f MiB)", owner.path, owner.nbytes / 2**20)
    return dataclasses.replace(job, scan=dataclasses.replace(scan, amplitudes=staged)), owner
