"""Lightning training of a `PtychoPINN` model: module, callbacks and Trainer construction."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping

from . import physics
from .config import ExecutionConfig, TrainingConfig
from .model.pinn import PtychoPINN

__all__ = [
    "resolve_strategy",
    "EpochReport",
    "TrainingCancelled",
    "TrainingDiverged",
    "PtychoPINNModule",
    "fit",
]

logger = logging.getLogger(__name__)


class TrainingCancelled(RuntimeError):
    """Raised when a stop was requested; the run's weights are discarded."""


class TrainingDiverged(RuntimeError):
    """Raised when no epoch ended with a finite loss: the weights are not a model, so none is returned."""


@dataclass(frozen=True)
class EpochReport:
    """What an epoch's end tells progress listeners."""

    epoch: int  # 1-based
    num_epochs: int
    train_loss: float
    val_loss: float | None
    batches_done: int
    batches_total: int
    learning_rate: float


class PtychoPINNModule(L.LightningModule):
    """Lightning wrapper: the loss of `TrainingConfig` on top of a `PtychoPINN` model.

    PINN mode: ``nll_weight * Poisson NLL + mae_weight * amplitude MAE`` in counts.
    Supervised mode: amplitude L1 plus wrapped-phase L1 against the true object patches (in the
    truth's own amplitude gauge), weighted by the probe intensity: a pattern says nothing about
    the object where the probe does not reach, so fitting labels there only adds noise.
    """

    def __init__(self, model: PtychoPINN, training: TrainingConfig,
                 detector_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.training_config = training
        if detector_mask is not None:
            self.register_buffer("detector_mask", detector_mask.to(torch.float32))
        else:
            self.detector_mask = None
        self.register_buffer("supervised_weight", physics.probe_weight(model.normalized_probe.detach()),
                             persistent=False)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["amplitudes"]
        cfg = self.training_config
        if cfg.model.model_type == "supervised":
            obj = self.model.predict_object(x)
            truth = batch["truth"]
            # Only illuminated pixels are determined by the pattern: weight by the probe intensity.
            weight = self.supervised_weight
            amp = torch.abs(torch.abs(obj) - torch.abs(truth))
            phase = torch.abs(torch.angle(obj * torch.conj(truth)))
            return ((amp + phase) * weight).mean() / weight.mean()
        pred, _ = self.model(x, batch["coords_relative"])
        obs = self.model.observed_count_amplitudes(x)
        loss = torch.zeros((), device=x.device)
        if cfg.torch_loss_mode == "mae" or cfg.mae_weight > 0:
            weight = 1.0 if cfg.torch_loss_mode == "mae" and cfg.mae_weight == 0 else cfg.mae_weight
            loss = loss + weight * physics.amplitude_mae(pred, obs, mask=self.detector_mask)
        if cfg.torch_loss_mode == "poisson" and cfg.nll_weight > 0:
            loss = loss + cfg.nll_weight * physics.poisson_nll(pred, obs, mask=self.detector_mask)
        return loss

    def training_step(self, batch, batch_idx):  # noqa: D102
        loss = self.compute_loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=batch["amplitudes"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):  # noqa: D102
        loss = self.compute_loss(batch)
        self.log("val_loss", loss, on_step=False, on_epoch=True, batch_size=batch["amplitudes"].shape[0])
        return loss

    def _warmup_cosine(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """Linear warm-up over ``lr_warmup_epochs``, then a cosine decay to ``lr_min_ratio``
        times the learning rate at the last step (stepped every optimiser step)."""
        cfg = self.training_config
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        per_epoch = max(total // max(cfg.nepochs, 1), 1)
        warmup = min(cfg.lr_warmup_epochs * per_epoch, total - 1)
        floor = cfg.lr_min_ratio

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def configure_optimizers(self):  # noqa: D102
        cfg = self.training_config
        params = [p for p in self.parameters() if p.requires_grad]
        if cfg.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                   weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                    weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay)
        if cfg.scheduler == "ReduceLROnPlateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
                min_lr=cfg.plateau_min_lr, threshold=cfg.plateau_threshold,
            )
            monitor = "val_loss" if self.trainer.num_val_batches and sum(self.trainer.num_val_batches) else "train_loss"
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": monitor}}
        if cfg.scheduler == "WarmupCosine":
            return {"optimizer": opt, "lr_scheduler": {"scheduler": self._warmup_cosine(opt), "interval": "step"}}
        if cfg.scheduler == "Exponential":
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.95)}
        return opt


