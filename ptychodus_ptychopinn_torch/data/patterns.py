"""A stack of diffraction patterns kept in the data's own form, read a batch at a time.

Beamline scans reach 10^5-10^6 patterns of 16/32-bit counts (13 GB for 10^5 patterns of 256²
uint16). Converting such a stack to float amplitudes up front, or copying it between processes,
needs several times the machine's memory. `DiffractionPatterns` therefore keeps the stored
values (counts, or amplitudes for PtychoPINN's NPZ datasets) where they are: a numpy array
(Ptychodus's own array, or an NPZ's), an HDF5 dataset (`HDF5Patterns`, e.g. ``diffraction.h5``)
or a raw binary file (`RawPatterns`, the hand-off to the worker process and the staging copy of
HDF5 files whose chunks tile many patterns). Amplitudes (float32 ``sqrt(counts)``, bad pixels
zeroed) are computed per batch where they are used; the scalar statistics (validity, mean total
intensity) in one chunked pass, cached.

No torch import in this module; h5py is imported only when an HDF5 file is opened.
"""

from __future__ import annotations

import os
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

__all__ = [
    "DiffractionPatterns",
    "HDF5Patterns",
    "PatternSource",
    "RawPatterns",
    "ScratchFile",
    "stage",
    "write_raw",
]

#: Bytes of float64 work per chunk of the statistics pass (and of the raw copy).
CHUNK_BYTES = 32 * 2**20
#: Patterns per chunk at most (the statistics of a small scan sum the same blocks as before).
CHUNK_PATTERNS = 1024
#: HDF5 chunk cache: at least this, and enough for one row of chunks (up to the maximum).
HDF5_CACHE_BYTES = 256 * 2**20
HDF5_CACHE_MAX_BYTES = 1024 * 2**20

HOLDS = ("counts", "amplitudes")


