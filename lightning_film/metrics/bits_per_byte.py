"""Exact bits per byte over a split, in total and per source, as a torchmetrics ``Metric``."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["BitsPerByte", "source_log_names"]

_LN2 = math.log(2.0)


class BitsPerByte(Metric):
    """Exact bits per byte over a split, in total and per source (sums of nats and of targets)."""

    full_state_update = False

    def __init__(self, num_sources: int) -> None:
        super().__init__()
        self.add_state("nats", torch.zeros(num_sources, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(num_sources, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll: Tensor, mask: Tensor, source: Tensor) -> None:
        """nll: (B, N) nats, mask: (B, N) bool real targets, source: (B,) source ids."""
        self.nats.index_add_(0, source, (nll * mask).sum(1).to(self.nats.dtype))
        self.count.index_add_(0, source, mask.sum(1).to(self.count.dtype))

    def compute(self) -> tuple[Tensor, Tensor]:
        """(bpb over all sources (), bpb per source (S,)); NaN for a source without targets."""
        total = self.nats.sum() / self.count.sum().clamp_min(1) / _LN2
        return total, self.nats / self.count / _LN2


def source_log_names(sources: list[str]) -> list[str]:
    """Metric-safe names for sources: a corpus name as is, a path by its file name (deduplicated)."""
    names: list[str] = []
    for spec in sources:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec).name or spec).strip("_") or "source"
        base, k = name, 1
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return names
