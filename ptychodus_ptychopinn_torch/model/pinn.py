"""The PtychoPINN model: generator plus the differentiable physics forward model and losses.

Units (see docs/engine.md):

- inputs ``X = kappa * sqrt(counts)``, normalised so that the mean total ``X**2`` per pattern is
  ``(N/2)**2``;
- ``intensity_scale = sqrt(nphotons) / (N/2)`` maps normalised amplitudes to count amplitudes,
  so ``(intensity_scale * X)**2`` are the measured counts when ``nphotons`` is measured;
- as in PtychoPINN, the network sees ``intensity_scale * X / exp(log_scale)`` and its predicted
  amplitude is multiplied by ``exp(log_scale)``; ``log_scale`` starts at ``log(intensity_scale)``
  and is trainable when ``intensity_scale_trainable``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .. import physics
from ..config import ModelConfig
from .network import Generator

__all__ = ["PhysicsConstants", "PtychoPINN", "implied_object_amplitude"]


@dataclass(frozen=True)
class PhysicsConstants:
    """Data-derived constants fixed at training time and stored in the model file."""

    N: int
    kappa: float  # X = kappa * sqrt(counts)
    nphotons: float  # mean total counts per pattern the scale refers to
    intensity_scale: float  # sqrt(nphotons) / (N / 2)
    probe_factor: float  # probe_scale * mean|disk * P| (P_normalised = P / probe_factor)
    amp_max: float  # range of the sigmoid amplitude head
    canvas_size: int  # merge canvas M for gridsize > 1

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PhysicsConstants":
        names = {f.name for f in fields(cls)}
        missing = names - set(data)
        if missing:
            raise ValueError(f"physics constants are missing {sorted(missing)}")
        return cls(**{k: data[k] for k in names})


def implied_object_amplitude(normalized_probe: torch.Tensor, n: int) -> float:
    """RMS object amplitude the normalised data imply for this probe: ``(N/2) / ||P_n||``.

    With mean total ``X**2 = (N/2)**2`` and ``sum |P_n O|**2 ~ |O|**2 sum |P_n|**2`` (Parseval),
    this is the amplitude of a flat object that reproduces the mean intensity.
    """
    norm = float(torch.linalg.vector_norm(normalized_probe))
    return (n / 2.0) / norm


class PtychoPINN(nn.Module):
    """Generator + forward model; ``forward`` returns predicted count amplitudes."""

    def __init__(
        self,
        config: ModelConfig,
        constants: PhysicsConstants,
        probe: torch.Tensor,
        *,
        intensity_scale_trainable: bool = True,
        probe_trainable: bool = False,
    ) -> None:
        super().__init__()
        if probe.shape != (config.N, config.N):
            raise ValueError(f"probe shape {tuple(probe.shape)} does not match N={config.N}")
        self.config = config
        self.constants = constants
        self.generator = Generator(config, amp_max=constants.amp_max)
        normalized = (probe.to(torch.complex64) / constants.probe_factor)
        if probe_trainable:
            self.probe = nn.Parameter(torch.view_as_real(normalized).clone())
        else:
            self.register_buffer("probe", torch.view_as_real(normalized).clone())
        mask = physics.hard_disk(config.N) if config.probe_mask else torch.ones(config.N, config.N)
        self.register_buffer("probe_mask", mask, persistent=False)
        support = torch.ones(config.N, config.N)
        if config.pad_object and not config.probe_big:
            support = physics.central_window(config.N)
        self.register_buffer("support", support, persistent=False)
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(constants.intensity_scale), dtype=torch.float32),
            requires_grad=intensity_scale_trainable,
        )

    @property
    def normalized_probe(self) -> torch.Tensor:
        return torch.view_as_complex(self.probe)

    def predict_object(self, amplitudes: torch.Tensor) -> torch.Tensor:
        """Object patches ``(B, C, N, N)`` complex64 from normalised amplitudes ``(B, C, N, N)``."""
        scale = self.constants.intensity_scale / torch.exp(self.log_scale)
        return self.generator(amplitudes * scale)

    def illuminate(self, patches: torch.Tensor, coords_relative: torch.Tensor) -> torch.Tensor:
        """Exit waves ``(B, C, N, N)``: merge/extract for gridsize > 1, then multiply by the probe."""
        if self.config.object_big and patches.shape[1] > 1:
            region = physics.merge_patches(
                patches, coords_relative, self.constants.canvas_size, self.support
            )
            patches = physics.extract_patches(region, coords_relative, self.config.N)
        else:
            patches = patches * self.support
        psi = patches * (self.normalized_probe * self.probe_mask)
        return physics.gaussian_smooth(psi, self.config.gaussian_smoothing_sigma)

    def forward(
        self, amplitudes: torch.Tensor, coords_relative: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(predicted count amplitudes, object patches)``."""
        obj = self.predict_object(amplitudes)
        psi = self.illuminate(obj, coords_relative)
        return physics.diffract(psi) * torch.exp(self.log_scale), obj

    def observed_count_amplitudes(self, amplitudes: torch.Tensor) -> torch.Tensor:
        return amplitudes * self.constants.intensity_scale