class PatternSource(Protocol):
    """Where stored values come from: ``read(rows)`` returns ``(k, N, N)`` values in the
    source's dtype, in the order of ``rows`` (any order, repeats allowed). Picklable by
    reference (a path), never by content."""

    shape: tuple[int, int, int]
    dtype: np.dtype

    def read(self, rows: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...


def _runs(sorted_unique: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """``(position, first_row, stop_row)`` of each run of consecutive rows."""
    if sorted_unique.size == 0:
        return
    breaks = np.flatnonzero(np.diff(sorted_unique) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [sorted_unique.size]])
    for a, b in zip(starts.tolist(), stops.tolist()):
        yield a, int(sorted_unique[a]), int(sorted_unique[b - 1]) + 1


def _read_by_runs(rows: np.ndarray, shape: tuple[int, int, int], dtype: np.dtype, read_run: Any) -> np.ndarray:
    """Read ``rows`` with one ``read_run(first, stop, out)`` per run of consecutive sorted rows
    (h5py needs increasing indices; files read fastest in order), then restore the order."""
    unique, inverse = np.unique(rows, return_inverse=True)
    out = np.empty((unique.size, *shape[1:]), dtype=dtype)
    for position, first, stop in _runs(unique):
        read_run(first, stop, out[position : position + stop - first])
    if unique.size == rows.size and np.array_equal(unique, rows):
        return out
    return out[inverse.reshape(-1)]


class HDF5Patterns:
    """An ``(M, N, N)`` dataset of an HDF5 file, opened lazily (once per process, so it survives
    fork and pickling) with a chunk cache that holds at least one row of the file's chunks."""

    def __init__(self, path: str | os.PathLike[str], name: str = "patterns") -> None:
        self.path = Path(path)
        self.name = name
        self._lock = threading.Lock()
        self._handle: Any = None
        self._pid = -1
        self._dataset: Any = None
        with self._open_file(HDF5_CACHE_BYTES) as handle:
            dataset = handle[name]
            self.shape = tuple(int(s) for s in dataset.shape)
            self.dtype = np.dtype(dataset.dtype)
            self.chunks = None if dataset.chunks is None else tuple(int(c) for c in dataset.chunks)

    def _open_file(self, cache_bytes: int) -> Any:
        import h5py

        slots = max(10007, 4 * cache_bytes // max(1, self._chunk_bytes()))
        return h5py.File(self.path, "r", rdcc_nbytes=int(cache_bytes), rdcc_nslots=int(slots), rdcc_w0=1.0)

    def _chunk_bytes(self) -> int:
        chunks = getattr(self, "chunks", None)
        if not chunks:
            return 2**20
        return int(np.prod(chunks)) * self.dtype.itemsize

    @property
    def cache_bytes(self) -> int:
        """The chunk cache used: one row of chunks (the chunk's patterns, whole frames) fits."""
        if not self.chunks:
            return HDF5_CACHE_BYTES
        row = self.chunks[0] * self.shape[1] * self.shape[2] * self.dtype.itemsize
        return int(min(HDF5_CACHE_MAX_BYTES, max(HDF5_CACHE_BYTES, 1.25 * row)))

    @property
    def tiles_patterns(self) -> bool:
        """True when a chunk holds a tile of many patterns rather than whole frames: reading one
        pattern then decompresses a whole row of chunks (random access is slow when the dataset
        is larger than the chunk cache)."""
        return bool(self.chunks) and self.chunks[0] > 1 and tuple(self.chunks[1:]) != tuple(self.shape[1:])

    def _data(self) -> Any:
        with self._lock:
            if self._dataset is None or self._pid != os.getpid():
                self._handle = self._open_file(self.cache_bytes)
                self._dataset = self._handle[self.name]
                self._pid = os.getpid()
            return self._dataset

    def read(self, rows: np.ndarray) -> np.ndarray:
        dataset = self._data()

        def run(first: int, stop: int, out: np.ndarray) -> None:
            dataset.read_direct(out, np.s_[first:stop], np.s_[0 : stop - first])

        return _read_by_runs(rows, self.shape, self.dtype, run)

    def close(self) -> None:
        with self._lock:
            if self._handle is not None and self._pid == os.getpid():
                self._handle.close()
            self._handle = self._dataset = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "shape": self.shape, "dtype": self.dtype,
                "chunks": self.chunks}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._handle = self._dataset = None
        self._pid = -1

    def __repr__(self) -> str:
        return f"HDF5Patterns({str(self.path)!r}, {self.name!r}, shape={self.shape}, dtype={self.dtype})"


class RawPatterns:
    """An ``(M, N, N)`` C-ordered array stored raw in a file (no header), read with positioned
    reads: the process holds only the batch it reads, unlike a memory map, whose touched pages
    count as the process's memory."""

    def __init__(self, path: str | os.PathLike[str], dtype: Any, shape: tuple[int, int, int], offset: int = 0) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self.offset = int(offset)
        self.owner: Any = None  # a ScratchFile kept alive while the patterns are read
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = -1
        size = self.offset + int(np.prod(self.shape)) * self.dtype.itemsize
        actual = self.path.stat().st_size
        if actual < size:
            raise ValueError(f"{self.path} holds {actual} bytes; expected {size} for {self.shape} "
                             f"{self.dtype} patterns")

    def _descriptor(self) -> int:
        with self._lock:
            if self._fd is None or self._pid != os.getpid():
                self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                self._pid = os.getpid()
            return self._fd

    def read(self, rows: np.ndarray) -> np.ndarray:
        fd = self._descriptor()
        frame = int(np.prod(self.shape[1:])) * self.dtype.itemsize

        def run(first: int, stop: int, out: np.ndarray) -> None:
            view = memoryview(out).cast("B")
            position = self.offset + first * frame
            done = 0
            while done < view.nbytes:  # positioned reads may return less than asked
                if hasattr(os, "preadv"):
                    got = os.preadv(fd, [view[done:]], position + done)
                else:  # pragma: no cover - Windows
                    with self._lock:
                        os.lseek(fd, position + done, os.SEEK_SET)
                        chunk = os.read(fd, view.nbytes - done)
                        got = len(chunk)
                        view[done : done + got] = chunk
                if got <= 0:
                    raise OSError(f"{self.path}: unexpected end of file reading patterns {first}-{stop - 1}")
                done += got

        return _read_by_runs(rows, self.shape, self.dtype, run)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "dtype": self.dtype, "shape": self.shape, "offset": self.offset}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.owner = None  # the sender owns (and removes) the file
        self._lock = threading.Lock()
        self._fd = None
        self._pid = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"RawPatterns({str(self.path)!r}, dtype={self.dtype}, shape={self.shape})"


