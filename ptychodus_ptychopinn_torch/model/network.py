"""PtychoPINN's generator: diffraction amplitudes in, complex object patches out.

A shared convolutional encoder feeds two separate decoders, one for the amplitude and one for
the phase. With ``pad_object`` the last stage is dual-resolution: a full-resolution central
``N/2 x N/2`` path (amplitude activation, phase ``pi * tanh``) zero-padded to ``N x N``, plus,
with ``probe_big``, a border path upsampled once more whose output (``border_activation``: the
head's own activation, or PtychoPINN's swish) fills the region outside the central square. Without ``pad_object`` one full-resolution path covers ``N x N``.

Channel widths follow PtychoPINN (times ``n_filters_scale``): encoder N=64 ``[32, 64, 128]``,
N=128 ``[16, 32, 64, 128]``, N=256 ``[8, 16, 32, 64, 128]``; the decoders mirror them down to
a ``N/2`` feature map. Convolutions use Glorot-uniform initialisation (Keras's default), which
upstream found necessary against the flat-amplitude collapse at N=128.

``normalization="batch"`` (this package's option) adds a BatchNorm after every hidden
convolution: measured to fit supervised labels faster with batches of 16 (docs/performance.md,
"Convergence levers"); the default ``none`` is PtychoPINN's network.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from ..physics import central_window

__all__ = ["Generator", "encoder_widths", "decoder_widths"]

_ENCODER = {64: [32, 64, 128], 128: [16, 32, 64, 128], 256: [8, 16, 32, 64, 128]}
_DECODER = {64: [64, 32], 128: [128, 64, 32], 256: [256, 128, 64, 32]}
_BORDER_CHANNELS = 4  # feature channels reserved for the low-resolution border path (TF: 4)


def encoder_widths(config: ModelConfig) -> list[int]:
    return [w * config.n_filters_scale for w in _ENCODER[config.N]]


def decoder_widths(config: ModelConfig) -> list[int]:
    return [w * config.n_filters_scale for w in _DECODER[config.N]]


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1)


def _conv_relu(cin: int, cout: int, norm: bool) -> list[nn.Module]:
    """Convolution (+ BatchNorm when ``norm``) + ReLU."""
    layers: list[nn.Module] = [_conv(cin, cout)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


class _DownBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: bool = False) -> None:
        super().__init__(*_conv_relu(cin, cout, norm), *_conv_relu(cout, cout, norm), nn.MaxPool2d(2))


class _UpBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: bool = False) -> None:
        super().__init__(*_conv_relu(cin, cout, norm), *_conv_relu(cout, cout, norm), nn.Upsample(scale_factor=2))


def _amplitude_activation(name: str, amp_max: float):
    if name == "sigmoid":
        return lambda z: amp_max * torch.sigmoid(z)
    if name == "swish":
        return nn.functional.silu
    if name == "softplus":
        return nn.functional.softplus
    if name == "relu":
        return torch.relu
    raise ValueError(f"unknown amp_activation {name!r}")


class _Head(nn.Module):
    """Decoder for one of amplitude or phase, ending in the (dual-resolution) last stage."""

    def __init__(self, config: ModelConfig, cin: int, out_channels: int, activation,
                 border_activation) -> None:
        super().__init__()
        widths = decoder_widths(config)
        norm = config.normalization == "batch"
        blocks, c = [], cin
        for w in widths:
            blocks.append(_UpBlock(c, w, norm))
            c = w
        self.decoder = nn.Sequential(*blocks)
        self.activation = activation
        self.border_activation = border_activation
        self.pad_object = config.pad_object
        self.probe_big = config.probe_big and config.pad_object
        self.n = config.N
        if self.pad_object:
            central_in = c - _BORDER_CHANNELS if self.probe_big else c
            self.central = _conv(central_in, out_channels)
            if self.probe_big:
                self.border = nn.Sequential(
                    _UpBlock(_BORDER_CHANNELS, 32 * config.n_filters_scale, norm),
                    _conv(32 * config.n_filters_scale, out_channels),
                )
                self.register_buffer("border_mask", 1.0 - central_window(config.N), persistent=False)
        else:
            self.full = nn.Sequential(_UpBlock(c, c, norm), _conv(c, out_channels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = self.decoder(features)  # (B, c, N/2, N/2)
        if not self.pad_object:
            return self.activation(self.full(f))
        q = self.n // 4
        if self.probe_big:
            center = self.activation(self.central(f[:, :-_BORDER_CHANNELS]))
            border = self.border_activation(self.border(f[:, -_BORDER_CHANNELS:]))
            return nn.functional.pad(center, (q, q, q, q)) + border * self.border_mask
        return nn.functional.pad(self.activation(self.central(f)), (q, q, q, q))

    def output_layers(self) -> list[nn.Conv2d]:
        """The convolutions whose outputs go straight into an activation."""
        if not self.pad_object:
            return [self.full[-1]]
        layers = [self.central]
        if self.probe_big:
            layers.append(self.border[-1])
        return layers


def _inverse(activation, target: float) -> float:
    """Pre-activation ``z`` with ``activation(z) == target`` (bisection; monotone on the bracket)."""
    lo, hi = -1.0, 60.0
    if float(activation(torch.tensor(lo))) > target:
        lo = -60.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(activation(torch.tensor(mid))) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _phase_activation(z: torch.Tensor) -> torch.Tensor:
    return math.pi * torch.tanh(z)


class Generator(nn.Module):
    """``(B, C, N, N)`` normalised amplitudes -> ``(B, C, N, N)`` complex object patches.

    ``amp_max`` scales the sigmoid amplitude head so that it covers the object amplitudes the
    probe normalisation implies (see docs/architecture.md, "Gauge").
    """

    def __init__(self, config: ModelConfig, *, amp_max: float = 1.0) -> None:
        super().__init__()
        self.config = config
        self.amp_max = float(amp_max)
        self.in_channels = config.channels if config.object_big else 1
        c = self.in_channels
        blocks = []
        for w in encoder_widths(config):
            blocks.append(_DownBlock(c, w, config.normalization == "batch"))
            c = w
        self.encoder = nn.Sequential(*blocks)
        amp_act = _amplitude_activation(config.amp_activation, amp_max)
        phase_act = _phase_activation
        swish = config.border_activation == "swish"
        self.amplitude = _Head(config, c, self.in_channels, amp_act, nn.functional.silu if swish else amp_act)
        self.phase = _Head(config, c, self.in_channels, phase_act, nn.functional.silu if swish else phase_act)
        self.reset_parameters()
        self.to(memory_format=torch.channels_last)

    def reset_parameters(self) -> None:
        """Glorot-uniform convolutions; with ``object_init='flat'`` the output layers start at
        zero weight and a bias that makes every prediction the flat object of amplitude
        ``amp_max / 2`` (the implied amplitude) and zero phase."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if self.config.object_init != "flat":
            return
        for head, target in ((self.amplitude, 0.5 * self.amp_max), (self.phase, 0.0)):
            for i, layer in enumerate(head.output_layers()):
                activation = head.border_activation if i == 1 else head.activation
                nn.init.zeros_(layer.weight)
                nn.init.constant_(layer.bias, _inverse(activation, target) if target else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, ch, n, _ = x.shape
        if self.in_channels == 1 and ch != 1:
            x = x.reshape(b * ch, 1, n, n)
        # channels_last doubles the speed of oneDNN/cuDNN convolutions for these shapes.
        features = self.encoder(x.contiguous(memory_format=torch.channels_last))
        amplitude = self.amplitude(features).float()
        phase = self.phase(features).float()
        obj = torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))
        return obj.reshape(b, ch, n, n)
