"""The PtychoPINN forward model as pure, differentiable torch functions.

Conventions (each pinned by an exact test in ``tests/test_physics.py``):

- Images are ``(..., H, W)``; ``x`` is the column axis, ``y`` the row axis.
- Offsets are ``(..., 2)`` tensors ``[dx, dy]`` in pixels, and translating an image by an
  offset moves its content by ``+offset``: ``out(p) = img(p - offset)``.
- Diffraction is ``fftshift(fft2(psi))`` with orthonormal scaling (no ``ifftshift`` first), so
  ``sum |Psi|^2 == sum |psi|^2`` and the zero frequency sits at pixel ``N // 2``.
- The probe is normalised exactly once: ``P / (probe_scale * mean_{NxN} |disk * P|)`` with the
  disk of radius N/4 centred between the four central pixels.
- Losses are in photon counts: the Poisson NLL (nats per pixel) compares
  ``lambda = (s * A_pred)^2`` with ``k = (s * A_obs)^2``; the MAE compares the amplitudes ``s * A``.
- FFTs and losses always run in float32 / complex64, also under bf16 autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "translate",
    "fourier_shift",
    "fourier_shift_ramp",
    "pad_center",
    "crop_center",
    "hard_disk",
    "central_window",
    "normalize_probe",
    "probe_weight",
    "merge_patches",
    "extract_patches",
    "diffract",
    "gaussian_smooth",
    "poisson_nll",
    "amplitude_mae",
    "canvas_size",
]


def _as_complex_planes(images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if images.is_complex():
        return torch.view_as_real(images).movedim(-1, -3), True  # (..., 2, H, W)
    return images.unsqueeze(-3), False


def _shift_axis(planes: torch.Tensor, offset: torch.Tensor, axis: int) -> torch.Tensor:
    """Linear-interpolation shift of ``planes`` (B, P, H, W) along ``axis`` by ``offset`` (B,)."""
    size = planes.shape[axis]
    base = torch.floor(-offset)  # source = index - offset = index + base + frac
    frac = (-offset - base).to(planes.dtype)
    idx = torch.arange(size, device=planes.device).view(1, -1) + base.to(torch.long).view(-1, 1)
    shape = [planes.shape[0], 1, 1, 1]
    shape[axis] = size
    out = torch.zeros_like(planes)
    for step, weight in ((0, 1.0 - frac), (1, frac)):
        src = idx + step
        valid = ((src >= 0) & (src < size)).to(planes.dtype).view(shape)
        gathered = torch.gather(planes, axis, src.clamp(0, size - 1).view(shape).expand_as(planes))
        out = out + gathered * valid * weight.view(-1, 1, 1, 1)
    return out


def translate(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Move image content by ``+offsets`` (pixels, ``[dx, dy]``) with bilinear interpolation.

    Integer offsets are exact; uncovered pixels are zero. Used inside the training forward
    model (merge/extract), where the offsets are small and a local, non-periodic interpolation
    is preferable to a Fourier shift.
    """
    if offsets.shape[-1] != 2 or offsets.shape[:-1] != images.shape[:-2]:
        raise ValueError(
            f"offsets must have shape {tuple(images.shape[:-2]) + (2,)}, got {tuple(offsets.shape)}"
        )
    planes, is_complex = _as_complex_planes(images)
    h, w = images.shape[-2:]
    lead = images.shape[:-2]
    planes = planes.reshape(-1, planes.shape[-3], h, w)
    off = offsets.reshape(-1, 2).to(planes.dtype)
    out = _shift_axis(_shift_axis(planes, off[:, 0], 3), off[:, 1], 2)
    out = out.reshape(*lead, out.shape[-3], h, w)
    if is_complex:
        return torch.view_as_complex(out.movedim(-3, -1).contiguous())
    return out.squeeze(-3)


