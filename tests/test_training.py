"""`training.fit` logging: one line per epoch, one summary, no Lightning chatter, no duplicates."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ptychodus_ptychopinn_torch import training
from ptychodus_ptychopinn_torch.config import ExecutionConfig, ModelConfig, TrainingConfig

CHATTER = ("GPU available", "TPU available", "litlogger", "Tip:", "`Trainer.fit` stopped")
RANK_ZERO = "lightning.pytorch.utilities.rank_zero"


class _Tiny(L.LightningModule):
    """The smallest module `fit` accepts: a ``model`` attribute and logged losses."""

    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Linear(2, 1)

    def _loss(self, batch):
        return self.model(batch[0]).pow(2).mean()

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=4)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch), on_step=False, on_epoch=True, batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _WarnOnce(L.Callback):
    """A Lightning warning in the middle of training: it must reach the host exactly once."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            logging.getLogger(RANK_ZERO).warning("a real Lightning warning")


class _Spy(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _loaders():
    data = TensorDataset(torch.randn(8, 2))
    return DataLoader(data, batch_size=4), DataLoader(data, batch_size=4)


def _fit(monkeypatch, epochs: int = 2):
    config = TrainingConfig(model=ModelConfig(), nepochs=epochs)
    original = L.Trainer

    def trainer_with_warning(*args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), _WarnOnce()]
        return original(*args, **kwargs)

    monkeypatch.setattr(training.L, "Trainer", trainer_with_warning)
    train, val = _loaders()
    return training.fit(_Tiny(), train, val, config, ExecutionConfig(accelerator="cpu"),
                        accelerator="cpu", devices=1)


def _state(names):
    return {name: (list(logging.getLogger(name).filters),
                   [list(h.filters) for h in logging.getLogger(name).handlers])
            for name in names}


def test_fit_logs_one_line_per_epoch_and_a_summary_without_lightning_chatter(monkeypatch, caplog):
    # A host that shows every record through its root handlers (Ptychodus's console, the
    # worker's pipe); Lightning's own console handler on "lightning" would print them again.
    names = (*training._LIGHTNING_CHATTER, *training._LIGHTNING_CONSOLES)
    lightning_console = _Spy()
    logging.getLogger("lightning").addHandler(lightning_console)
    before = _state(names)
    after = None
    caplog.set_level(logging.INFO)
    try:
        history = _fit(monkeypatch, epochs=2)
        after = _state(names)
    finally:
        logging.getLogger("lightning").removeHandler(lightning_console)

    assert len(history["train_loss"]) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if any(c in m for c in CHATTER)], messages
    epochs = [m for m in messages if m.startswith("epoch ")]
    assert len(epochs) == 2 and epochs[0].startswith("epoch 1/2  train_loss ")
    assert all("val_loss " in m and m.endswith(" s)") for m in epochs), epochs
    summaries = [m for m in messages if m.startswith("training finished: 2 of 2 epochs in ")]
    assert len(summaries) == 1 and "kept the weights of epoch" in summaries[0]
    # a Lightning warning reaches the host once, not a second time through Lightning's console
    assert messages.count("a real Lightning warning") == 1
    assert lightning_console.messages == []
    # only filters were added during fit, and they are gone again
    assert after == before


def test_summary_names_an_early_stop():
    progress = training._Progress(None, None, None, "val_loss")
    progress.history = {"train_loss": [3.0, 2.0, 2.5], "val_loss": [4.0, 3.0, 3.5]}
    progress.best_score, progress.best_epoch, progress.best_state = 3.0, 2, {}
    line = training._summary(progress, max_epochs=10, patience=1)
    assert line.startswith("training stopped early after 3 of 10 epochs (val_loss did not "
                           "improve for 1 epochs)")
    assert line.endswith("last epoch train_loss 2.5, val_loss 3.5; kept the weights of epoch 2 "
                         "(val_loss 3)")


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO])
def test_chatter_filter_keeps_warnings(level):
    chatter = training._LightningChatter()
    notice = logging.LogRecord(RANK_ZERO, level, __file__, 1, "GPU available: False", None, None)
    warning = logging.LogRecord(RANK_ZERO, logging.WARNING, __file__, 1, "real", None, None)
    advert = logging.LogRecord(RANK_ZERO, logging.WARNING, __file__, 1,
                               "\N{ELECTRIC LIGHT BULB} Tip: try litlogger", None, None)
    assert not chatter.filter(notice) and chatter.filter(warning) and not chatter.filter(advert)
