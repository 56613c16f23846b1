"""The models' optimizer and schedule, for a plain module (the benchmarks' peers train with it)."""

from __future__ import annotations

import pytest
from torch import nn

from lightning_film.models.optim import warmup_cosine_adamw


def test_decay_groups_and_the_schedule():
    net = nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    optimizer, scheduler = warmup_cosine_adamw(
        net,
        [net[0].weight],
        lr=1.0,
        weight_decay=0.1,
        warmup_steps=4,
        total_steps=12,
        min_lr_ratio=0.1,
        betas=(0.9, 0.95),
    )
    decay, rest = optimizer.param_groups
    assert [p.shape for p in decay["params"]] == [net[1].weight.shape] and decay["weight_decay"] == 0.1
    assert len(rest["params"]) == 4 and rest["weight_decay"] == 0.0  # embedding, bias, norm weight and bias
    lrs = []
    for _ in range(14):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warmup
    assert lrs[8] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway down the cosine
    assert lrs[12:] == pytest.approx([0.1, 0.1])  # the floor, then constant


def test_no_total_means_constant_after_warmup():
    net = nn.Linear(2, 2)
    optimizer, scheduler = warmup_cosine_adamw(net, [], 1.0, 0.0, 2, None, 0.1, (0.9, 0.95))
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0)
