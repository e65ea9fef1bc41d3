"""Inference: predict object patches in batches and stitch them into the object canvas.

Stitching places every patch at its integer pixel and applies the sub-pixel remainder with a
Fourier shift, the convention ``ptychodus.api.simulate`` uses to form its exit waves, so exact
patches reproduce the object exactly (no bilinear resampling, which loses detail). Overlaps
are averaged with a power of the probe amplitude as weight, ``w = (|P| / max |P|) ** e`` (``e = 2``,
the probe intensity, by default): ``O = sum(w_i O_i) / sum(w_i)``. Accumulation
happens on the compute device with scatter-adds, so memory is the canvas plus one batch.

A supervised network trained on integer-window labels (`data.dataset.extract_windows`) predicts
the window at its integer pixel; its patches are placed there without a shift
(``subpixel=False``).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from . import physics

__all__ = ["PatchStitcher", "stitch_patches"]


class PatchStitcher:
    """Accumulates weighted patches into an ``(H, W)`` canvas on ``device``."""

    def __init__(self, shape: tuple[int, int], weight: torch.Tensor, *, device: torch.device,
                 subpixel: bool = True) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.subpixel = subpixel
        self.n = int(weight.shape[-1])
        self.device = device
        self.weight = weight.to(device=device, dtype=torch.float32)
        # The weight is the same for every patch: transform it once; each patch then needs only
        # its own phase ramp and one inverse transform (the same arithmetic as fourier_shift).
        self._weight_spectrum = torch.fft.fft2(self.weight.to(torch.complex64))
        self.numerator = torch.zeros(self.shape[0] * self.shape[1], dtype=torch.complex64, device=device)
        self.denominator = torch.zeros(self.shape[0] * self.shape[1], dtype=torch.float32, device=device)
        ramp = torch.arange(self.n, device=device)
        self._rows = ramp.view(1, self.n, 1)
        self._cols = ramp.view(1, 1, self.n)

    def add(self, patches: torch.Tensor, positions_px: torch.Tensor) -> None:
        """Add ``(K, N, N)`` complex patches centred at ``(K, 2)`` object-pixel positions (x, y)
        (with ``subpixel=False``: the integer windows of those positions, placed unshifted)."""
        patches = patches.to(self.device, torch.complex64)
        pos = positions_px.to(self.device, torch.float64)
        half = (self.n - 1) / 2.0
        lower = torch.floor(pos - half)
        if self.subpixel:
            frac = (pos - half - lower).to(torch.float32)  # in [0, 1)
            ramp = physics.fourier_shift_ramp((self.n, self.n), frac, device=self.device)
            weights = torch.fft.ifft2(self._weight_spectrum * ramp).real
            weighted = physics.fourier_shift(patches, frac) * weights
        else:
            weights = self.weight.expand(patches.shape[0], -1, -1)
            weighted = patches * weights
        lower = lower.to(torch.long)
        rows = lower[:, 1].view(-1, 1, 1) + self._rows
        cols = lower[:, 0].view(-1, 1, 1) + self._cols
        inside = (rows >= 0) & (rows < self.shape[0]) & (cols >= 0) & (cols < self.shape[1])
        flat = (rows * self.shape[1] + cols)[inside]
        self.numerator.index_add_(0, flat, weighted[inside])
        self.denominator.index_add_(0, flat, weights[inside])

    def merge(self, other: "PatchStitcher") -> None:
        """Add another stitcher's sums (e.g. a shard stitched on another GPU) into this one."""
        if other.shape != self.shape:
            raise ValueError(f"cannot merge canvases of shapes {other.shape} and {self.shape}")
        self.numerator += other.numerator.to(self.device)
        self.denominator += other.denominator.to(self.device)

    def result(self, *, threshold: float = 1e-3) -> torch.Tensor:
        """The stitched ``(H, W)`` complex64 object; zero where the weights are below
        ``threshold`` times their maximum (pixels no probe meaningfully illuminated)."""
        den = self.denominator
        limit = threshold * float(den.max()) if den.numel() else 0.0
        covered = den > max(limit, 1e-12)
        obj = torch.where(covered, self.numerator / torch.where(covered, den, torch.ones_like(den)),
                          torch.zeros_like(self.numerator))
        return obj.view(self.shape)

    def coverage(self) -> torch.Tensor:
        return self.denominator.view(self.shape)


def stitch_patches(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    shape: tuple[int, int],
    probe: torch.Tensor,
    *,
    device: torch.device | None = None,
    on_batch: Callable[[int], None] | None = None,
    weight_exponent: float = 2.0,
    subpixel: bool = True,
) -> torch.Tensor:
    """Stitch an iterable of ``(patches (K, N, N), positions (K, 2))`` into an ``(H, W)`` object.

    The weight is `physics.probe_weight` (by default the probe intensity normalised to a maximum of 1).
    """
    weight = physics.probe_weight(probe, weight_exponent)
    dev = device if device is not None else weight.device
    stitcher = PatchStitcher(shape, weight, device=dev, subpixel=subpixel)
    for i, (patches, positions) in enumerate(batches):
        stitcher.add(patches, positions)
        if on_batch is not None:
            on_batch(i + 1)
    if not math.isfinite(float(stitcher.denominator.sum())):
        raise FloatingPointError("stitching produced non-finite weights")
    return stitcher.result()
