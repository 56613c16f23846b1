"""EMA: Lightning's WeightAveraging with a decay and a start step; what it averages, and when."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_film.callbacks import EMA


class Linear(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Record(Callback):
    """The raw weights after every optimizer step (before EMA swaps anything in at the end)."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights.append(torch.cat([p.detach().flatten().clone() for p in pl_module.parameters()]))


def fit(ema: EMA, steps: int = 5) -> tuple[Linear, list[torch.Tensor]]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(40, 3), torch.randn(40, 1))
    model, record = Linear(), Record()
    trainer = Trainer(
        max_steps=steps,
        callbacks=[record, ema],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, DataLoader(data, batch_size=4))
    return model, record.weights


@pytest.mark.parametrize(("decay", "start"), [(0.5, 0), (0.9, 2), (0.99, 3)])
def test_the_model_ends_with_the_moving_average_from_the_start_step(decay: float, start: int) -> None:
    model, raw = fit(EMA(decay=decay, start_step=start))
    expected = raw[start].clone()  # the first update copies the weights
    for w in raw[start + 1 :]:
        expected = decay * expected + (1 - decay) * w
    got = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, raw[-1])  # really the average, not the last weights


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"decay": 1.0}, "decay"),
        ({"decay": 0.0}, "decay"),
        ({"start_step": -1}, "start_step"),
        ({"start_step": 1.5}, "start_step"),
    ],
)
def test_bad_settings_name_themselves(args: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EMA(**args)
