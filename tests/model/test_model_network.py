"""The generator's convergence-related choices: flat start, border activation, schedules, the
supervised loss weighting. Each is a promise docs/architecture.md makes; each test can fail."""

import math

import numpy as np
import pytest
import torch

from ptychodus_ptychopinn_torch.config import ModelConfig, TrainingConfig
from ptychodus_ptychopinn_torch.model.network import Generator
from ptychodus_ptychopinn_torch.model.pinn import PhysicsConstants, PtychoPINN
from ptychodus_ptychopinn_torch.physics import central_window
from ptychodus_ptychopinn_torch.training import PtychoPINNModule

AMP_MAX = 2.4


def _predict(config: ModelConfig, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    net = Generator(config, amp_max=AMP_MAX)
    x = torch.rand(3, config.channels if config.object_big else 1, config.N, config.N)
    with torch.no_grad():
        return net(x)


@pytest.mark.parametrize("probe_big,pad_object,border", [(True, True, "head"), (True, True, "swish"),
                                                          (False, True, "head"), (False, False, "head")])
def test_flat_init_predicts_the_uniform_object(probe_big, pad_object, border):
    config = ModelConfig(N=64, n_filters_scale=1, probe_big=probe_big, pad_object=pad_object,
                         border_activation=border, object_init="flat")
    obj = _predict(config)
    support = torch.ones(64, 64) if (probe_big or not pad_object) else central_window(64)
    amp = torch.abs(obj)[..., support > 0]
    phase = torch.angle(obj)[..., support > 0]
    assert torch.allclose(amp, torch.full_like(amp, AMP_MAX / 2), atol=1e-4)
    assert float(phase.abs().max()) < 1e-5


def test_random_init_is_not_flat():
    obj = _predict(ModelConfig(N=64, n_filters_scale=1, object_init="random"))
    assert float(torch.abs(obj).std()) > 1e-3
    assert float(torch.angle(obj).abs().max()) > 1e-2


def _border_phase_range(border: str) -> tuple[float, float]:
    config = ModelConfig(N=64, n_filters_scale=1, border_activation=border)
    net = Generator(config, amp_max=AMP_MAX)
    layer = net.phase.border[-1]
    out = []
    for bias in (-1.0, 1.0):  # pi * tanh(1) = 2.39 rad; silu(-1) = -0.27
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.fill_(bias)
            obj = net(torch.rand(1, 1, 64, 64))
        out.append(float(torch.angle(obj)[0, 0, 0, 0]))  # a corner pixel: border region
    return out[0], out[1]


def test_border_phase_covers_minus_half_pi_with_head_activation():
    low, high = _border_phase_range("head")
    assert low < -math.pi / 2 and high > math.pi / 2


def test_swish_border_phase_cannot_go_below_minus_0_28():
    """PtychoPINN's border activation, kept as an option: its floor is min(silu) = -0.278."""
    low, _ = _border_phase_range("swish")
    assert low > -0.28


def test_warmup_cosine_schedule():
    training = TrainingConfig(model=ModelConfig(N=64, n_filters_scale=1), scheduler="WarmupCosine",
                              lr_warmup_epochs=1, lr_min_ratio=0.1, nepochs=4, learning_rate=1e-3)
    constants = PhysicsConstants(N=64, kappa=1.0, nphotons=1e4, intensity_scale=1.0, probe_factor=1.0,
                                 amp_max=2.0, canvas_size=64)
    module = PtychoPINNModule(PtychoPINN(training.model, constants, torch.ones(64, 64, dtype=torch.complex64)),
                              training)

    class _Trainer:
        estimated_stepping_batches = 40
        num_val_batches = []

    module._trainer = _Trainer()  # what configure_optimizers reads
    config = module.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < 0.2e-3  # warming up
    assert max(lrs) == pytest.approx(1e-3, rel=0.02)  # peak after the first epoch (10 steps)
    assert int(np.argmax(lrs)) == 10
    assert lrs[-1] == pytest.approx(0.1e-3, rel=0.05)  # decayed to lr_min_ratio
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone cosine decay


def test_supervised_loss_ignores_unilluminated_pixels():
    n = 64
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    probe = torch.as_tensor(np.where(xx**2 + yy**2 < 10**2, 1.0, 0.0).astype(np.complex64))
    training = TrainingConfig(model=ModelConfig(N=n, n_filters_scale=1, model_type="supervised"))
    constants = PhysicsConstants(N=n, kappa=1.0, nphotons=1e4, intensity_scale=1.0, probe_factor=1.0,
                                 amp_max=2.0, canvas_size=n)
    module = PtychoPINNModule(PtychoPINN(training.model, constants, probe), training)
    x = torch.rand(2, 1, n, n)
    with torch.no_grad():
        pred = module.model.predict_object(x)
    outside = torch.as_tensor(xx**2 + yy**2 >= 10**2)
    truth = pred.clone()
    truth[..., outside] = 0.1 * torch.exp(1j * torch.tensor(2.0))  # wrong only where dark
    loss = module.compute_loss({"amplitudes": x, "truth": truth})
    assert float(loss) < 1e-6
    truth[..., ~outside] *= 0.5  # wrong where illuminated
    assert float(module.compute_loss({"amplitudes": x, "truth": truth})) > 0.05