def _remove(path: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # a forked child (data-loader worker) never removes it
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class ScratchFile:
    """A temporary file (in ``directory``, else the system's temp directory, ``TMPDIR``) that is
    removed by `close`, when this object is garbage-collected, or when the process that made it
    exits normally; never by a forked child."""

    def __init__(self, prefix: str, *, suffix: str = ".raw", directory: str | os.PathLike[str] | None = None) -> None:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
        os.close(fd)
        self.path = Path(name)
        self._finalizer = weakref.finalize(self, _remove, self.path, os.getpid())

    def close(self) -> None:
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive


def _amplitudes_of(raw: np.ndarray, holds: str) -> np.ndarray:
    """float32 amplitudes of stored values: ``sqrt(counts)`` or the amplitudes themselves (a new
    array). Counts that float32 holds exactly (up to 16-bit integers, float32) take the float32
    square root, which equals the float64 one rounded to float32 (double rounding is innocuous for
    the square root); larger integers and float64 go through float64, per batch."""
    if holds == "amplitudes":
        return raw.astype(np.float32)
    exact = raw.dtype.kind == "b" or (raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2) \
        or (raw.dtype.kind == "f" and raw.dtype.itemsize <= 4)
    with np.errstate(invalid="ignore"):  # bad pixels may hold negative values; zeroed after
        if exact:
            return np.sqrt(raw.astype(np.float32))
        return np.sqrt(raw.astype(np.float64)).astype(np.float32)


class DiffractionPatterns:
    """A read-only ``(M, N, N)`` stack of diffraction patterns that reads as float32 amplitudes.

    ``data`` is a numpy array (kept, not copied) or a `PatternSource`; ``holds`` says whether
    it stores ``"counts"`` or ``"amplitudes"``. Bad pixels (True = bad) read as 0 and may hold
    anything. ``rows`` (optional) maps the stack's patterns to rows of ``data`` (a subset or
    reordering, e.g. the patterns paired with positions).

    It reads like an array: ``stack[i]``, ``stack[indices]``, ``stack[a:b, y, x]`` return float32
    amplitudes of those patterns, ``np.asarray(stack)`` the whole stack (memory of the whole
    scan: for small scans and checks). ``amplitudes(indices)`` is the batch read the engine
    uses. `check` validates every value and measures the mean total intensity in one chunked
    pass (cached, carried along by `on_source`).
    """

    ndim = 3

    def __init__(self, data: Any, *, holds: str = "counts", bad_pixels: np.ndarray | None = None,
                 rows: np.ndarray | None = None) -> None:
        if holds not in HOLDS:
            raise ValueError(f"holds={holds!r} is invalid; expected 'counts' or 'amplitudes'")
        shape = tuple(int(s) for s in getattr(data, "shape", ()))
        if len(shape) != 3:
            raise ValueError(f"diffraction patterns must be a 3-D array (M, N, N); got shape {shape}")
        dtype = np.dtype(data.dtype)
        if dtype.kind not in "biuf":
            raise ValueError(f"diffraction patterns must be real numbers; got dtype {dtype}")
        self._data = data
        self.holds = holds
        self.stored_dtype = dtype
        if rows is not None:
            rows = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
            if rows.size and (rows.min() < 0 or rows.max() >= shape[0]):
                raise ValueError(f"rows must index the {shape[0]} stored patterns")
            if rows.size == shape[0] and np.array_equal(rows, np.arange(shape[0])):
                rows = None
        self._rows = rows
        self.shape = (shape[0] if rows is None else int(rows.size), shape[1], shape[2])
        self.bad_pixels: np.ndarray | None = None
        if bad_pixels is not None:
            bad = np.asarray(bad_pixels, dtype=bool)
            if bad.shape != self.shape[1:]:
                raise ValueError(f"bad_pixels must have the pattern shape {self.shape[1:]}; got {bad.shape}")
            if bad.any():
                self.bad_pixels = bad.copy()
        self._stats: tuple[float] | None = None  # (mean total intensity,) once checked

    # ------------------------------------------------------------------ array-like
    dtype = np.dtype(np.float32)

    @property
    def N(self) -> int:  # noqa: N802 - PtychoPINN's name for the pattern size
        return self.shape[-1]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes of the stack as float32 amplitudes (what ``np.asarray(stack)`` would take)."""
        return self.size * 4

    @property
    def stored_nbytes(self) -> int:
        """Bytes of the stored values of these patterns, in their own dtype."""
        return self.size * self.stored_dtype.itemsize

    @property
    def in_memory(self) -> bool:
        """True when the stored values are a numpy array of this process (a memory map
        included), which pickling would copy; False for a file source, which pickles by name."""
        return isinstance(self._data, np.ndarray)

    @property
    def source(self) -> Any:
        return self._data

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"DiffractionPatterns({self.shape[0]} x {self.N}x{self.N} {self.holds}, stored as "
                f"{self.stored_dtype} in {type(self._data).__name__})")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.amplitudes(slice(None))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis or k is None for k in key):
            return np.asarray(self)[key]
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            out = self.amplitudes(np.array([int(first)]))[0]
            return out[rest] if rest else out
        out = self.amplitudes(first)
        return out[(slice(None), *rest)] if rest else out

    # ------------------------------------------------------------------ reading
    def _index(self, index: Any) -> np.ndarray:
        m = self.shape[0]
        if isinstance(index, slice):
            return np.arange(m, dtype=np.int64)[index]
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (m,):
                raise IndexError(f"a boolean index must have shape ({m},); got {idx.shape}")
            return np.flatnonzero(idx)
        if idx.size and idx.dtype.kind not in "iu":
            raise IndexError(f"pattern indices must be integers; got dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        if idx.size and (idx.min() < -m or idx.max() >= m):
            raise IndexError(f"pattern index out of range for a stack of {m} patterns")
        return np.where(idx < 0, idx + m, idx)

    def raw(self, index: Any) -> np.ndarray:
        """Stored values of patterns ``index`` in the stored dtype (a view or a new array:
        do not modify it)."""
        idx = self._index(index)
        rows = idx if self._rows is None else self._rows[idx]
        if isinstance(self._data, np.ndarray):
            if rows.size and rows[-1] - rows[0] == rows.size - 1 and np.all(np.diff(rows) == 1):
                return self._data[int(rows[0]) : int(rows[-1]) + 1]
            return self._data[rows]
        return self._data.read(rows)

    def amplitudes(self, index: Any) -> np.ndarray:
        """float32 ``(k, N, N)`` amplitudes of patterns ``index`` (ints, any order, or a slice):
        ``sqrt(counts)`` or the stored amplitudes, bad pixels 0. A new array."""
        amp = _amplitudes_of(self.raw(index), self.holds)
        if self.bad_pixels is not None:
            amp[:, self.bad_pixels] = 0.0
        return amp

    def blocks(self, *, max_bytes: int = CHUNK_BYTES) -> Iterator[slice]:
        """Consecutive slices of patterns whose float64 values take at most ``max_bytes``."""
        per = max(1, min(CHUNK_PATTERNS, max_bytes // max(1, self.N * self.N * 8)))
        for start in range(0, self.shape[0], per):
            yield slice(start, min(start + per, self.shape[0]))

    # ------------------------------------------------------------------ statistics
    def check(self) -> "DiffractionPatterns":
        """Validate every pattern and measure the mean total intensity, in one chunked pass.

        Every value outside the bad pixels must be finite and >= 0; raises ValueError naming
        the problem (how many non-finite values, the minimum) and the expected form. Cached.
        """
        if self._stats is not None:
            return self
        good = None if self.bad_pixels is None else ~self.bad_pixels
        signed = self.stored_dtype.kind in "if"
        nonfinite, minimum, total = 0, np.inf, 0.0
        for part in self.blocks():
            raw = self.raw(part)
            if signed:
                values = raw if good is None else raw[:, good]
                if self.stored_dtype.kind == "f":
                    finite = np.isfinite(values)
                    bad_count = int(values.size - np.count_nonzero(finite))
                    nonfinite += bad_count
                    if bad_count:
                        values = values[finite]
                if values.size:
                    minimum = min(minimum, float(values.min()))
            amp = _amplitudes_of(raw, self.holds)
            if self.bad_pixels is not None:
                amp[:, self.bad_pixels] = 0.0
            block = amp.astype(np.float64)
            total += float(np.sum(block * block))
        self._raise_if_invalid(nonfinite, minimum)
        if not np.isfinite(total):  # finite stored values too large for float32 amplitudes
            raise ValueError(f"diffraction {self.holds} are too large: their float32 amplitudes "
                             "overflow; expected photon counts (or their square roots)")
        self._stats = (total / self.shape[0],)
        return self

    def _raise_if_invalid(self, nonfinite: int, minimum: float) -> None:
        if self.holds == "counts":
            if nonfinite:
                raise ValueError(
                    f"diffraction patterns contain {nonfinite} NaN or infinite values; "
                    "expected finite, non-negative counts (mark broken pixels as bad pixels)")
            if minimum < 0:
                raise ValueError(
                    f"diffraction patterns contain negative counts (minimum {minimum}); "
                    "expected non-negative photon counts (subtract the background and clip at 0 "
                    "first, or mark broken pixels as bad pixels)")
        else:
            if nonfinite:
                raise ValueError(
                    f"diffraction amplitudes contain {nonfinite} NaN or infinite values; expected "
                    "finite, non-negative amplitudes (mark broken pixels as bad pixels)")
            if minimum < 0:
                raise ValueError(
                    f"diffraction amplitudes contain negative values (minimum {minimum}); "
                    "expected square roots of counts, >= 0")

    @property
    def checked(self) -> bool:
        return self._stats is not None

    def mean_total_intensity(self) -> float:
        """Mean over patterns of ``sum(amplitude**2)`` (good pixels), float64, chunked (`check`)."""
        return self.check()._stats[0]  # type: ignore[index]

    # ------------------------------------------------------------------ derived stacks
    def _derived(self, data: Any, rows: np.ndarray | None, bad_pixels: np.ndarray | None,
                 keep_stats: bool) -> "DiffractionPatterns":
        other = DiffractionPatterns(data, holds=self.holds, bad_pixels=bad_pixels, rows=rows)
        if keep_stats:
            other._stats = self._stats
        return other

    def with_bad_pixels(self, bad_pixels: np.ndarray | None) -> "DiffractionPatterns":
        """The same stored values with another bad-pixel mask (statistics measured again)."""
        bad = None if bad_pixels is None or not np.any(bad_pixels) else np.asarray(bad_pixels, bool)
        same = (bad is None and self.bad_pixels is None) or (
            bad is not None and self.bad_pixels is not None and np.array_equal(bad, self.bad_pixels))
        if same:
            return self
        return self._derived(self._data, self._rows, bad_pixels, keep_stats=False)

    def on_source(self, source: Any) -> "DiffractionPatterns":
        """These patterns read from ``source``, a copy of `raw` of every pattern in order (e.g.
        `write_raw`'s file); the statistics are kept."""
        if tuple(source.shape) != self.shape or np.dtype(source.dtype) != self.stored_dtype:
            raise ValueError(f"source {source!r} does not hold these patterns ({self.shape} {self.stored_dtype})")
        return self._derived(source, None, self.bad_pixels, keep_stats=True)

    def close(self) -> None:
        """Close the file the patterns are read from (no-op for arrays); reads reopen it."""
        close = getattr(self._data, "close", None)
        if close is not None and not isinstance(self._data, np.ndarray):
            close()


def write_raw(patterns: DiffractionPatterns, path: str | os.PathLike[str]) -> RawPatterns:
    """Write the stored values of every pattern, in order and in their own dtype, to ``path``
    (raw, C order), a chunk at a time; return the source that reads them back."""
    path = Path(path)
    with open(path, "wb") as handle:
        for part in patterns.blocks(max_bytes=CHUNK_BYTES):
            handle.write(np.ascontiguousarray(patterns.raw(part)).data)
    return RawPatterns(path, patterns.stored_dtype, patterns.shape)


def stage(patterns: DiffractionPatterns, *, prefix: str = "ptychopinn-torch-patterns-",
          directory: str | os.PathLike[str] | None = None) -> DiffractionPatterns:
    """These patterns copied (stored values, own dtype) into a `ScratchFile` and read from it.

    The file lives as long as the returned stack (and the stacks derived from it) in this
    process; a pickled copy reads it without owning it. A failed write removes the file and
    raises OSError naming it and the way out (free space, or ``TMPDIR``).
    """
    scratch = ScratchFile(prefix, directory=directory)
    try:
        source = write_raw(patterns, scratch.path)
    except OSError as exc:
        scratch.close()
        raise OSError(f"cannot write the diffraction patterns ({patterns.stored_nbytes / 2**30:.2f} GiB) "
                      f"to the temporary file {scratch.path}: {exc}; free space there or point TMPDIR "
                      "at a disk with room") from exc
    source.owner = scratch
    return patterns.on_source(source)