class _Progress(Callback):
    """Per-epoch history, listener calls, cooperative stop and best-weights tracking."""

    def __init__(self, on_epoch, on_batch, should_stop, monitor: str) -> None:
        self.on_epoch = on_epoch
        self.on_batch = on_batch
        self.should_stop = should_stop
        self.monitor = monitor
        self.history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
        self.best_score = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.batches_done = 0
        self.start = time.perf_counter()

    def on_train_start(self, trainer, pl_module):  # noqa: D102
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: D102
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled("training was stopped before it finished; no model was saved")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: D102
        self.batches_done += 1
        if self.on_batch is not None:
            self.on_batch(self.batches_done, self._batches_total(trainer))

    @staticmethod
    def _batches_total(trainer) -> int:
        per_epoch = trainer.num_training_batches
        per_epoch = int(per_epoch) if math.isfinite(per_epoch) else 0
        return per_epoch * trainer.max_epochs

    def on_train_epoch_end(self, trainer, pl_module):  # noqa: D102
        metrics = trainer.callback_metrics
        train = float(metrics["train_loss"]) if "train_loss" in metrics else math.nan
        val = float(metrics["val_loss"]) if "val_loss" in metrics else None
        self.history["train_loss"].append(train)
        if val is not None:
            self.history["val_loss"].append(val)
        score = val if (self.monitor == "val_loss" and val is not None) else train
        if math.isfinite(score) and score < self.best_score:
            self.best_score = score
            self.best_epoch = trainer.current_epoch + 1
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.model.state_dict().items()}
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan
        report = EpochReport(
            epoch=trainer.current_epoch + 1, num_epochs=trainer.max_epochs, train_loss=train,
            val_loss=val, batches_done=self.batches_done, batches_total=self._batches_total(trainer),
            learning_rate=float(lr),
        )
        logger.info(
            "epoch %d/%d  train_loss %.6g  val_loss %s  lr %.3g  (%.1f s)", report.epoch,
            report.num_epochs, train, "n/a" if val is None else f"{val:.6g}",
            report.learning_rate, time.perf_counter() - self.start,
        )
        if self.on_epoch is not None:
            self.on_epoch(report)


def _summary(progress: _Progress, max_epochs: int, patience: int | None) -> str:
    """The one line that ends a training run: epochs, time, last losses, the weights kept."""
    train = progress.history["train_loss"]
    val = progress.history["val_loss"]
    epochs = len(train)
    seconds = time.perf_counter() - progress.start
    if epochs < max_epochs and patience is not None:
        head = (f"training stopped early after {epochs} of {max_epochs} epochs (val_loss did "
                f"not improve for {patience} epochs) in {seconds:.1f} s")
    else:
        head = f"training finished: {epochs} of {max_epochs} epochs in {seconds:.1f} s"
    last = f"train_loss {train[-1]:.6g}" if train else "no epoch completed"
    if val:
        last += f", val_loss {val[-1]:.6g}"
    if progress.best_state is None:
        return f"{head}; last epoch {last}"
    return (f"{head}; last epoch {last}; kept the weights of epoch {progress.best_epoch} "
            f"({progress.monitor} {progress.best_score:.6g})")


#: Lightning loggers whose INFO lines are chatter here: "GPU available: False, used: False",
#: "TPU available", "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES", "`Trainer.fit` stopped: ...", the
#: litlogger advertisement. Every caller reports the device and the epochs itself.
_LIGHTNING_CHATTER = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
    "lightning.fabric.accelerators.cuda",
    "pytorch_lightning.utilities.rank_zero",
    "pytorch_lightning.accelerators.cuda",
)
#: Loggers Lightning attaches its own console handler to (``lightning`` always does).
_LIGHTNING_CONSOLES = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                       "lightning_fabric")