def fourier_shift(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Move content by ``+offsets`` with a Fourier phase ramp (exact for band-limited images).

    Periodic: content leaving one edge re-enters at the other, so callers shift smooth,
    compactly supported images (probe-weighted patches) by sub-pixel amounts only.
    """
    h, w = images.shape[-2:]
    dtype = torch.complex128 if images.dtype in (torch.float64, torch.complex128) else torch.complex64
    ramp = fourier_shift_ramp((h, w), offsets, dtype=dtype, device=images.device)
    shifted = torch.fft.ifft2(torch.fft.fft2(images.to(dtype)) * ramp)
    return shifted if images.is_complex() else shifted.real


def fourier_shift_ramp(shape: tuple[int, int], offsets: torch.Tensor, *,
                       dtype: torch.dtype = torch.complex64,
                       device: torch.device | None = None) -> torch.Tensor:
    """The ``(..., H, W)`` phase ramp of `fourier_shift`: multiplying an ``fft2`` by it and
    transforming back moves content by ``+offsets`` (x, y).

    Separate so that a caller shifting one fixed image by many offsets (the stitcher's probe
    weight) transforms that image once and applies only a ramp per offset.
    """
    h, w = int(shape[0]), int(shape[1])
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    fy = torch.fft.fftfreq(h, device=device, dtype=real).view(h, 1)
    fx = torch.fft.fftfreq(w, device=device, dtype=real).view(1, w)
    off = offsets.to(device=device, dtype=real)
    phase = -2.0 * math.pi * (fx * off[..., 0, None, None] + fy * off[..., 1, None, None])
    return torch.polar(torch.ones_like(phase), phase)


def pad_center(images: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last two axes from N to ``size`` (``size - N`` must be even)."""
    n = images.shape[-1]
    extra = size - n
    if extra < 0 or extra % 2:
        raise ValueError(f"cannot pad {n} to {size}: the difference must be even and >= 0")
    p = extra // 2
    if images.is_complex():
        return torch.view_as_complex(
            F.pad(torch.view_as_real(images).movedim(-1, -3), (p, p, p, p)).movedim(-3, -1).contiguous()
        )
    return F.pad(images, (p, p, p, p))


def crop_center(images: torch.Tensor, size: int) -> torch.Tensor:
    """Central ``size x size`` crop of the last two axes (``M - size`` must be even)."""
    m = images.shape[-1]
    extra = m - size
    if extra < 0 or extra % 2:
        raise ValueError(f"cannot crop {m} to {size}: the difference must be even and >= 0")
    s = extra // 2
    return images[..., s : s + size, s : s + size]


def hard_disk(n: int, *, diameter: float | None = None, device=None) -> torch.Tensor:
    """Disk mask of the given diameter (default N/2) centred at pixel ``(N - 1) / 2``."""
    radius = (n / 2.0 if diameter is None else diameter) / 2.0
    c = torch.arange(n, device=device, dtype=torch.float32) - n // 2 + 0.5
    r2 = c.view(-1, 1) ** 2 + c.view(1, -1) ** 2
    return (r2 < radius * radius).to(torch.float32)


def central_window(n: int, *, device=None) -> torch.Tensor:
    """Ones on the central ``N/2 x N/2`` square, zeros elsewhere (PtychoPINN's object support)."""
    window = torch.zeros(n, n, device=device, dtype=torch.float32)
    q = n // 4
    window[q : n - q, q : n - q] = 1.0
    return window


def normalize_probe(probe: torch.Tensor, probe_scale: float) -> tuple[torch.Tensor, float]:
    """Return ``(P / factor, factor)`` with ``factor = probe_scale * mean |disk * P|``.

    Apply once, when the model is built; the forward model uses the normalised probe as is.
    """
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1]:
        raise ValueError(f"probe must be a square 2-D array, got shape {tuple(probe.shape)}")
    disk = hard_disk(probe.shape[-1], device=probe.device)
    factor = float(probe_scale) * float(torch.mean(torch.abs(disk * probe)))
    if not factor > 0 or not math.isfinite(factor):
        raise ValueError("probe has no intensity inside the central disk; cannot normalise it")
    return probe / factor, factor


def probe_weight(probe: torch.Tensor, exponent: float = 2.0) -> torch.Tensor:
    """``(|P| / max |P|) ** exponent`` as float32: how much a pattern says about each object pixel.

    ``exponent = 2`` is the relative probe intensity, the supervised loss's weight. Stitching
    averages overlapping patches with it; there larger exponents sharpen the average towards
    each patch's centre, where a single pattern determines the object best (measured in
    docs/performance.md, "Stitching weight").
    """
    intensity = torch.abs(torch.as_tensor(probe)).to(torch.float32) ** 2
    weight = intensity / intensity.max().clamp_min(1e-30)
    return weight if exponent == 2 else weight ** (0.5 * exponent)


def canvas_size(n: int, max_offset: float) -> int:
    """Smallest merge canvas ``M >= N + 2 * max_offset`` with ``M - N`` even."""
    pad = int(math.ceil(max(float(max_offset), 0.0) - 1e-9))
    return n + 2 * pad


