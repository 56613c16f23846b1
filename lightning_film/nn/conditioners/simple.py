"""The two simplest conditioners: none (the unconditioned baseline) and additive."""

from __future__ import annotations

import torch

from lightning_film.nn.channels_first import Affine, ChannelsFirst, Hooks
from lightning_film.nn.conditioners.base import Conditioner, ProjectedConditioner
from lightning_film.nn.conditioning import Conditioning
from lightning_film.registry import CONDITIONERS, Spec, register_conditioner

__all__ = ["NoConditioning", "Additive", "conditions_nothing"]


@register_conditioner("none")
class NoConditioning(Conditioner):
    """No conditioning at all: the unconditioned baseline."""

    def channels_first(self, cf: ChannelsFirst) -> Hooks:
        return Hooks()


def conditions_nothing(spec: Spec) -> bool:
    """Whether a conditioner spec builds :class:`NoConditioning` (or a subclass): ``"none"``,
    ``{"name": "none"}``, its import path or the class itself. An unknown name is the registry's error."""
    factory, _, _ = CONDITIONERS.resolve(spec)
    return isinstance(factory, type) and issubclass(factory, NoConditioning)


@register_conditioner("additive")
class Additive(ProjectedConditioner):
    """Additive: h + W c (shift only, no scale); W starts at zero."""

    batched_projections = ("shift",)

    def build(self) -> None:
        self.shift = self.project(self.dim)

    def modulate(self, h: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        (beta,) = self.projected(h, cond, "shift")  # (B, 1 | N, D)
        self.observe(beta=beta)
        return h + beta  # (B, N, D)

    def channels_first(self, cf: ChannelsFirst) -> Affine:
        """h + shift(c) on (B, D, 1, S)."""
        return Affine(self.dim, [cf.convert(self.shift)], shift=0, scale=None)