class _LightningChatter(logging.Filter):
    """Drops Lightning's notices below WARNING and its advertisements at any level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        text = record.getMessage()
        return "litlogger" not in text and "\N{ELECTRIC LIGHT BULB}" not in text


class _DropAll(logging.Filter):
    """Silences a handler whose records also reach the host's own handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Quieten Lightning during one `fit`, then restore exactly what was changed.

    Why: Ptychodus's log (and the worker's forwarded log) should carry what a user needs, not
    Lightning's start-up notices; and Lightning's own ``lightning`` console handler prints every
    record a second time to stderr when the records also propagate to the host's root handlers
    (Ptychodus's console, the worker's pipe to the parent). Only filters are added and removed:
    levels, handlers and propagation of the host's loggers are left as they are.
    """
    chatter = _LightningChatter()
    chatty = [logging.getLogger(name) for name in _LIGHTNING_CHATTER]
    for lg in chatty:
        lg.addFilter(chatter)
    silenced: list[tuple[logging.Handler, logging.Filter]] = []
    root_handlers = set(logging.getLogger().handlers)
    if root_handlers:
        for name in _LIGHTNING_CONSOLES:
            lg = logging.getLogger(name)
            if not lg.propagate:  # its records reach only its own handler: keep it
                continue
            for handler in lg.handlers:
                if handler not in root_handlers:
                    drop = _DropAll()
                    handler.addFilter(drop)
                    silenced.append((handler, drop))
    try:
        yield
    finally:
        for lg in chatty:
            lg.removeFilter(chatter)
        for handler, drop in silenced:
            handler.removeFilter(drop)


def resolve_strategy(execution: ExecutionConfig, devices) -> str:
    """Lightning strategy: ``auto`` becomes ``ddp`` under a launcher (torchrun, SLURM) and
    ``ddp_spawn`` otherwise with several devices (e.g. in Ptychodus's worker process, where
    Lightning's default launcher would re-run the parent's command line)."""
    count = len(devices) if isinstance(devices, (list, tuple)) else int(devices)
    if execution.strategy != "auto" or (count <= 1 and execution.num_nodes <= 1):
        return execution.strategy
    launched = "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    return "ddp" if launched else "ddp_spawn"


def fit(
    module: PtychoPINNModule,
    train_loader,
    val_loader,
    training: TrainingConfig,
    execution: ExecutionConfig,
    *,
    accelerator: str,
    devices,
    on_epoch: Callable[[EpochReport], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, list[float]]:
    """Train ``module`` in place; restore the best weights; return the loss history.

    Raises `TrainingCancelled` when ``should_stop()`` turns true (checked before every batch) and
    `TrainingDiverged` when no epoch ended with a finite loss (a later non-finite epoch only logs a
    warning: the best finite epoch's weights are kept).
    """
    monitor = "val_loss" if val_loader is not None else "train_loss"
    progress = _Progress(on_epoch, on_batch, should_stop, monitor)
    callbacks: list[Callback] = [progress]
    if val_loader is not None:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=training.early_stop_patience))
    with _quiet_lightning():  # Trainer() logs the GPU/TPU notices and the advertisement
        trainer = L.Trainer(
            max_epochs=training.nepochs,
            accelerator=accelerator,
            devices=devices,
            num_nodes=execution.num_nodes,
            strategy=resolve_strategy(execution, devices),
            precision=execution.precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=execution.enable_progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            deterministic="warn" if execution.deterministic else False,
            gradient_clip_val=training.gradient_clip_val,
            gradient_clip_algorithm=training.gradient_clip_algorithm,
            callbacks=callbacks,
        )
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    epochs = len(progress.history["train_loss"])
    monitored = progress.history[progress.monitor] or progress.history["train_loss"]
    if progress.best_state is None and epochs:
        raise TrainingDiverged(
            f"training diverged: the {progress.monitor} was not finite in any of the {epochs} epochs "
            f"run (last: {monitored[-1]}); no model was produced. Try a lower "
            "learning_rate or gradient_clip_val, or check the data for non-finite values")
    if progress.best_state is not None:
        if not math.isfinite(monitored[-1]):
            logger.warning("the %s became non-finite (epoch %d: %s); kept the weights of epoch %d",
                           progress.monitor, epochs, monitored[-1], progress.best_epoch)
        module.model.load_state_dict(progress.best_state)
    patience = training.early_stop_patience if val_loader is not None else None
    logger.info("%s", _summary(progress, training.nepochs, patience))
    return progress.history
