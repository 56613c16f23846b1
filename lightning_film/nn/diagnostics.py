"""Model-agnostic handles on conditioning (seed 000's debugging handles).

- :func:`ablate_conditioning`: every conditioner in a module becomes the identity
  (gamma = 1, beta = 0, no gate, no extra branch, no in-context tokens), to measure what
  conditioning contributes.
- :func:`observe_conditioning`: collect the gamma/beta/gate each conditioner computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lightning_film.nn.conditioners.base import Conditioner

__all__ = ["ablate_conditioning", "observe_conditioning", "named_conditioners", "set_ablation"]


def named_conditioners(module: nn.Module) -> list[tuple[str, Conditioner]]:
    """(qualified name, conditioner) for every conditioner inside ``module``."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, Conditioner)]


def set_ablation(module: nn.Module, ablated: bool) -> list[bool]:
    """Switch every conditioner's ablation on or off; returns the previous states."""
    previous = []
    for _, cond in named_conditioners(module):
        previous.append(cond.ablated)
        cond.ablated = ablated
    return previous


@contextmanager
def ablate_conditioning(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every conditioner in ``module`` is the identity."""
    conds = named_conditioners(module)
    if not conds:
        raise ValueError(f"ablate_conditioning: {type(module).__name__} contains no Conditioner")
    previous = set_ablation(module, True)
    try:
        yield module
    finally:
        for (_, cond), state in zip(conds, previous):
            cond.ablated = state


@contextmanager
def observe_conditioning(module: nn.Module) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Yield ``{conditioner name: {"gamma"|"beta"|"gate": tensor}}``, filled by forwards run inside.

    Only the last forward's values are kept per conditioner.
    """
    conds = named_conditioners(module)
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for _, cond in conds:
        cond.observed = {}
        cond.observing = True
    try:
        yield stats
    finally:
        for name, cond in conds:
            cond.observing = False
            if cond.observed:
                stats[name] = cond.observed
            cond.observed = {}