def merge_patches(
    patches: torch.Tensor, coords_relative: torch.Tensor, size: int, support: torch.Tensor
) -> torch.Tensor:
    """Merge ``(B, C, N, N)`` patches into one ``(B, size, size)`` region per group.

    Patch ``c`` is placed at ``centre + (r_c - r_mean)``, i.e. translated by
    ``-coords_relative_c``, and overlapping patches are averaged with the translated ``support``
    weights (the region of each patch the network predicts). Pixels no support covers are zero:
    dividing an unmasked numerator by a small count would amplify the periphery.
    """
    b, c, n, _ = patches.shape
    weights = pad_center(support.expand(b, c, n, n).to(torch.float32), size)
    shifted_w = translate(weights, -coords_relative)
    shifted = translate(pad_center(patches * support, size), -coords_relative)
    count = shifted_w.sum(dim=1)
    covered = count > 1e-6
    region = shifted.sum(dim=1) / torch.where(covered, count, torch.ones_like(count))
    return region * covered


def extract_patches(region: torch.Tensor, coords_relative: torch.Tensor, n: int) -> torch.Tensor:
    """Cut ``(B, C, N, N)`` patches centred at each channel's position out of ``(B, M, M)``."""
    b, c = coords_relative.shape[:2]
    m = region.shape[-1]
    stacked = region.unsqueeze(1).expand(b, c, m, m)
    return crop_center(translate(stacked, coords_relative), n)


def diffract(psi: torch.Tensor) -> torch.Tensor:
    """Far-field amplitude ``sqrt(fftshift(|fft2(psi)|^2))`` with orthonormal scaling (fp32)."""
    with torch.autocast(device_type=psi.device.type, enabled=False):
        field = torch.fft.fft2(psi.to(torch.complex64), norm="ortho")
        return torch.fft.fftshift(torch.abs(field), dim=(-2, -1))


def gaussian_smooth(psi: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smooth a complex field with a normalised 3x3 Gaussian kernel (PtychoPINN's option)."""
    if sigma <= 0:
        return psi
    r = torch.tensor([-1.0, 0.0, 1.0], device=psi.device)
    k1 = torch.exp(-(r**2) / (2 * sigma * sigma))
    kernel = (k1.view(3, 1) * k1.view(1, 3))
    kernel = (kernel / kernel.sum()).view(1, 1, 3, 3)
    planes = torch.view_as_real(psi.to(torch.complex64)).movedim(-1, -3)
    shape = planes.shape
    flat = planes.reshape(-1, 1, shape[-2], shape[-1])
    out = F.conv2d(F.pad(flat, (1, 1, 1, 1), mode="replicate"), kernel).reshape(shape)
    return torch.view_as_complex(out.movedim(-3, -1).contiguous())


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def poisson_nll(
    pred_amplitude: torch.Tensor,
    obs_amplitude: torch.Tensor,
    scale: float | torch.Tensor = 1.0,
    *,
    mask: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Mean Poisson negative log-likelihood per pixel, in nats, of counts ``k`` given ``lambda``.

    ``lambda = (scale * pred)^2`` and ``k = (scale * obs)^2`` are the predicted and measured
    counts; the per-pixel value is ``lambda - k log(lambda) + log k!`` (``log k!`` via
    ``lgamma(k + 1)``). The gradient is PtychoPINN's ``negloglik`` (``lambda - k log lambda``);
    the constant makes the value a true, non-negative NLL, so loss curves can be plotted on a
    log scale. ``mask`` (broadcastable, 1 = use) excludes bad detector pixels.
    """
    with torch.autocast(device_type=pred_amplitude.device.type, enabled=False):
        lam = (scale * pred_amplitude.float()) ** 2
        k = (scale * obs_amplitude.float()) ** 2
        return _masked_mean(lam - k * torch.log(lam + eps) + torch.lgamma(k + 1.0), mask)


def amplitude_mae(
    pred_amplitude: torch.Tensor,
    obs_amplitude: torch.Tensor,
    scale: float | torch.Tensor = 1.0,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean absolute error between amplitudes in count units, ``|s * pred - s * obs|``."""
    with torch.autocast(device_type=pred_amplitude.device.type, enabled=False):
        diff = torch.abs(scale * pred_amplitude.float() - scale * obs_amplitude.float())
        return _masked_mean(diff, mask)
