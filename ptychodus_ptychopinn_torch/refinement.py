"""Physics refinement of an object canvas under the measured diffraction data.

The network predicts object patches one pattern at a time; stitching averages them, but
nothing makes the stitched canvas agree with *all* measured patterns at once. This module
does that: it takes the stitched object (or a flat one), the probe and the scan positions,
and lowers the Poisson negative log-likelihood of every pattern with a preconditioned,
mini-batched projection step (the update rule of ePIE/rPIE on sets of positions, as in
LSQML's "compact sets"), with the same exact forward model that Ptychodus simulates:

    Psi_j = F[ shift(P, d_j) * O[window_j] ]        (orthonormal FFT, sub-pixel d_j in [0, 1))
    lambda_j = c * |Psi_j|^2                        (c: one global scale, fitted once)

Per batch of positions: the exit waves' Fourier amplitudes are replaced by the measured ones
(``|Psi| -> sqrt(k)``; bad detector pixels keep the model's value), and the object moves by
``beta * sum_j conj(P_j) dpsi_j / ((1 - alpha) sum_j |P_j|^2 + alpha max sum_j |P_j|^2)``: a
gradient step of the amplitude (variance-stabilised Poisson) likelihood, preconditioned by the
illumination so bright and dim pixels converge at the same rate. Optionally the probe gets the
symmetric update. Over the last ``anneal_fraction`` of the sets the step shrinks linearly to
``final_step`` of itself: at a fixed step each set's update leaves the object off the optimum by
that set's photon noise, and the shrinking steps average it out (`step_scale`). Until then, after
each pass the canvas also moves on along its recent direction (``momentum``: the pass-to-pass
change, accumulated with decay ``momentum`` and added times ``momentum``, as mPIE does): the
projection step corrects the fine detail within a few passes but the slow, low-frequency part of
the phase only creeps, and the extrapolation speeds that up (measured: the same image in about
half the passes). Memory is a few canvas-sized arrays (the canvas, the step's two accumulators
and one for the momentum) plus one batch (plus, with a fixed
probe, every position's shifted probe and counts when they fit `POSITION_CACHE_BYTES`); everything
runs on one device.

Why not plain Adam on the pixels: measured (shared/docs/findings.md, item 12), Adam at a fixed
step drives the phase well but lets the amplitude drift; the illumination-preconditioned
projection step is the classical cure, and it needs no learning-rate tuning.

Imports only ``physics``-level torch code: no network, no Lightning.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import physics
from .data.patterns import DiffractionPatterns

__all__ = [
    "RefinementOptions",
    "RefinementResult",
    "RefinementCancelled",
    "ScanTensors",
    "StackCounts",
    "PositionBatch",
    "PositionCache",
    "POSITION_CACHE_BYTES",
    "fit_global_scale",
    "refine_object",
    "step_scale",
    "flat_object",
    "negative_log_likelihood",
]

logger = logging.getLogger(__name__)


class RefinementCancelled(RuntimeError):
    """Raised when a stop was requested during refinement."""


@dataclass(frozen=True)
class RefinementOptions:
    """How the object canvas is refined (see module docstring).

    iterations:   passes over all positions (0 = none).
    batch_size:   positions per update; smaller sets converge faster per pass on a CPU.
    step:         relaxation ``beta`` of the object update (1 = full projection step).
    alpha:        rPIE regularisation of the illumination preconditioner, in [0, 1].
    refine_probe: also update the probe (starting from the product's probe).
    probe_start:  first pass at which the probe is updated (the object settles first).
    divergence_patience: stop after the pass loss rose this many passes in a row.
    anneal_fraction: the last fraction of all sets over which the step shrinks (0 = fixed step).
    final_step:   the step at the very end, relative to ``step``.
    momentum:     after each pass before the annealing, add ``momentum`` times the velocity (the
                  decayed sum of pass-to-pass changes) to the canvas; in [0, 1), 0 = off.
    seed:         order of positions in each pass.
    noise_model:  ``poisson`` (half the Poisson-NLL gradient of the exit wave; measured best at
                  10^3 and 10^5 photons) or ``amplitude`` (replace the modulus by sqrt(counts),
                  the Gaussian-amplitude step of ePIE, which over-fits noise at low counts).
    """

    iterations: int = 200
    batch_size: int = 64
    step: float = 1.0
    alpha: float = 0.5
    refine_probe: bool = False
    probe_start: int = 2
    divergence_patience: int = 4
    seed: int = 0
    noise_model: str = "poisson"
    anneal_fraction: float = 0.15
    final_step: float = 0.25
    momentum: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
            raise ValueError(f"refinement iterations={self.iterations!r} is invalid; expected an integer >= 0")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"refinement batch_size={self.batch_size!r} is invalid; expected an integer >= 1")
        if not 0.0 < float(self.step) <= 2.0:
            raise ValueError(f"refinement step={self.step!r} is invalid; expected a number in (0, 2]")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"refinement alpha={self.alpha!r} is invalid; expected a number in [0, 1]")
        if self.divergence_patience < 1:
            raise ValueError("refinement divergence_patience must be >= 1")
        if not 0.0 <= float(self.anneal_fraction) <= 1.0:
            raise ValueError(f"refinement anneal_fraction={self.anneal_fraction!r} is invalid; expected a number in [0, 1]")
        if not 0.0 < float(self.final_step) <= 1.0:
            raise ValueError(f"refinement final_step={self.final_step!r} is invalid; expected a number in (0, 1]")
        if not 0.0 <= float(self.momentum) < 1.0:
            raise ValueError(f"refinement momentum={self.momentum!r} is invalid; expected a number in [0, 1)")
        if self.noise_model not in ("poisson", "amplitude"):
            raise ValueError(f"refinement noise_model={self.noise_model!r} is invalid; expected 'poisson' or 'amplitude'")


@dataclass
class RefinementResult:
    """The refined canvas, the probe it was refined with, and the per-pass losses."""

    object: np.ndarray  # (H, W) complex64
    probe: np.ndarray  # (N, N) complex64 (the input probe unless refine_probe)
    losses: list[float]  # Poisson NLL per pixel (nats, log k! included) of each pass
    initial_loss: float  # of the starting object, after the scale fit
    scale: float  # global amplitude scale applied to the starting object
    seconds: float
    passes_run: int
    stopped_early: str | None = None  # why the refinement stopped before ``iterations``
    pass_seconds: list[float] = field(default_factory=list)


class StackCounts:
    """Measured counts read a batch at a time from a pattern stack (`data.patterns`):
    ``counts[index]`` is ``(k, N, N)`` float32 ``amplitude**2``, ifftshifted, bad pixels 0, the
    same values `ScanTensors.from_arrays` holds for the whole scan."""

    def __init__(self, patterns: DiffractionPatterns, good: torch.Tensor | None) -> None:
        self.patterns = patterns
        self.good = good
        self.shape = tuple(patterns.shape)

    def __getitem__(self, index: torch.Tensor | np.ndarray | slice) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        amp = torch.from_numpy(self.patterns.amplitudes(index))
        counts = torch.fft.ifftshift(amp * amp, dim=(-2, -1)).contiguous()
        return counts * self.good if self.good is not None else counts


@dataclass
class ScanTensors:
    """A scan's measured data laid out for refinement on one device.

    ``counts`` stay on the host (float32, unshifted detector layout) and move one batch at a
    time: either one tensor of the whole scan (`from_arrays`) or a `StackCounts` that reads each
    batch from the scan's pattern stack when asked (`from_patterns`: memory is one batch).
    Window corners and sub-pixel shifts are small per-position arrays.
    """

    counts: torch.Tensor | StackCounts  # (M, N, N) float32, ifftshifted (zero frequency at [0, 0])
    lower: torch.Tensor  # (M, 2) int64 window corner (x, y) in the canvas
    frac: torch.Tensor  # (M, 2) float32 sub-pixel shift (x, y) of the probe, in [0, 1)
    good: torch.Tensor | None  # (N, N) bool good detector pixels (ifftshifted), or None
    shape: tuple[int, int]

    @classmethod
    def from_arrays(cls, amplitudes: np.ndarray | DiffractionPatterns, positions_px: np.ndarray,
                    object_shape: tuple[int, int], bad_pixels: np.ndarray | None = None) -> "ScanTensors":
        """From ``sqrt(counts)`` patterns (zero frequency at N//2) and Ptychodus-centred positions,
        with the counts of the whole scan in one tensor."""
        amp = torch.as_tensor(np.asarray(amplitudes, dtype=np.float32))
        counts = torch.fft.ifftshift(amp * amp, dim=(-2, -1)).contiguous()
        data = cls._layout(amp.shape[-1], positions_px, object_shape, bad_pixels, counts)
        if data.good is not None:
            data.counts = counts * data.good  # bad pixels hold no data (and no garbage in the flat start)
        return data

    @classmethod
    def from_patterns(cls, patterns: DiffractionPatterns, positions_px: np.ndarray,
                      object_shape: tuple[int, int], bad_pixels: np.ndarray | None = None) -> "ScanTensors":
        """As `from_arrays`, reading each batch's counts from ``patterns`` when it is used."""
        data = cls._layout(patterns.N, positions_px, object_shape, bad_pixels, None)
        data.counts = StackCounts(patterns, data.good)
        return data

    @classmethod
    def _layout(cls, n: int, positions_px: np.ndarray, object_shape: tuple[int, int],
                bad_pixels: np.ndarray | None, counts: torch.Tensor | None) -> "ScanTensors":
        pos = np.asarray(positions_px, dtype=np.float64)
        half = (n - 1) / 2.0
        lower = np.floor(pos - half)
        frac = pos - half - lower
        good = None
        if bad_pixels is not None and np.any(bad_pixels):
            good = torch.fft.ifftshift(torch.as_tensor(~np.asarray(bad_pixels, dtype=bool)), dim=(-2, -1))
        return cls(counts=counts, lower=torch.as_tensor(lower, dtype=torch.long),  # type: ignore[arg-type]
                   frac=torch.as_tensor(frac, dtype=torch.float32), good=good,
                   shape=(int(object_shape[0]), int(object_shape[1])))

    @property
    def n(self) -> int:
        return int(self.counts.shape[-1])

    @property
    def num_positions(self) -> int:
        return int(self.counts.shape[0])

    def pattern_totals(self, batch_size: int = 256) -> torch.Tensor:
        """(M,) float64 total measured counts of each pattern, a batch at a time."""
        if isinstance(self.counts, torch.Tensor):
            return self.counts.double().sum(dim=(-2, -1))
        return torch.cat([self.counts[index].double().sum(dim=(-2, -1))
                          for index in torch.arange(self.num_positions).split(batch_size)])


class PositionBatch:
    """One set of positions laid out for the forward model: flat canvas indices of each
    ``N x N`` window (``flat``), the sub-pixel-shifted probes ``shift(P, d_j)`` (``probes``),
    their phase ramps and the measured counts. ``probes * canvas[flat]`` are the exit waves.

    With a `PositionCache` the probes, their intensities and the counts are taken from it
    instead of being computed and read again (the same values)."""

    def __init__(self, data: ScanTensors, index: torch.Tensor, probe_spectrum: torch.Tensor,
                 device: torch.device, cache: "PositionCache | None" = None) -> None:
        n = data.n
        h, w = data.shape
        lower = data.lower[index].to(device)
        ramp = torch.arange(n, device=device)
        rows = lower[:, 1].view(-1, 1, 1) + ramp.view(1, n, 1)
        cols = lower[:, 0].view(-1, 1, 1) + ramp.view(1, 1, n)
        self.flat = (rows * w + cols).reshape(len(index), -1)
        if len(index) and (int(lower.min()) < 0 or int(lower[:, 1].max()) + n > h or int(lower[:, 0].max()) + n > w):
            raise ValueError("a probe window lies outside the object canvas; positions must keep every "
                             f"{n}x{n} window inside the {h}x{w} canvas")
        self.frac = data.frac[index].to(device)
        self._n = n
        self._ramp: torch.Tensor | None = None
        if cache is None:
            self.probes = torch.fft.ifft2(probe_spectrum * self.ramp)  # (B, N, N) shift(P, d_j)
            self.counts = data.counts[index].to(device, non_blocking=True)
            self.log_factorial: torch.Tensor | None = None
            self._probe_intensity: torch.Tensor | None = None
        else:
            selected = index.to(cache.probes.device)
            self.probes = cache.probes[selected]
            self.counts = cache.counts[selected]
            self.log_factorial = cache.log_factorial[selected]
            self._probe_intensity = cache.probe_intensity[selected]
        self.good = None if data.good is None else data.good.to(device)

    @property
    def probe_intensity(self) -> torch.Tensor:
        """``|shift(P, d_j)|^2`` of the set, ``(B, N, N)`` float32 (the object step's weight)."""
        if self._probe_intensity is None:
            self._probe_intensity = torch.abs(self.probes) ** 2
        return self._probe_intensity

    @property
    def ramp(self) -> torch.Tensor:
        """The ``(B, N, N)`` Fourier phase ramps of the positions' sub-pixel shifts."""
        if self._ramp is None:
            self._ramp = physics.fourier_shift_ramp((self._n, self._n), self.frac, device=self.frac.device)
        return self._ramp

    def __len__(self) -> int:
        return int(self.flat.shape[0])

    def patches(self, canvas: torch.Tensor) -> torch.Tensor:
        """The ``(B, N, N)`` windows of the flattened ``canvas`` under this set's probes."""
        return canvas[self.flat].view_as(self.probes)

    def intensity(self, canvas: torch.Tensor) -> torch.Tensor:
        """Predicted counts ``|F(shift(P, d_j) O[window_j])|^2`` (unshifted detector layout)."""
        return torch.abs(torch.fft.fft2(self.probes * self.patches(canvas), norm="ortho")) ** 2

    def nll(self, lam: torch.Tensor) -> float:
        """Mean Poisson NLL per pixel of predicted counts ``lam`` (`physics.poisson_nll`).

        With a cache the constant ``log k!`` comes from it (summed once per position) instead
        of an ``lgamma`` of every pixel: the same value up to float rounding."""
        if self.log_factorial is None:
            return float(physics.poisson_nll(torch.sqrt(lam), torch.sqrt(self.counts), mask=self.good))
        values = lam - self.counts * torch.log(lam + 1e-6)
        if self.good is not None:
            values = values * self.good
            pixels = len(self) * int(self.good.sum())
        else:
            pixels = values.numel()
        return (float(values.sum(dtype=torch.float64)) + float(self.log_factorial.sum())) / max(pixels, 1)


POSITION_CACHE_BYTES = 256 * 2**20
"""Largest `PositionCache` (bytes on the refinement's device) that `refine_object` builds."""


class PositionCache:
    """Every position's shifted probe, its intensity, the measured counts and their ``log k!``
    sum, built once and kept on the device.

    Rebuilding them for every set (the counts read from the pattern stack and squared, the
    sub-pixel probe shift and its inverse FFT, ``|P_j|^2``, an ``lgamma`` per pixel for the pass
    loss) cost about half of a pass on a CPU and is the same work every pass while the probe is
    fixed. `refine_object` builds the cache when the probe is not refined and it takes at most
    `POSITION_CACHE_BYTES` (16 bytes per detector pixel of every pattern: 67 MB for 1024
    patterns of 64x64). The refined object is bit-identical; larger scans keep reading one set
    at a time, so memory stays the canvas plus one set plus at most this budget.
    """

    def __init__(self, data: ScanTensors, probe_spectrum: torch.Tensor, device: torch.device,
                 chunk: int = 256) -> None:
        probes, intensity, counts, log_factorial = [], [], [], []
        for index in torch.arange(data.num_positions).split(chunk):
            batch = PositionBatch(data, index, probe_spectrum, device)
            probes.append(batch.probes)
            intensity.append(batch.probe_intensity)
            counts.append(batch.counts)
            lgk = torch.lgamma(batch.counts.double() + 1.0)
            if batch.good is not None:
                lgk = lgk * batch.good
            log_factorial.append(lgk.sum(dim=(-2, -1)))
        self.probes = torch.cat(probes)
        self.probe_intensity = torch.cat(intensity)
        self.counts = torch.cat(counts)
        self.log_factorial = torch.cat(log_factorial)  # (M,) float64 sum of log k! over good pixels

    @staticmethod
    def nbytes(data: ScanTensors) -> int:
        """Bytes the cache of ``data`` takes: complex64 probes, float32 probe intensities and
        counts (the per-position ``log k!`` sums are negligible)."""
        return data.num_positions * data.n * data.n * (8 + 4 + 4)


def negative_log_likelihood(obj: torch.Tensor, probe: torch.Tensor, data: ScanTensors, *,
                            batch_size: int = 256, device: torch.device | None = None,
                            cache: "PositionCache | None" = None) -> float:
    """Mean Poisson NLL per pixel (nats, ``log k!`` included) of ``obj`` under ``probe``.

    The same units as the training loss, so ``training loss - NLL(truth)`` is the excess NLL.
    ``cache``, when given, must have been built from ``probe`` (`PositionCache`).
    """
    device = device or obj.device
    canvas = obj.to(device, torch.complex64).reshape(-1)
    spectrum = torch.fft.fft2(probe.to(device, torch.complex64))
    total = 0.0
    with torch.no_grad():
        for index in torch.arange(data.num_positions).split(batch_size):
            batch = PositionBatch(data, index, spectrum, device, cache)
            total += batch.nll(batch.intensity(canvas)) * len(batch)
    return total / max(data.num_positions, 1)


def flat_object(probe: np.ndarray | torch.Tensor, data: ScanTensors) -> torch.Tensor:
    """The uniform, zero-phase object whose mean predicted intensity equals the measured one.

    Parseval with the orthonormal FFT: ``sum |F(P a)|^2 = a^2 sum |P|^2``.
    """
    p = torch.as_tensor(probe).to(torch.complex64)
    power = float(torch.sum(torch.abs(p) ** 2))
    mean_counts = float(data.pattern_totals().mean())
    amplitude = math.sqrt(mean_counts / power) if power > 0 else 1.0
    return torch.full(data.shape, amplitude, dtype=torch.complex64)


def fit_global_scale(canvas: torch.Tensor, spectrum: torch.Tensor, data: ScanTensors, device: torch.device,
              sample: int = 512) -> float:
    """Amplitude factor ``s`` so that ``s * O`` reproduces the measured total counts.

    ``canvas`` is the flattened object, ``spectrum`` the FFT of the probe; up to ``sample``
    positions spread over the scan are used (good detector pixels only)."""
    index = torch.linspace(0, data.num_positions - 1, min(sample, data.num_positions)).round().long().unique()
    predicted, measured = 0.0, 0.0
    for chunk in index.split(256):
        batch = PositionBatch(data, chunk, spectrum, device)
        lam = batch.intensity(canvas)
        counts = batch.counts
        if batch.good is not None:
            lam, counts = lam * batch.good, counts * batch.good
        predicted += float(lam.sum())
        measured += float(counts.sum())
    if not predicted > 0 or not math.isfinite(predicted) or not math.isfinite(measured):
        return 1.0
    return math.sqrt(measured / predicted)


def step_scale(progress: float, anneal_fraction: float, final_step: float) -> float:
    """The step's factor after ``progress`` (sets done / all sets, in [0, 1)): 1 until the last
    ``anneal_fraction``, then falling linearly towards ``final_step`` at the end."""
    start = 1.0 - anneal_fraction
    if anneal_fraction <= 0.0 or progress < start:
        return 1.0
    return 1.0 - (1.0 - final_step) * (progress - start) / anneal_fraction


def _object_step(canvas: torch.Tensor, num_buf: torch.Tensor, den_buf: torch.Tensor, flat: torch.Tensor,
                 numerator: torch.Tensor, weight: torch.Tensor, alpha: float, beta: float, sparse: bool) -> None:
    """``canvas += beta * sum(numerator) / ((1 - alpha) sum(weight) + alpha max sum(weight))``, in
    place, the sums taken per canvas pixel over the set's windows (``flat``: their pixel indices).

    ``num_buf``/``den_buf`` are canvas-sized zero buffers and are left zero. Dense: the whole
    canvas is updated (cheapest when the canvas is no larger than a set's windows). Sparse: only
    the set's pixels are read, updated and cleared, so a set costs its own size, not the
    canvas's (a beamline canvas of 10^8 pixels would otherwise be swept for every set). Both give
    the same values bit for bit.
    """
    num_buf.index_add_(0, flat, numerator)
    den_buf.index_add_(0, flat, weight)
    if sparse:
        num, den = num_buf[flat], den_buf[flat]
        num_buf.index_fill_(0, flat, 0)
        den_buf.index_fill_(0, flat, 0)
        den = (1.0 - alpha) * den + alpha * den.max()
        # a pixel in several windows appears several times in ``flat``, always with the same
        # sums, so every duplicate writes the same value
        canvas[flat] = canvas[flat] + beta * num / den.clamp_min(1e-20)
    else:
        den = (1.0 - alpha) * den_buf + alpha * den_buf.max()
        canvas.add_(beta * num_buf / den.clamp_min(1e-20))
        num_buf.zero_()
        den_buf.zero_()


def refine_object(
    initial: np.ndarray | torch.Tensor | None,
    probe: np.ndarray | torch.Tensor,
    data: ScanTensors,
    options: RefinementOptions,
    *,
    device: torch.device | str = "cpu",
    fit_scale: bool = True,
    on_pass: Callable[[int, int, float], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RefinementResult:
    """Refine ``initial`` (``(H, W)`` complex, or None for a flat start) against ``data``.

    ``fit_scale`` first multiplies the start by the one global factor that matches the total
    measured counts (the network's object lives in its own normalisation gauge; after the fit
    the object is in the gauge of ``probe``). ``on_pass(pass, total, loss)`` follows every
    pass, ``on_batch(done, total)`` every batch; ``should_stop()`` is checked before every
    batch and raises `RefinementCancelled`. A pass whose loss is not finite, or a loss that
    rose ``divergence_patience`` passes in a row, stops the refinement with a warning and
    returns the best object seen.
    """
    device = torch.device(device)
    start_time = time.perf_counter()
    n = data.n
    probe_t = torch.as_tensor(probe).to(device, torch.complex64).clone()
    if probe_t.shape != (n, n):
        raise ValueError(f"probe shape {tuple(probe_t.shape)} does not match the {n}x{n} patterns")
    if initial is None:
        canvas = flat_object(probe_t.cpu(), data).to(device)
    else:
        canvas = torch.as_tensor(initial).to(device, torch.complex64).clone()
        if tuple(canvas.shape) != data.shape:
            raise ValueError(f"initial object shape {tuple(canvas.shape)} does not match the canvas {data.shape}")
        if not bool(torch.isfinite(torch.view_as_real(canvas)).all()):
            raise ValueError("the initial object holds NaN or infinite values")
    h, w = data.shape
    canvas = canvas.reshape(-1)
    spectrum = torch.fft.fft2(probe_t)
    scale = fit_global_scale(canvas, spectrum, data, device) if fit_scale else 1.0
    canvas = canvas * scale
    # the probe is fixed unless refined: build every position's probe and counts once, for the
    # starting loss and every pass (not at all when there is no pass to run)
    cache = None
    if options.iterations and not options.refine_probe and PositionCache.nbytes(data) <= POSITION_CACHE_BYTES:
        cache = PositionCache(data, spectrum, device)
    initial_loss = negative_log_likelihood(canvas.view(h, w), probe_t, data, device=device, cache=cache)
    best = (initial_loss, canvas.clone(), probe_t.clone(), 0)
    losses: list[float] = []
    pass_seconds: list[float] = []
    stopped: str | None = None
    generator = torch.Generator().manual_seed(int(options.seed))
    m = data.num_positions
    batches_per_pass = math.ceil(m / options.batch_size)
    total_batches = batches_per_pass * options.iterations
    done = 0
    rising = 0
    beta, alpha = float(options.step), float(options.alpha)
    num_buf = torch.zeros_like(canvas)
    den_buf = torch.zeros(canvas.shape, dtype=torch.float32, device=device)
    sparse = canvas.numel() > 2 * options.batch_size * n * n
    eta = float(options.momentum)
    # momentum needs one more canvas: ``base`` = the previous pass's canvas minus eta times the
    # velocity, so that this pass's velocity is ``canvas - base`` (none for a single pass)
    base = canvas.clone() if eta > 0.0 and options.iterations > 1 else None
    for it in range(options.iterations):
        t0 = time.perf_counter()
        order = torch.randperm(m, generator=generator)
        nll_sum = 0.0
        update_probe = options.refine_probe and it >= options.probe_start
        with torch.no_grad():
            for index in order.split(options.batch_size):
                if should_stop is not None and should_stop():
                    raise RefinementCancelled("refinement was stopped before it finished")
                batch = PositionBatch(data, index, spectrum, device, cache)
                patches = batch.patches(canvas)
                field_ = torch.fft.fft2(batch.probes * patches, norm="ortho")
                lam = field_.real ** 2 + field_.imag ** 2
                nll_sum += batch.nll(lam) * len(batch)
                if options.noise_model == "poisson":
                    # half the Poisson gradient: equals the amplitude step near convergence
                    ratio = 1.0 + 0.5 * (batch.counts / (lam + 1e-3 * lam.mean()) - 1.0).clamp(max=8.0)
                else:
                    ratio = torch.sqrt(batch.counts) / torch.sqrt(lam + 1e-12)
                if batch.good is not None:
                    ratio = torch.where(batch.good, ratio, torch.ones_like(ratio))
                dpsi = torch.fft.ifft2(field_ * (ratio - 1.0), norm="ortho")
                step = beta * step_scale(done / total_batches, options.anneal_fraction, options.final_step)
                # object: illumination-preconditioned step, summed over the set
                _object_step(canvas, num_buf, den_buf, batch.flat.reshape(-1),
                             (torch.conj(batch.probes) * dpsi).reshape(-1),
                             batch.probe_intensity.reshape(-1), alpha, step, sparse)
                if update_probe:
                    # probe: the symmetric step, with each object patch moved back by -d_j
                    back = torch.conj(batch.ramp)
                    pnum = torch.fft.ifft2(torch.fft.fft2(torch.conj(patches) * dpsi) * back).sum(0)
                    pden = (torch.abs(patches) ** 2).sum(0)
                    pden = (1.0 - alpha) * pden + alpha * pden.max()
                    probe_t = probe_t + step * pnum / pden.clamp_min(1e-20)
                    spectrum = torch.fft.fft2(probe_t)
                done += 1
                if on_batch is not None:
                    on_batch(done, total_batches)
        loss = nll_sum / max(m, 1)
        pass_seconds.append(time.perf_counter() - t0)
        if not math.isfinite(loss) or not bool(torch.isfinite(torch.view_as_real(canvas)).all()):
            stopped = f"refinement diverged at pass {it + 1} (non-finite loss); kept the object of pass {best[3]}"
            logger.warning(stopped)
            break
        losses.append(loss)
        if on_pass is not None:
            on_pass(it + 1, options.iterations, loss)
        if loss < best[0]:
            best = (loss, canvas.clone(), probe_t.clone(), it + 1)
        rising = rising + 1 if len(losses) > 1 and loss > losses[-2] + 1e-4 * abs(losses[-2]) else 0
        if rising >= options.divergence_patience:
            stopped = (f"refinement stopped at pass {it + 1}: the loss rose {rising} passes in a row "
                       f"(diverging); kept the object of pass {best[3]}")
            logger.warning(stopped)
            break
        if (base is not None and it + 1 < options.iterations
                and step_scale(done / total_batches, options.anneal_fraction, options.final_step) == 1.0):
            # v = eta v_prev + (canvas - previous canvas) = canvas - base; canvas += eta v; and for
            # the next pass base = (canvas + eta v) - eta v, the canvas before this jump
            base.neg_().add_(canvas)
            canvas.add_(base, alpha=eta)
            base.mul_(-eta).add_(canvas)
    if stopped:
        # The pass loss is measured while the object changes; the best object is the one after
        # the pass with the lowest loss (or the start if no pass improved on it).
        _, canvas, probe_t, _ = best
    return RefinementResult(
        object=canvas.view(h, w).cpu().numpy().astype(np.complex64),
        probe=probe_t.cpu().numpy().astype(np.complex64),
        losses=losses, initial_loss=initial_loss, scale=float(scale),
        seconds=time.perf_counter() - start_time, passes_run=len(losses), stopped_early=stopped,
        pass_seconds=pass_seconds,
    )
